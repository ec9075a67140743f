import NIOCore

/// Runs tasks on one event loop: the executor a connection's tasks prefer.
///
/// A connection reads its socket, decodes requests, calls the export and
/// writes replies in tasks (`NBDServer.transmit`). On the global executor
/// each of those steps would be a hand-off between threads: the socket's
/// event loop to the reader task, to the request's task, to the export's
/// own thread, back to a task, back to the event loop. With this executor
/// preferred, the reader and the request tasks run on the event loop that
/// owns the socket, so a request crosses threads only into the export's
/// I/O thread and back. Nothing in the connection's code blocks; an
/// export's async calls must not block either (`BlockingExport` and the
/// disk manager run blocking I/O on threads of their own).
///
/// The event loop must outlive the tasks (a job enqueued on a loop that
/// was shut down is dropped by SwiftNIO): the server's event loop group
/// outlives the server.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
