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
    func port(network: String, vm: VMName, instance: Int, mac: MACAddress) async throws -> Int32
}

/// Why a NIC could not be connected.
public enum NetworkError: Error, Sendable, Equatable, CustomStringConvertible {
    case noSuchNetwork(String)
    case badDescriptor(network: String, Int32)

    public var description: String {
        switch self {
        case .noSuchNetwork(let name): return "network '\(name)' does not exist (create it with `cevm net create \(name)`)"
        case .badDescriptor(let name, let fd): return "network '\(name)' gave descriptor \(fd), not an open socket"
        }
    }
}

/// The NICs of one instance, with the sockets opened for it.
struct InstanceNICs {
    var nics: [InstanceConfig.NIC]
    /// Sockets of network NICs, open in this process until `close()`.
    var descriptors: [Int32]

    /// The NICs of `spec` for instance `instance`; each network NIC's
    /// socket comes from `ports`, which must exist when there is one.
    static func make(spec: VMSpec, instance: Int, ports: (any NetworkPorts)?) async throws -> InstanceNICs {
        var nics: [InstanceConfig.NIC] = []
        var descriptors: [Int32] = []
        do {
            for nic in spec.nics {
                switch nic.attachment {
                case .user(let forwards):
                    nics.append(.init(mac: nic.mac.description, backend: .user(hostForwards: forwards.map(\.description))))
                case .network(let name):
                    guard let ports else { throw NetworkError.noSuchNetwork(name) }
                    let fd = try await ports.port(network: name, vm: spec.name, instance: instance, mac: nic.mac)
                    guard fd >= 0, fcntl(fd, F_GETFD) >= 0 else { throw NetworkError.badDescriptor(network: name, fd) }
                    descriptors.append(fd)
                    nics.append(.init(mac: nic.mac.description, backend: .stream(descriptor: fd)))
                }
            }
        } catch {
            descriptors.forEach { _ = Glibc.close($0) }
            throw error
        }
        return InstanceNICs(nics: nics, descriptors: descriptors)
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
