#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation

/// The state directory, `$CEVM_HOME` (default `~/.local/state/cevm`).
/// Everything of a VM lives under `vms/NAME/`, so independent homes can
/// coexist on one machine.
///
///     $CEVM_HOME/
///       vms/NAME/            0700
///         spec.json          the VM (VMSpec)
///         status.json        what its supervisor last said (VMStatus)
///         lock               flock held by the running supervisor
///         control.sock       the supervisor's control socket (0600)
///         console.log        the guest's serial console, host-timestamped
///         console.log.1      the previous console log (rotated at 16 MiB)
///         supervisor.log     the supervisor's own diagnostics
///         disk/              base.qcow2 (when cevm made it), overlay.qcow2
///         run/               0700: QMP sockets of the instances
///       cache/               facts worth keeping between runs (KVM probe)
public struct Home: Sendable {
    public let root: String

    public init(root: String) {
        self.root = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
    }

    /// `$CEVM_HOME`, else `$HOME/.local/state/cevm`.
    public static func fromEnvironment() -> Home {
        if let value = ProcessInfo.processInfo.environment["CEVM_HOME"], !value.isEmpty {
            return Home(root: absolute(value))
        }
        let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
        return Home(root: "\(home)/.local/state/cevm")
    }

    public var vmsDirectory: String { "\(root)/vms" }
    public var cacheDirectory: String { "\(root)/cache" }

    public func vm(_ name: VMName) -> VMPaths { VMPaths(directory: "\(vmsDirectory)/\(name.value)") }

    /// Names of every VM that has a directory with a spec.
    public func vmNames() -> [VMName] {
        guard let entries = try? Files.list(vmsDirectory) else { return [] }
        return entries.compactMap { try? VMName($0) }.filter { Files.exists(vm($0).spec) }
    }

    public func prepare() throws {
        try Files.makeDirectory(root)
        try Files.makeDirectory(vmsDirectory)
        try Files.makeDirectory(cacheDirectory)
    }

    public static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        return FileManager.default.currentDirectoryPath + "/" + path
    }
}

/// The files of one VM.
public struct VMPaths: Sendable {
    public let directory: String
    public var spec: String { "\(directory)/spec.json" }
    public var status: String { "\(directory)/status.json" }
    public var lock: String { "\(directory)/lock" }
    public var controlSocket: String { "\(directory)/control.sock" }
    public var consoleLog: String { "\(directory)/console.log" }
    public var supervisorLog: String { "\(directory)/supervisor.log" }
    public var diskDirectory: String { "\(directory)/disk" }
    public var runDirectory: String { "\(directory)/run" }
    public var overlay: String { "\(diskDirectory)/overlay.qcow2" }
    public var createdBase: String { "\(diskDirectory)/base.qcow2" }
    public func qmpSocket(instance: Int) -> String { "\(runDirectory)/qmp\(instance).sock" }
    /// The VM's checkpoint schedule (the supervisor resumes it when it starts).
    public var schedule: String { "\(directory)/schedule.json" }
    /// One JSON line per `cevm restore` of this VM: how long it took.
    public var restoreTimes: String { "\(directory)/restore-times.jsonl" }
    /// The disk manager's NBD socket (the supervisor serves the VM's disk on it).
    public var nbdSocket: String { "\(runDirectory)/nbd.sock" }

    /// Unix socket paths are limited to 107 bytes (sun_path).
    public static let maximumSocketPath = 107

    /// Why a socket cannot be created at `path` (too long, a file of
    /// another kind there, no such directory), or nil when it can.
    public static func problemCreatingSocket(at path: String) -> String? {
        let length = path.utf8.count
        guard length <= maximumSocketPath else {
            return "socket path \(path) is \(length) bytes; a Unix socket path may have at most \(maximumSocketPath)"
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { return "\(path) exists and is not a socket; refusing to replace it" }
        } else if errno != ENOENT {
            return "cannot use socket path \(path): \(String(cString: strerror(errno)))"
        }
        let parent = Files.parent(of: path)
        guard Files.isDirectory(parent) else { return "cannot create socket \(path): \(parent) is not a directory" }
        return nil
    }

