#if canImport(Glibc)
import Glibc
#endif
import CSystemShims
import Dispatch
import Foundation
import Synchronization

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable, Codable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): return "exited with status \(code)"
        case .signaled(let signal): return "killed by signal \(signal) (\(signalName(signal)))"
        }
    }

    public var succeeded: Bool { self == .exited(0) }
}

func signalName(_ signal: Int32) -> String {
    switch signal {
    case SIGTERM: return "SIGTERM"
    case SIGKILL: return "SIGKILL"
    case SIGINT: return "SIGINT"
    case SIGSEGV: return "SIGSEGV"
    case SIGABRT: return "SIGABRT"
    case SIGHUP: return "SIGHUP"
    default: return "signal \(signal)"
    }
}

/// Where a child's standard stream goes.
public enum StandardIO: Sendable {
    case null
    case descriptor(Int32)
    /// A file opened (created, appended) for the child.
    case appendFile(String)
    case truncateFile(String)
}

/// A child process spawned with posix_spawn(3) — never through a shell — and
/// reaped by a dedicated thread blocked in waitpid(2), so its exit status is
/// kept and can be awaited from any task.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    public let executable: String
    private let ending = Latch<ExitStatus>()


    public enum SpawnError: Error, Sendable, CustomStringConvertible {
        case notFound(String)
        case failed(executable: String, errno: Int32)

        public var description: String {
            switch self {
            case .notFound(let name): return "executable '\(name)' not found on PATH"
            case .failed(let executable, let code):
                return "cannot start \(executable): \(String(cString: strerror(code))) (errno \(code))"
            }
        }
    }

    /// The most descriptors a child inherits beyond its standard streams.
    public static let maximumInherited = Int(CEVM_SPAWN_MAX_INHERIT)

    /// Spawns `executable` (a path, or a name looked up on PATH) with
    /// `arguments` (argv[1...]). Every descriptor above 2 is closed in the
    /// child. `newSession` makes the child a session leader (setsid), detached
    /// from the caller's terminal and process group.
    ///
    /// `tiedToParent` spawns a child that cannot outlive this process: it is
    /// forked by one dedicated thread that lives as long as the process (the
    /// kernel's parent-death signal fires when the forking *thread* ends)
    /// and sets PR_SET_PDEATHSIG(SIGKILL) before it execs. Such a child may
    /// also inherit descriptors: `inherit[k]` becomes its descriptor 3 + k,
    /// in order (for instance a flock(2) that must stay held while the
    /// child lives, then the sockets of a VM's network NICs).

    public static func spawn(
        _ executable: String,
        arguments: [String],
        environment: [String: String]? = nil,
        stdin: StandardIO = .null,
        stdout: StandardIO = .null,
        stderr: StandardIO = .null,
        newSession: Bool = false,
        tiedToParent: Bool = false,
        inherit: [Int32] = []
    ) throws -> ChildProcess {
        guard let path = Executables.find(executable) else { throw SpawnError.notFound(executable) }
        guard inherit.count <= maximumInherited, inherit.allSatisfy({ $0 >= 0 }) else {
            throw SpawnError.failed(executable: path, errno: inherit.count > maximumInherited ? EINVAL : EBADF)
        }
        if tiedToParent {
            let pid = try TiedSpawner.spawn(
                path: path, argv: [path] + arguments,
                environment: (environment ?? Executables.currentEnvironment()).map { "\($0.key)=\($0.value)" },
                stdio: [stdin, stdout, stderr], inherit: inherit)
            let child = ChildProcess(pid: pid, executable: path)
            child.startReaper()
            return child
        }
        precondition(inherit.isEmpty, "a descriptor is inherited only by a child tied to its parent")

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, io) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            switch io {
            case .null:
                posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            case .descriptor(let fd):
                posix_spawn_file_actions_adddup2(&actions, fd, target)
            case .appendFile(let file):
                posix_spawn_file_actions_addopen(&actions, target, file, O_WRONLY | O_CREAT | O_APPEND, 0o600)
            case .truncateFile(let file):
                posix_spawn_file_actions_addopen(&actions, target, file, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            }
        }
        cevm_spawn_add_closefrom(&actions, 3)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child starts with default signal dispositions and an empty mask,
        // whatever the parent (an async runtime) has blocked or ignored.
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        var flags = Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if newSession { flags |= cevm_posix_spawn_setsid_flag() }
        posix_spawnattr_setflags(&attributes, flags)

        let argv = [path] + arguments
        let env = (environment ?? Executables.currentEnvironment()).map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup($0) } + [nil]
        defer { for pointer in cArgv + cEnv { free(pointer) } }
        let rc = posix_spawn(&pid, path, &actions, &attributes, cArgv, cEnv)
        if rc != 0 { throw SpawnError.failed(executable: path, errno: rc) }
        let child = ChildProcess(pid: pid, executable: path)
        child.startReaper()
        return child
    }

    private init(pid: pid_t, executable: String) {
        self.pid = pid
        self.executable = executable
    }

    private func startReaper() {
        let pid = self.pid
        let thread = Thread { [self] in
            var raw: Int32 = 0
            var status: ExitStatus
            while true {
                let rc = waitpid(pid, &raw, 0)
                if rc == pid {
                    // WIFEXITED / WEXITSTATUS / WTERMSIG are macros; decode by hand.
                    let low = raw & 0x7f
                    status = low == 0 ? .exited((raw >> 8) & 0xff) : .signaled(low)
                    break
                }
                if rc == -1 && errno == EINTR { continue }
                status = .exited(-1)  // ECHILD: reaped elsewhere; nothing more to learn
                break
            }
            self.ending.set(status)
        }
        thread.start()
    }

    /// The exit status once the process has ended, else nil.
    public var exitStatus: ExitStatus? { ending.value }

    public var isRunning: Bool { exitStatus == nil }

    /// Waits until the process has ended; nil when the calling task is
    /// cancelled first.
    public func exited() async -> ExitStatus? { await ending.wait() }

    /// Waits until the process has ended, cancelled or not: for a process
    /// that is being ended (`terminate` sends SIGKILL before it waits).
    public func wait() async -> ExitStatus { await ending.waitIgnoringCancellation() }

    /// Waits at most `timeout`; nil when the process is still running then
    /// (at once when the calling task is cancelled: `terminate` then goes
    /// straight to SIGKILL).
    public func wait(timeout: Duration) async -> ExitStatus? {
        if let status = exitStatus { return status }
        let ending = self.ending
        let waits: [@Sendable () async -> ExitStatus?] = [
            { await ending.wait() },
            {
                try? await Task.sleep(for: timeout)
                return nil
            },
        ]
        return await firstFinished(waits) ?? nil
    }

    /// kill(2), ignored once the process has been reaped.
    public func signal(_ signal: Int32) {
        if exitStatus == nil { kill(pid, signal) }
    }

    /// SIGTERM, then SIGKILL if it has not ended within `grace`.
    @discardableResult
    public func terminate(grace: Duration = .seconds(5)) async -> ExitStatus {
        if let status = exitStatus { return status }
        signal(SIGTERM)
        if let status = await wait(timeout: grace) { return status }
        signal(SIGKILL)
        return await wait()
    }
}

