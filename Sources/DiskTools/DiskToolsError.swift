/// Failures of the independent readers (libqcow, libguestfs) and of the
/// checks built on them. Cases keep the library's own message and the call.
public enum DiskToolsError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A libqcow call failed; `message` is libqcow's error text.
    case libqcow(call: String, path: String, message: String)
    /// A libguestfs call failed; `message` is guestfs_last_error.
    case libguestfs(call: String, message: String)
    /// The argument names neither an image nor a directory holding disk.qcow2.
    case notAnImage(path: String)
    /// A guest path that is neither a directory nor a regular file.
    case notFileOrDirectory(guestPath: String)
    /// An external tool (qemu-img as the third reader) failed to run or
    /// exited non-zero; `output` is what it printed.
    case tool(command: String, status: Int32, output: String)

    public var description: String {
        switch self {
        case .libqcow(let call, let path, let message): return "libqcow \(call) on \(path) failed: \(message)"
        case .libguestfs(let call, let message): return "libguestfs \(call) failed: \(message)"
        case .notAnImage(let path): return "\(path) is neither a disk image nor a directory holding disk.qcow2"
        case .notFileOrDirectory(let guestPath): return "\(guestPath) in the guest is neither a directory nor a regular file"
        case .tool(let command, let status, let output): return "\(command) exited \(status): \(output)"
        }
    }
}
