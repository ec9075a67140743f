internal import CLibQcow
import Foundation
import QCOW2

typealias QcowFile = UnsafeMutablePointer<libqcow_file_t>
typealias QcowError = UnsafeMutablePointer<libqcow_error_t>

/// A qcow2 file read through libqcow (libyal), an implementation independent
/// of the QCOW2 engine. Not thread-safe: use one reader per thread.
///
/// libqcow takes only qcow2 parents and fails every read of a file whose
/// backing file it was not given; for a qcow2 layer over a raw file the
/// reader therefore opens a temporary copy whose header names no backing
/// file (unallocated clusters of that layer then read as zeros), removed at
/// deinit.
public final class LibQcowReader {
    public let path: String
    public let virtualSize: UInt64
    let handle: QcowFile
    /// Kept alive while this file reads through it.
    let parent: LibQcowReader?
    /// The temporary copy read instead of `path`, if any.
    let shadow: String?

    /// Opens `path` and, if `followBacking`, its qcow2 backing chain
    /// (resolved the way QEMU does: relative to the image's directory).
    public init(path: String, followBacking: Bool = true) throws(DiskToolsError) {
        self.path = path
        var openPath = path
        var shadowPath: String?
        if followBacking, let header = try? QCOW2Image.open(path: path, backing: .none).header, let name = header.backingFile {
            let resolved = QCOW2Image.resolve(backingName: name, relativeTo: path)
            if (try? QCOW2Image.probeFormat(path: resolved)) != "qcow2" {
                let copy = NSTemporaryDirectory() + "cevm-libqcow-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).qcow2"
                do {
                    try FileManager.default.copyItem(atPath: path, toPath: copy)
                    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: copy))
                    try handle.seek(toOffset: 8)  // backing_file_offset, backing_file_size
                    try handle.write(contentsOf: Data(count: 12))
                    try handle.close()
                } catch {
                    try? FileManager.default.removeItem(atPath: copy)
                    throw .libqcow(call: "copy for raw backing", path: path, message: "\(error)")
                }
                openPath = copy
                shadowPath = copy
            }
        }
        shadow = shadowPath
        var file: QcowFile?
        var error: QcowError?
        guard libqcow_file_initialize(&file, &error) == 1, let file else {
            throw Self.failure("libqcow_file_initialize", path, &error)
        }
        handle = file
        guard libqcow_file_open(file, openPath, libqcow_get_access_flags_read(), &error) == 1 else {
            let failure = Self.failure("libqcow_file_open", path, &error)
            var owned: QcowFile? = file
            libqcow_file_free(&owned, nil)
            if let shadowPath { try? FileManager.default.removeItem(atPath: shadowPath) }
            throw failure
        }
        var size: UInt64 = 0
        var parentReader: LibQcowReader?
        do throws(DiskToolsError) {
            guard libqcow_file_get_media_size(file, &size, &error) == 1 else {
                throw Self.failure("libqcow_file_get_media_size", path, &error)
            }
            if followBacking, shadowPath == nil, let name = try Self.backingName(file, path) {
                let resolved = QCOW2Image.resolve(backingName: name, relativeTo: path)
                let format = (try? QCOW2Image.probeFormat(path: resolved)) ?? "missing"
                if format == "qcow2" {
                    let reader = try LibQcowReader(path: resolved, followBacking: true)
                    guard libqcow_file_set_parent_file(file, reader.handle, &error) == 1 else {
                        throw Self.failure("libqcow_file_set_parent_file", path, &error)
                    }
                    parentReader = reader
                }
            }
        } catch {
            libqcow_file_close(file, nil)
            var owned: QcowFile? = file
            libqcow_file_free(&owned, nil)
            if let shadowPath { try? FileManager.default.removeItem(atPath: shadowPath) }
            throw error
        }
        virtualSize = size
        parent = parentReader
    }

    deinit {
        libqcow_file_close(handle, nil)
        var owned: QcowFile? = handle
        libqcow_file_free(&owned, nil)
        if let shadow { try? FileManager.default.removeItem(atPath: shadow) }
    }

    static func backingName(_ file: QcowFile, _ path: String) throws(DiskToolsError) -> String? {
        var error: QcowError?
        var size = 0
        let found = libqcow_file_get_utf8_backing_filename_size(file, &size, &error)
        guard found >= 0 else { throw failure("libqcow_file_get_utf8_backing_filename_size", path, &error) }
        guard found == 1, size > 1 else { return nil }
        var name = [UInt8](repeating: 0, count: size)
        guard libqcow_file_get_utf8_backing_filename(file, &name, size, &error) == 1 else {
            throw failure("libqcow_file_get_utf8_backing_filename", path, &error)
        }
        return String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
    }

    static func failure(_ call: String, _ path: String, _ error: inout QcowError?) -> DiskToolsError {
        var text = [CChar](repeating: 0, count: 1024)
        var message = "unknown error"
        if let current = error {
            if libqcow_error_sprint(current, &text, text.count) > 0 {
                message = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            libqcow_error_free(&error)
        }
        return .libqcow(call: call, path: path, message: message)
    }

    /// Reads `count` bytes at guest `offset` through libqcow.
    public func read(at offset: UInt64, count: Int) throws(DiskToolsError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var error: QcowError?
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { buf in
                libqcow_file_read_buffer_at_offset(handle, buf.baseAddress.map { $0 + done }, count - done, Int64(offset) + Int64(done), &error)
            }
            if n < 0 { throw Self.failure("libqcow_file_read_buffer_at_offset", path, &error) }
            if n == 0 { break }
            done += n
        }
        return out
    }
}
