/// What every checkpoint mechanism's machine offers its driver: it takes
/// one event at a time and returns the actions to carry out; once terminal
/// it has either committed or failed, and the actions returned with the
/// failing transition undo what was done.
public protocol PhaseMachine: Sendable {
    associatedtype Event: Sendable & Equatable
    associatedtype Action: Sendable & Equatable
    associatedtype Failure: Sendable & CustomStringConvertible

    /// The first event.
    static var start: Event { get }
    /// The event for a cancel from outside (the caller's task cancelled).
    static func cancel(_ why: String) -> Event

    mutating func handle(_ event: Event) -> [Action]

    var isTerminal: Bool { get }
    /// Set once the machine failed.
    var failure: Failure? { get }
    /// The phase's name, for messages.
    var phaseName: String { get }
}

extension CEVMMachine: PhaseMachine {
    public static var start: Event { .start }
    public static func cancel(_ why: String) -> Event { .cancelled(why) }
    public var isTerminal: Bool { phase.isTerminal }
    public var failure: Failure? {
        if case .failed(let failure) = phase { return failure }
        return nil
    }
    public var phaseName: String { phase.name }
}
