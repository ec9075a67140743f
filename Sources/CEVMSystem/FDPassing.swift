#if canImport(Glibc)
import Glibc
#endif
import CSystemShims

/// Descriptors passed between processes over Unix sockets (SCM_RIGHTS),
/// and the socket pairs a cevm network hands to QEMU.
public enum FDPassing {
    /// Descriptors one `receive` accepts; more in one message is an error.
    public static let maximumDescriptors = 4

    /// socketpair(2): a connected pair of Unix stream sockets, both close-on-exec.
    public static func socketPair() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        try retryingEINTR("socketpair") {
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        }
        return (fds[0], fds[1])
    }

    /// fcntl(2) F_DUPFD_CLOEXEC: a second descriptor for the same open socket.
    public static func duplicate(_ fd: Int32) throws -> Int32 {
        try retryingEINTR("fcntl F_DUPFD_CLOEXEC") { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
    }

    /// sendmsg(2) of `bytes` (at least one byte) with `descriptor`, if any,
    /// as SCM_RIGHTS on the first byte; the rest of a partial send follows
    /// with write(2).
    public static func send(_ socket: Int32, bytes: [UInt8], descriptor: Int32?) throws {
        precondition(!bytes.isEmpty, "a descriptor travels with at least one byte")
        let header = align(MemoryLayout<cmsghdr>.size)
        let space = header + align(MemoryLayout<Int32>.size)
        var control = [UInt8](repeating: 0, count: descriptor == nil ? 0 : space)
        if let descriptor {
            control.withUnsafeMutableBytes { raw in
                var cmsg = cmsghdr()
                cmsg.cmsg_len = .init(header + MemoryLayout<Int32>.size)
                cmsg.cmsg_level = SOL_SOCKET
                cmsg.cmsg_type = Int32(SCM_RIGHTS)
                raw.storeBytes(of: cmsg, as: cmsghdr.self)
                raw.storeBytes(of: descriptor, toByteOffset: header, as: Int32.self)
            }
        }
        var payload = bytes
        let sent = try payload.withUnsafeMutableBytes { data in
            try control.withUnsafeMutableBytes { controlBytes in
                var iov = iovec(iov_base: data.baseAddress, iov_len: data.count)
                return try withUnsafeMutablePointer(to: &iov) { iovPointer in
                    var message = msghdr()
                    message.msg_iov = iovPointer
                    message.msg_iovlen = 1
                    if descriptor != nil {
                        message.msg_control = controlBytes.baseAddress
                        message.msg_controllen = .init(controlBytes.count)
                    }
                    return try retryingEINTR("sendmsg") { sendmsg(socket, &message, Int32(MSG_NOSIGNAL)) }
                }
            }
        }
        if sent < bytes.count { try Files.writeAll(socket, bytes[sent...]) }
    }

    /// recvmsg(2) of up to `capacity` bytes and the descriptors that came
    /// with them (close-on-exec). Zero bytes: the peer closed. A message
    /// whose descriptors did not fit (MSG_CTRUNC) is an error, and any that
    /// did arrive are closed.
    public static func receive(_ socket: Int32, capacity: Int = 4096) throws -> (bytes: [UInt8], descriptors: [Int32]) {
        let header = align(MemoryLayout<cmsghdr>.size)
        var control = [UInt8](repeating: 0, count: header + align(MemoryLayout<Int32>.size * maximumDescriptors))
        var data = [UInt8](repeating: 0, count: capacity)
        var flags: Int32 = 0
        var controlLength = 0
        let count = try data.withUnsafeMutableBytes { dataBytes in
            try control.withUnsafeMutableBytes { controlBytes in
                var iov = iovec(iov_base: dataBytes.baseAddress, iov_len: dataBytes.count)
                return try withUnsafeMutablePointer(to: &iov) { iovPointer in
                    var message = msghdr()
                    message.msg_iov = iovPointer
                    message.msg_iovlen = 1
                    message.msg_control = controlBytes.baseAddress
                    message.msg_controllen = .init(controlBytes.count)
                    let n = try retryingEINTR("recvmsg") { recvmsg(socket, &message, Int32(MSG_CMSG_CLOEXEC)) }
                    flags = message.msg_flags
                    controlLength = Int(message.msg_controllen)
                    return n
                }
            }
        }
        var descriptors: [Int32] = []
        var offset = 0
        while offset + header <= controlLength {
            let cmsg = control.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self) }
            let length = Int(cmsg.cmsg_len)
            guard length >= header, offset + length <= controlLength else { break }
            if cmsg.cmsg_level == SOL_SOCKET && cmsg.cmsg_type == Int32(SCM_RIGHTS) {
                let n = (length - header) / MemoryLayout<Int32>.size
                for i in 0..<n {
                    descriptors.append(control.withUnsafeBytes {
                        $0.loadUnaligned(fromByteOffset: offset + header + i * MemoryLayout<Int32>.size, as: Int32.self)
                    })
                }
            }
            offset += align(length)
        }
        if flags & Int32(MSG_CTRUNC) != 0 {
            for fd in descriptors { close(fd) }
            throw SystemError("recvmsg", errno: EMSGSIZE, subject: "descriptors truncated (more than \(maximumDescriptors))")
        }
        return (Array(data[0..<count]), descriptors)
    }

    /// Everything readable on `fd` now, without waiting (MSG_DONTWAIT),
    /// up to `limit` bytes: what a peer wrote that its reader never took.
    public static func drain(_ fd: Int32, limit: Int = 64 << 20) throws -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                out += buffer[0..<n]
                continue
            }
            if n == 0 { break }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK { break }
            throw SystemError("recv", errno: code, subject: "draining descriptor \(fd)")
        }
        return out
    }

    /// The bytes waiting to be read on a socket, without reading them
    /// (MSG_PEEK), at most `limit`.
    public static func peek(_ fd: Int32, limit: Int = 64 << 20) throws -> [UInt8] {
        let waiting = Int(try readableBytes(fd))
        guard waiting > 0 else { return [] }
        var buffer = [UInt8](repeating: 0, count: min(waiting, limit))
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_PEEK | MSG_DONTWAIT)) }
            if n >= 0 { return Array(buffer[0..<n]) }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK { return [] }
            throw SystemError("recv", errno: code, subject: "peeking at descriptor \(fd)")
        }
    }

    /// ioctl(FIONREAD): the bytes waiting to be read on a socket.
    public static func readableBytes(_ fd: Int32) throws -> Int32 {
        let n = cevm_readable_bytes(fd)
        if n < 0 { throw SystemError("ioctl(FIONREAD)", errno: errno, subject: "descriptor \(fd)") }
        return n
    }

    private static func align(_ n: Int) -> Int {
        let word = MemoryLayout<Int>.size
        return (n + word - 1) / word * word
    }
}
