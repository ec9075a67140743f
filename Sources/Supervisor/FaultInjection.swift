#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Test hook: kills a part of a CEVM checkpoint at a named step, to prove
/// that every crash leaves the previous record restorable (issue: failure
/// handling, "tested per injection point"). Read once from the supervisor's
/// environment: `CEVM_FAULT=<step>:<action>`, for instance
/// `CEVM_FAULT=migrating:kill-new`. Unset in normal use; a malformed value is
/// ignored with a line in the supervisor log.
///
/// Steps: `prepared` (New_VM started, U and the record created, before the
/// migration), `migrating` (the migration started), `switched-over` (New_VM
/// runs), `memory-durable` (the memory record is fsynced, the disk still
/// integrating). Actions: `kill-old`, `kill-new` (SIGKILL to that QEMU),
/// `kill-supervisor` (SIGKILL to the supervisor, which also ends the tee and
/// the integration: they are its threads, and its QEMU instances: they die
/// with it). Compiled into debug builds only.
struct FaultInjection: Sendable, Equatable {
    enum Step: String, Sendable, CaseIterable {
        case prepared, migrating
        case switchedOver = "switched-over"
        case memoryDurable = "memory-durable"
    }

    enum Action: String, Sendable, CaseIterable {
        case killOld = "kill-old"
        case killNew = "kill-new"
        case killSupervisor = "kill-supervisor"
    }

    let step: Step
    let action: Action

    static let variable = "CEVM_FAULT"

    static func parse(_ text: String) -> FaultInjection? {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, let step = Step(rawValue: parts[0]), let action = Action(rawValue: parts[1]) else { return nil }
        return FaultInjection(step: step, action: action)
    }

    #if CEVM_FAULT_INJECTION
    /// Debug and test builds only (Package.swift defines
    /// CEVM_FAULT_INJECTION for the debug configuration): a release binary
    /// ignores CEVM_FAULT.
    static let fromEnvironment: FaultInjection? = ProcessInfo.processInfo.environment[variable].flatMap(parse)
    #else
    static let fromEnvironment: FaultInjection? = nil
    #endif

    /// Carries out the action if this is its step.
    func trigger(at step: Step, old: pid_t?, new: pid_t?, log: (String) -> Void) {
        guard step == self.step else { return }
        log("fault injection (\(Self.variable)): \(action.rawValue) at \(step.rawValue)")
        switch action {
        case .killOld: if let old { kill(old, SIGKILL) }
        case .killNew: if let new { kill(new, SIGKILL) }
        case .killSupervisor: kill(getpid(), SIGKILL)
        }
    }
}
