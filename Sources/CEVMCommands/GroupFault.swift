#if canImport(Glibc)
import Glibc
#endif
import CEVMSystem
import Foundation
import NetSwitchControl
import VMStore

/// Test hook of the group checkpoint's coordinator, beside the
/// supervisor's `CEVM_FAULT` (FaultInjection.swift): kills a part of a
/// group checkpoint at a named step of the coordinator, to prove that every
/// crash leaves no group record or a whole one, and the earlier group
/// restorable. Read from the coordinator's environment (the `cevm
/// checkpoint` process, or the switch process for a scheduled group):
/// `CEVM_GROUP_FAULT=<step>:<action>`, for instance
/// `CEVM_GROUP_FAULT=members-done:kill-switch`. Unset in normal use; a
/// malformed value is ignored with a line on stderr.
///
/// Steps: `members-done` (every member's checkpoint returned a committed
/// record, no cut ended yet), `channel-saved` (every switch ended its cut
/// and wrote its channel state into the staging directory, the group's
/// manifest not committed yet). Actions: `kill-coordinator` (SIGKILL to
/// itself), `kill-switch` (SIGKILL to the switch of the group's first
/// network), `kill-member-qemu`, `kill-member-supervisor` (SIGKILL to the
/// QEMU or the supervisor of the group's last member). Compiled into debug
/// builds only.
struct GroupFault: Sendable, Equatable {
    enum Step: String, Sendable, CaseIterable {
        case membersDone = "members-done"
        case channelSaved = "channel-saved"
    }

    enum Action: String, Sendable, CaseIterable {
        case killCoordinator = "kill-coordinator"
        case killSwitch = "kill-switch"
        case killMemberQEMU = "kill-member-qemu"
        case killMemberSupervisor = "kill-member-supervisor"
    }

    let step: Step
    let action: Action

    static let variable = "CEVM_GROUP_FAULT"

    static func parse(_ text: String) -> GroupFault? {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, let step = Step(rawValue: parts[0]), let action = Action(rawValue: parts[1]) else { return nil }
        return GroupFault(step: step, action: action)
    }

    #if CEVM_FAULT_INJECTION
    /// Debug and test builds only (Package.swift defines
    /// CEVM_FAULT_INJECTION for the debug configuration): a release binary
    /// ignores CEVM_GROUP_FAULT.
    static var fromEnvironment: GroupFault? {
        guard let text = ProcessInfo.processInfo.environment[variable], !text.isEmpty else { return nil }
        guard let fault = parse(text) else {
            let steps = Step.allCases.map(\.rawValue).joined(separator: "|")
            let actions = Action.allCases.map(\.rawValue).joined(separator: "|")
            FileHandle.standardError.write(Data("cevm: \(variable)=\(text) ignored: expected <\(steps)>:<\(actions)>\n".utf8))
            return nil
        }
        return fault
    }
    #else
    static var fromEnvironment: GroupFault? { nil }
    #endif

    /// Carries out the action if this is its step. `switchPID` asks the
    /// switch of the first network for its process id.
    func trigger(at step: Step, lastMember: VMPaths?, switchPID: () async -> Int32?) async {
        guard step == self.step else { return }
        FileHandle.standardError.write(Data("cevm: fault injection (\(Self.variable)): \(action.rawValue) at \(step.rawValue)\n".utf8))
        var victim: Int32?
        switch action {
        case .killCoordinator: victim = getpid()
        case .killSwitch: victim = await switchPID()
        case .killMemberQEMU: victim = lastMember?.readStatus()?.qemuPID
        case .killMemberSupervisor: victim = lastMember?.readStatus()?.supervisorPID
        }
        // Never a whole process group (0, -1): only a real process id.
        guard let victim, victim > 0 else {
            FileHandle.standardError.write(Data("cevm: fault injection (\(Self.variable)): no process to kill\n".utf8))
            return
        }
        kill(victim, SIGKILL)
        // The victim is gone (or a zombie) before the coordinator goes on; at most 5 s.
        let deadline = Timestamp.monotonic() + 5
        while Self.alive(victim) && Timestamp.monotonic() < deadline { usleep(10_000) }
    }

    static func alive(_ pid: Int32) -> Bool {
        guard let stat = try? Files.readString("/proc/\(pid)/stat", limit: 4096), let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first != "Z"
    }
}
