#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import QEMU
import VMStore

/// Who connects an instance's NIC to a cevm network: given the network, the
/// VM, the instance's number and the NIC's MAC, it returns a connected
/// stream socket (QEMU's `-netdev stream` framing: a 4-byte big-endian
/// length, then the frame), open in this process and owned by the caller
/// from then on (close-on-exec or not: the spawn puts a copy on the QEMU
/// process's descriptor list). The supervisor hands it to the QEMU process
/// and then closes its own copy. `instance` tells New_VM's port of a CEVM
/// checkpoint (which joins before the switch-over) from Old_VM's.
///
/// The switch provides the implementation. With none, a VM with a network
/// NIC does not start ("network X does not exist").
public protocol NetworkPorts: Sendable {
    /// A port for NIC `mac` of instance `instance`: the VM's active port
    /// (`standby` false: a boot or a restore), or New_VM's port of a CEVM
    /// checkpoint, which receives nothing until `promote`.
    func port(network: String, vm: VMName, instance: Int, mac: MACAddress, standby: Bool) async throws -> NetworkPort
    /// The switch-over is done: the standby `port` becomes the VM's active
    /// one, and what Old_VM's QEMU never read is delivered to it. Returns
    /// the frames delivered again.
    func promote(network: String, vm: VMName, port: Int) async throws -> Int
    /// The port's instance ended (best effort: a switch that is gone has
    /// no port to remove).
    func detach(network: String, port: Int) async
    /// A group checkpoint (`group`) cutting the network: the VM, paused,
    /// cuts without changing instance (stop-and-save, background snapshot).
    func cutInPlace(network: String, vm: VMName, group: String) async throws
}

extension NetworkPorts {
    public func cutInPlace(network: String, vm: VMName, group: String) async throws {
        throw NetworkError.refused(network, "group checkpoints need the network's switch")
    }
}

/// A port of a cevm network, and the socket QEMU gets for it.
public struct NetworkPort: Sendable, Equatable {
    public var network: String
    public var id: Int
    public var descriptor: Int32

    public init(network: String, id: Int, descriptor: Int32) {
        self.network = network
        self.id = id
        self.descriptor = descriptor
    }
}

/// Why a NIC could not be connected.
public enum NetworkError: Error, Sendable, Equatable, CustomStringConvertible {
    case noSuchNetwork(String)
    case badDescriptor(network: String, Int32)
    case switchDown(String, String)
    case refused(String, String)

    public var description: String {
        switch self {
        case .noSuchNetwork(let name): return "network '\(name)' does not exist (create it with `cevm net create \(name)`)"
        case .switchDown(let name, let why): return "the switch of network '\(name)' is not running (\(why)); `cevm net create \(name)` starts it"
        case .refused(let name, let why): return "the switch of network '\(name)' refused: \(why)"
        case .badDescriptor(let name, let fd): return "network '\(name)' gave descriptor \(fd), not an open socket"
        }
    }
}

/// The NICs of one instance, with the ports opened for it.
struct InstanceNICs {
    var nics: [InstanceConfig.NIC]
    /// Ports of network NICs; their sockets open in this process until `close()`.
    var ports: [NetworkPort]
    var descriptors: [Int32] { ports.map(\.descriptor) }

    /// The NICs of `spec` for instance `instance`; each network NIC's
    /// port comes from `ports`, which must exist when there is one.
    /// `standby`: New_VM's ports, promoted at the switch-over.
    static func make(spec: VMSpec, instance: Int, ports: (any NetworkPorts)?, standby: Bool = false) async throws -> InstanceNICs {
        var nics: [InstanceConfig.NIC] = []
        var opened: [NetworkPort] = []
        do {
            for nic in spec.nics {
                switch nic.attachment {
                case .user(let forwards):
                    nics.append(.init(mac: nic.mac.description, backend: .user(hostForwards: forwards.map(\.description))))
                case .network(let name):
                    guard let ports else { throw NetworkError.noSuchNetwork(name) }
                    let port = try await ports.port(network: name, vm: spec.name, instance: instance, mac: nic.mac, standby: standby)
                    let fd = port.descriptor
                    guard fd >= 0, fcntl(fd, F_GETFD) >= 0 else {
                        await ports.detach(network: name, port: port.id)
                        throw NetworkError.badDescriptor(network: name, fd)
                    }
                    opened.append(port)
                    nics.append(.init(mac: nic.mac.description, backend: .stream(descriptor: fd)))
                }
            }
        } catch {
            opened.forEach { _ = Glibc.close($0.descriptor) }
            if let ports { for port in opened { await ports.detach(network: port.network, port: port.id) } }
            throw error
        }
        return InstanceNICs(nics: nics, ports: opened)
    }

    /// Closes this process's copies (QEMU keeps its own).
    func close() {
        descriptors.forEach { _ = Glibc.close($0) }
    }
}

extension Supervisor {
    /// Moves every host forward of the VM's user NICs from Old_VM to
    /// New_VM, after the switch-over: New_VM started without them (Old_VM
    /// still bound their ports). Each is removed from Old_VM, then added to
    /// New_VM. Connections accepted through a forward break: slirp's
    /// sockets live in Old_VM's process and cannot move to another one, so
    /// a host client reconnects (to New_VM, on the same port). A forward
    /// New_VM cannot bind (another process took the port in between) is
    /// lost: the checkpoint still succeeds and the VM runs on, the status
    /// lists the forward under `lostHostForwards`, and the error is logged.
    /// Returns the rules lost.
    static func moveHostForwards(_ nics: [NIC], from old: QEMUInstance, to new: QEMUInstance, log: (String) -> Void) async -> [String] {
        var lost: [String] = []
        var moved: [String] = []
        for (index, nic) in nics.enumerated() {
            for forward in nic.hostForwards {
                // Old_VM is paused for good, or already gone (its ports with it).
                if old.process.isRunning {
                    do { try await old.removeHostForward(nic: index, hostSide: forward.hostSide) } catch {
                        log("host forward \(forward) of NIC \(index): not removed from the old instance: \(error)")
                    }
                }
                do { try await new.addHostForward(nic: index, rule: forward.description) } catch {
                    log("host forward \(forward) of NIC \(index) is lost: the new instance could not bind it: \(error)")
                    lost.append("nic\(index) \(forward)")
                    continue
                }
                moved.append("nic\(index) \(forward)")
            }
        }
        if !moved.isEmpty { log("host forwards moved to the new instance: \(moved.joined(separator: ", "))") }
        return lost
    }
}
