/// New_VM's side of the integration (DESIGN.md "New_VM's side"): forwards
/// New_VM's requests to the old side until it has received INTEGRATE_END and
/// has nothing in flight, then sends LAST_UPDATE, holds new requests until
/// UPDATE_DONE, and continues in plain mode on U (reads: U, else B; writes: U).
///
/// Contract: the caller carries out every returned action, in order, before
/// the next input; in plain mode it answers `ClusterAllocationQuery` for U.
public struct NewSide: Sendable {
    public enum State: Sendable, Hashable {
        /// Forwarding requests; `integrateEndReceived` once seed CP 6's
        /// message arrived.
        case integrating(integrateEndReceived: Bool)
        /// LAST_UPDATE sent (seed CP 13's precondition), waiting for
        /// UPDATE_DONE; new requests are held.
        case lastUpdateSent
        /// UPDATE_DONE received (seed CP 14): U is New_VM's only overlay.
        case plain
    }

    public let geometry: Geometry
    public private(set) var state: State = .integrating(integrateEndReceived: false)
    /// Requests forwarded to the old side and not yet completed.
    public private(set) var inFlight: Set<RequestID> = []
    /// Requests submitted after LAST_UPDATE, served once in plain mode.
    public private(set) var held: [DiskRequest] = []

    public init(geometry: Geometry) {
        self.geometry = geometry
    }

    /// A request from New_VM.
    public mutating func submit(_ request: DiskRequest, _ u: some ClusterAllocationQuery)
        throws(DiskIntegrationError) -> [IntegrationAction]
    {
        try geometry.validate(request)
        switch state {
        case .integrating:
            guard !inFlight.contains(request.id) else { throw .duplicateRequest(request.id) }
            inFlight.insert(request.id)
            return [.sendToOldSide(.request(request))]
        case .lastUpdateSent:
            guard !held.contains(where: { $0.id == request.id }) else {
                throw .duplicateRequest(request.id)
            }
            held.append(request)
            return []
        case .plain:
            var filled: Set<Int> = []
            return plainActions(request, u, filled: &filled)
        }
    }

    /// A message from the old side.
    public mutating func receive(_ message: OldToNew, _ u: some ClusterAllocationQuery)
        throws(DiskIntegrationError) -> [IntegrationAction]
    {
        switch (message, state) {
        case (.integrateEnd, .integrating(integrateEndReceived: false)):
            state = .integrating(integrateEndReceived: true)
            return lastUpdateIfQuiet()
        case (.completed(let id), .integrating(let ended)):
            guard inFlight.remove(id) != nil else { throw .unknownCompletion(id) }
            return [.complete(id)] + (ended ? lastUpdateIfQuiet() : [])
        case (.updateDone, .lastUpdateSent):
            state = .plain
            var actions: [IntegrationAction] = []
            var filled: Set<Int> = []
            for request in held {
                actions += plainActions(request, u, filled: &filled)
            }
            held = []
            return actions
        default:
            throw .unexpectedMessageToNewSide(message, state: state)
        }
    }

    /// LAST_UPDATE once INTEGRATE_END has come and nothing is in flight.
    private mutating func lastUpdateIfQuiet() -> [IntegrationAction] {
        guard inFlight.isEmpty else { return [] }
        state = .lastUpdateSent
        return [.sendToOldSide(.lastUpdate)]
    }

    /// Plain mode on U. `filled` carries the clusters this batch of actions
    /// already allocated in U (the query answers for the state before it).
    private func plainActions(
        _ request: DiskRequest, _ u: some ClusterAllocationQuery, filled: inout Set<Int>
    ) -> [IntegrationAction] {
        var actions: [IntegrationAction] = []
        for span in geometry.split(offset: request.offset, length: request.length) {
            let k = span.cluster
            let inU = filled.contains(k) || u.holds(.U, cluster: k)
            switch request.kind {
            case .read:
                actions.append(.read(from: inU ? .U : .B, span: span, request: request.id))
            case .write:
                if !inU, !span.isWholeCluster {
                    actions.append(.copyCluster(from: .B, to: .U, cluster: k))
                }
                filled.insert(k)
                actions.append(.write(to: .U, span: span, request: request.id))
            }
        }
        actions.append(.complete(request.id))
        return actions
    }
}
