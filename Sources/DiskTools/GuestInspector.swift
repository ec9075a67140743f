#if canImport(Glibc)
import Glibc
#endif
internal import CGuestfs

/// Read-only access to the filesystem inside a disk image (whole backing
/// chain) through libguestfs, without booting the VM. Each instance starts
/// one libguestfs appliance (seconds under TCG): open once, ask several
/// questions, then let it go. Not thread-safe.
public final class GuestInspector {
    public struct Entry: Sendable, Codable, Equatable {
        public var name: String
        public var isDirectory: Bool
        public var size: Int64
    }

    public enum Result: Sendable, Equatable {
        case directory([Entry])
        case file([UInt8])
    }

    /// A kernel for libguestfs's appliance (supermin): vmlinuz, its module
    /// tree (with modules.dep) and its release string.
    public struct ApplianceKernel: Sendable {
        public var kernel: String
        public var modules: String
        public var release: String
        public init(kernel: String, modules: String, release: String) {
            self.kernel = kernel
            self.modules = modules
            self.release = release
        }
    }

    let handle: OpaquePointer
    /// The filesystem mounted at "/" (for example "/dev/sda1").
    public let filesystem: String

    /// Launches libguestfs on `image` read-only and mounts its first
    /// mountable filesystem (an OS root if inspection finds one). Without
    /// LIBGUESTFS_BACKEND in the environment the "direct" backend is used;
    /// `forceTCG` adds the backend setting force_tcg (KVM does not work on
    /// every host; see DESIGN.md).
    public init(
        image: String, format: String = "qcow2", forceTCG: Bool, applianceKernel: ApplianceKernel? = nil
    ) throws(DiskToolsError) {
        if let k = applianceKernel {
            // supermin reads these when it builds the appliance (first use, then cached).
            setenv("SUPERMIN_KERNEL", k.kernel, 1)
            setenv("SUPERMIN_MODULES", k.modules, 1)
            setenv("SUPERMIN_KERNEL_VERSION", k.release, 1)
        }
        guard let g = guestfs_create() else { throw .libguestfs(call: "guestfs_create", message: "cannot create a handle") }
        handle = g
        guestfs_set_error_handler(g, nil, nil)  // errors come back through guestfs_last_error
        var mounted: String?
        do throws(DiskToolsError) {
            if getenv("LIBGUESTFS_BACKEND") == nil {
                try Self.check(g, guestfs_set_backend(g, "direct"), "guestfs_set_backend")
            }
            if forceTCG {
                let setting = strdup("force_tcg")
                defer { free(setting) }
                var list: [UnsafeMutablePointer<CChar>?] = [setting, nil]
                try Self.check(g, list.withUnsafeMutableBufferPointer { guestfs_set_backend_settings(g, $0.baseAddress) }, "guestfs_set_backend_settings")
            }
            var options = guestfs_add_drive_opts_argv()
            options.bitmask = (1 << 0) | (1 << 1)  // READONLY | FORMAT
            options.readonly = 1
            let rc = format.withCString { fmt in
                options.format = fmt
                return guestfs_add_drive_opts_argv(g, image, &options)
            }
            try Self.check(g, rc, "guestfs_add_drive_opts")
            try Self.check(g, guestfs_launch(g), "guestfs_launch")
            var candidates: [String] = []
            if let roots = guestfs_inspect_os(g) {
                candidates += Self.strings(roots)
            }
            if let list = guestfs_list_filesystems(g) {
                let pairs = Self.strings(list)
                for i in stride(from: 0, to: pairs.count - 1, by: 2) where pairs[i + 1] != "swap" && pairs[i + 1] != "unknown" {
                    candidates.append(pairs[i])
                }
            }
            for device in candidates where mounted == nil {
                if guestfs_mount_ro(g, device, "/") == 0 { mounted = device }
            }
            guard let mounted else { throw DiskToolsError.libguestfs(call: "guestfs_mount_ro", message: "no mountable filesystem in \(image)") }
            filesystem = mounted
        } catch {
            guestfs_close(g)
            throw error
        }
    }

    deinit { guestfs_close(handle) }

    static func check(_ g: OpaquePointer, _ rc: Int32, _ call: String) throws(DiskToolsError) {
        guard rc == 0 else { throw lastError(g, call) }
    }

    static func lastError(_ g: OpaquePointer, _ call: String) -> DiskToolsError {
        let message = guestfs_last_error(g).map { String(cString: $0) } ?? "unknown error"
        return .libguestfs(call: call, message: message)
    }

    func lastError(_ call: String) -> DiskToolsError { Self.lastError(handle, call) }

    /// Takes a NULL-terminated string list libguestfs allocated and frees it.
    static func strings(_ list: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> [String] {
        var out: [String] = []
        var i = 0
        while let item = list[i] {
            out.append(String(cString: item))
            free(item)
            i += 1
        }
        free(list)
        return out
    }

    /// Lists a directory (sorted by name) or returns a regular file's bytes.
    public func look(at guestPath: String) throws(DiskToolsError) -> Result {
        let isDir = guestfs_is_dir(handle, guestPath)
        if isDir < 0 { throw lastError("guestfs_is_dir") }
        if isDir == 1 {
            guard let list = guestfs_ls(handle, guestPath) else { throw lastError("guestfs_ls") }
            let names = Self.strings(list)
            var entries: [Entry] = []
            for name in names.sorted() {
                let full = guestPath.hasSuffix("/") ? guestPath + name : guestPath + "/" + name
                guard let st = guestfs_lstatns(handle, full) else { throw lastError("guestfs_lstatns") }
                entries.append(Entry(name: name, isDirectory: (st.pointee.st_mode & 0o170000) == 0o040000, size: st.pointee.st_size))
                guestfs_free_statns(st)
            }
            return .directory(entries)
        }
        let isFile = guestfs_is_file(handle, guestPath)
        if isFile < 0 { throw lastError("guestfs_is_file") }
        guard isFile == 1 else { throw .notFileOrDirectory(guestPath: guestPath) }
        var size = 0
        guard let data = guestfs_read_file(handle, guestPath, &size) else { throw lastError("guestfs_read_file") }
        defer { free(data) }
        return .file(Array(UnsafeRawBufferPointer(start: data, count: size)))
    }
}
