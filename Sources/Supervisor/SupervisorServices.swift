import CEVMSystem
import ServiceLifecycle

/// The services of a supervisor's `ServiceGroup` (swift-service-lifecycle):
/// the VM, the control socket and the scheduler. The group runs them as
/// its children, so none outlives `Supervisor.supervise()`; it shuts them
/// down in the reverse of their order in the group (the VM first).

/// Boots the VM and runs it until it ends; its end shuts the group down.
/// A graceful shutdown (a signal, when the supervisor handles them) stops
/// the VM as `requestStop()` does: the instance is asked to quit and the
/// final status is `stopped`.
struct VMService: Service, CustomStringConvertible {
    let supervisor: Supervisor

    var description: String { "vm \(supervisor.name)" }

    func run() async {
        await withGracefulShutdownHandler {
            await supervisor.runVM()
        } onGracefulShutdown: { [supervisor] in
            supervisor.requestStop()
        }
    }
}

/// Serves the control socket until the group shuts it down. A socket that
/// fails is reported and the VM runs on without it: the service then only
/// waits for its shutdown (a service of the group must not end early).
struct ControlService: Service, CustomStringConvertible {
    let supervisor: Supervisor

    var description: String { "control \(supervisor.paths.controlSocket)" }

    func run() async {
        do {
            try await cancelWhenGracefulShutdown { [supervisor] in try await supervisor.serveControl() }
        } catch {
            if !Task.isCancelled && !Task.isShuttingDownGracefully { supervisor.log("control socket: \(error)") }
        }
        try? await gracefulShutdown()
    }
}

/// Runs the schedule in force (`VMState.setSchedule`): the loop of the
/// current schedule is a child of this service, cancelled when the
/// schedule changes (and the new one started) or the group shuts down.
struct SchedulerService: Service, CustomStringConvertible {
    let supervisor: Supervisor

    var description: String { "scheduler \(supervisor.name)" }

    func run() async {
        await cancelWhenGracefulShutdown { [supervisor] in
            while !Task.isCancelled {
                let (options, changed) = await supervisor.state.currentSchedule()
                var contenders: [@Sendable () async -> Void] = [{ await changed.wait() }]
                if let options { contenders.append { await supervisor.runSchedule(options) } }
                _ = await firstFinished(contenders)
            }
        }
    }
}
