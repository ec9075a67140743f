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
}

public enum StoreError: Error, Sendable, CustomStringConvertible {
    case socketPathTooLong(String)
    case unreadable(path: String, reason: String)

    public var description: String {
        switch self {
        case .socketPathTooLong(let path):
            return "socket path \(path) is longer than \(VMPaths.maximumSocketPath) bytes: set CEVM_HOME to a shorter directory"
        case .unreadable(let path, let reason): return "cannot read \(path): \(reason)"
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
        do { return try JSONDecoder().decode(T.self, from: Data(bytes)) } catch {
            throw StoreError.unreadable(path: path, reason: "not a valid \(T.self): \(error)")
        }
    }
}