/// Forks children that die with this process (see `ChildProcess.spawn`'s
/// `tiedToParent`) from one thread that never ends.
enum TiedSpawner {
    private final class Job: @unchecked Sendable {
        // Written by the spawner thread before `done` is signalled, read by
        // the caller after it: the semaphore orders the two.
        let work: () -> (pid_t, Int32)
        var result: (pid: pid_t, errno: Int32) = (-1, 0)
        let done = DispatchSemaphore(value: 0)
        init(_ work: @escaping () -> (pid_t, Int32)) { self.work = work }
    }

    private static let queue = Mutex<[Job]>([])
    private static let pending = DispatchSemaphore(value: 0)
    /// Started on first use; never ends.
    private static let thread: Void = {
        let thread = Thread {
            while true {
                pending.wait()
                guard let job = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
                job.result = job.work()
                job.done.signal()
            }
        }
        thread.name = "cevm-spawner"
        thread.start()
    }()

    static func spawn(path: String, argv: [String], environment: [String], stdio: [StandardIO], inherit: [Int32]) throws -> pid_t {
        // The child's standard streams, opened here close-on-exec (the child dup2s them).
        var opened: [Int32] = []
        defer { opened.forEach { close($0) } }
        var fds: [Int32] = []
        for (index, io) in stdio.enumerated() {
            switch io {
            case .descriptor(let fd): fds.append(fd)
            case .null:
                let fd = open("/dev/null", (index == 0 ? O_RDONLY : O_WRONLY) | O_CLOEXEC)
                if fd < 0 { throw SystemError("open", errno: errno, subject: "/dev/null") }
                opened.append(fd)
                fds.append(fd)
            case .appendFile(let file), .truncateFile(let file):
                var flags = O_WRONLY | O_CREAT | O_CLOEXEC
                if case .appendFile = io { flags |= O_APPEND } else { flags |= O_TRUNC }
                let fd = open(file, flags, 0o600)
                if fd < 0 { throw SystemError("open", errno: errno, subject: file) }
                opened.append(fd)
                fds.append(fd)
            }
        }
        let parent = getpid()
        let stdioFDs = fds
        let job = Job {
            let cArgv = argv.map { strdup($0) } + [nil]
            let cEnv = environment.map { strdup($0) } + [nil]
            defer { for pointer in cArgv + cEnv { free(pointer) } }
            let pid = cevm_spawn_dying_with_parent(path, cArgv, cEnv, stdioFDs, inherit, Int32(inherit.count), parent)
            return (pid, pid < 0 ? errno : 0)
        }
        _ = thread
        queue.withLock { $0.append(job) }
        pending.signal()
        job.done.wait()
        if job.result.pid < 0 { throw ChildProcess.SpawnError.failed(executable: path, errno: job.result.errno) }
        return job.result.pid
    }
}

/// Looking up executables and the environment.
public enum Executables {
    /// The absolute path of `name`: itself when it contains a slash, else the
    /// first executable match on PATH.
    public static func find(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(name)"
            if access(candidate, X_OK) == 0 && !Files.isDirectory(candidate) { return candidate }
        }
        return nil
    }

    /// This process's environment.
    public static func currentEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let eq = text.firstIndex(of: "=") {
                result[String(text[..<eq])] = String(text[text.index(after: eq)...])
            }
            pointer += 1
        }
        return result
    }

    /// The path of the running executable (/proc/self/exe).
    public static func currentExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