    public func checkSocketPaths() throws(StoreError) {
        for path in [controlSocket, qmpSocket(instance: 99)] where path.utf8.count > VMPaths.maximumSocketPath {
            throw .socketPathTooLong(path)
        }
    }

    public func readSpec() throws -> VMSpec { try StoreCoding.decode(VMSpec.self, from: spec) }

    public func readStatus() -> VMStatus? { try? StoreCoding.decode(VMStatus.self, from: status) }

    public func writeSpec(_ value: VMSpec) throws { try StoreCoding.write(value, to: spec) }

    public func writeStatus(_ value: VMStatus) throws {
        var value = value
        value.updatedAt = Timestamp.now()
        try StoreCoding.write(value, to: status)
    }

    /// True while a supervisor holds this VM's lock.
    public var supervisorAlive: Bool { FileLock.isHeld(lock) }

    /// Who holds the VM's lock now: the supervisor takes it for its whole
    /// life and every QEMU instance it starts inherits it, so the lock stays
    /// held while any process of the VM lives.
    public var lockHolder: LockHolder? {
        guard FileLock.isHeld(lock) else { return nil }
        let holders = FileLock.processesHolding(lock)
        if let pid = readStatus()?.supervisorPID, holders.contains(pid) { return .supervisor(pid: pid) }
        for pid in holders {
            if let executable = FileLock.executableName(of: pid), executable.hasPrefix("qemu") {
                return .instance(pid: pid, executable: executable)
            }
        }
        if let pid = holders.first {
            return .other(pid: pid, executable: FileLock.executableName(of: pid) ?? "?")
        }
        return .supervisor(pid: readStatus()?.supervisorPID)
    }
}

/// The process holding a VM's lock (`VMPaths.lockHolder`).
public enum LockHolder: Sendable, Equatable, CustomStringConvertible {
    /// Its supervisor (pid unknown while it starts, or when /proc hides it).
    case supervisor(pid: Int32?)
    /// A QEMU instance of the VM that outlived its supervisor.
    case instance(pid: Int32, executable: String)
    /// Some other process that has the lock file open.
    case other(pid: Int32, executable: String)

    public var isSupervisor: Bool {
        if case .supervisor = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .supervisor(let pid): return "its supervisor" + (pid.map { " (pid \($0))" } ?? "")
        case .instance(let pid, let executable): return "a QEMU process of the VM (\(executable), pid \(pid)) that outlived its supervisor"
        case .other(let pid, let executable): return "process \(pid) (\(executable))"
        }
    }
}

public enum StoreError: Error, Sendable, CustomStringConvertible {
    case socketPathTooLong(String)
    case unreadable(path: String, reason: String)
    case invalid(path: String, InvalidValue)

    public var description: String {
        switch self {
        case .socketPathTooLong(let path):
            return "socket path \(path) is longer than \(VMPaths.maximumSocketPath) bytes: set CEVM_HOME to a shorter directory"
        case .unreadable(let path, let reason): return "cannot read \(path): \(reason)"
        case .invalid(let path, let error): return "refusing \(path): \(error)"
        }
    }
}

/// JSON for the state files: sorted keys, pretty, written atomically.
public enum StoreCoding {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func write<T: Encodable>(_ value: T, to path: String) throws {
        var data = try encoder().encode(value)
        data.append(0x0a)
        try Files.writeAtomically(data, to: path)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from path: String) throws -> T {
        let bytes: [UInt8]
        do { bytes = try Files.read(path, limit: 16 << 20) } catch {
            throw StoreError.unreadable(path: path, reason: "\(error)")
        }
        let value: T
        do { value = try JSONDecoder().decode(T.self, from: Data(bytes)) } catch {
            throw StoreError.unreadable(path: path, reason: "not a valid \(T.self): \(error)")
        }
        // Checked by the process that reads it, whoever wrote it.
        if let checked = value as? any Validatable {
            do { try checked.validate() } catch { throw StoreError.invalid(path: path, error) }
        }
        return value
    }
}
