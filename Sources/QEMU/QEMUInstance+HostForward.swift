import QMP

/// Host forwards of user-mode NICs changed while QEMU runs, through the
/// human monitor (QMP has no command for them):
///
///     hostfwd_add    NETDEV tcp|udp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT
///     hostfwd_remove NETDEV tcp|udp:[HOSTADDR]:HOSTPORT
///
/// QEMU answers both with text, not a QMP error: `hostfwd_add` says nothing
/// when it bound the port ("Could not set up host forwarding rule …" when
/// not); `hostfwd_remove` says "host forwarding rule for … removed" (or
/// "… not found", "invalid format").
extension QEMUInstance {
    /// Binds `rule` (`tcp:127.0.0.1:8080-:22`) on NIC `index`'s netdev.
    public func addHostForward(nic index: Int, rule: String) async throws {
        let command = "hostfwd_add \(QEMUCommandLine.netdevID(ofNIC: index)) \(rule)"
        let answer = try await humanMonitor(command)
        if !answer.isEmpty { throw QEMUError.monitor(command: command, answer: answer) }
    }

    /// Closes `hostSide` (`tcp:127.0.0.1:8080`) of NIC `index`'s netdev.
    public func removeHostForward(nic index: Int, hostSide: String) async throws {
        let command = "hostfwd_remove \(QEMUCommandLine.netdevID(ofNIC: index)) \(hostSide)"
        let answer = try await humanMonitor(command)
        if !answer.hasSuffix("removed") { throw QEMUError.monitor(command: command, answer: answer) }
    }

    /// One human monitor command line; QEMU's answer without its trailing CR LF.
    /// `line` must come from cevm's own values: the monitor parses it.
    public func humanMonitor(_ line: String) async throws -> String {
        let answer = try await qmp.execute("human-monitor-command", arguments: ["command-line": .string(line)])
        var text = Substring(answer.stringValue ?? "")
        while let last = text.last, last.isNewline { text = text.dropLast() }
        return String(text)
    }
}
