/// The old side: the seed's Checkpointing protocol (the sweep of T into U,
/// with the record capture of DESIGN.md) and AccessDisk.
///
/// The seed's loop (CP 1-17) alternates one sweep step with one non-blocking
/// receive. Here the caller drives it: call ``sweepStep(_:)`` for CP 2-9 and
/// ``receive(_:_:)`` for each message CP 10 takes; the decisions do not
/// depend on how the caller interleaves the two, so any interleaving is
/// allowed (the seed's strict alternation is one of them).
///
/// Contract: the caller carries out every returned action, in order, before
/// the next input, and answers `ClusterAllocationQuery` for T from the
/// current state of T.
public struct OldSide: Sendable {
    public enum State: Sendable, Hashable {
        /// EOF_on_T is false; `cursor` is the cluster the sweep is at
        /// (nil before the first cluster).
        case sweeping(cursor: Int?)
        /// EOF_on_T is true (seed CP 7); INTEGRATE_END was sent.
        case drained
        /// DONE is true (seed CP 15); UPDATE_DONE was sent.
        case done
    }

    public let geometry: Geometry
    /// S0: the clusters T held at switch-over. Frozen.
    public let switchOverClusters: Set<Int>
    public private(set) var state: State
    /// Clusters of S0 whose switch-over content is already in the record.
    public private(set) var savedToRecord: Set<Int> = []
    /// Clusters U holds. U is created empty and only this machine writes it
    /// during integration, so it tracks U itself.
    public private(set) var clustersInU: Set<Int> = []

    public init(geometry: Geometry, switchOverClusters: Set<Int>) throws(DiskIntegrationError) {
        for cluster in switchOverClusters where cluster < 0 || cluster >= geometry.clusterCount {
            throw .clusterOutOfRange(cluster: cluster, clusterCount: geometry.clusterCount)
        }
        self.geometry = geometry
        self.switchOverClusters = switchOverClusters
        self.state = .sweeping(cursor: nil)
    }

    /// The cluster the sweep is at, nil before the first one or after EOF.
    public var cursor: Int? {
        if case .sweeping(let cursor) = state { return cursor }
        return nil
    }

    /// EOF_on_T.
    public var eofOnT: Bool {
        switch state {
        case .sweeping: false
        case .drained, .done: true
        }
    }

    public var isDone: Bool { state == .done }

    /// Seed AD 2 / AD 8: `m.address < T.address + cluster_size ∨ EOF_on_T`,
    /// per cluster: the cluster is at or below the cursor, or T is exhausted.
    public func isIntegrated(cluster: Int) -> Bool {
        switch state {
        case .sweeping(let cursor):
            guard let cursor else { return false }
            return cluster <= cursor
        case .drained, .done:
            return true
        }
    }

    // MARK: - Checkpointing protocol

    /// One sweep step: seed CP 2-9.
    public mutating func sweepStep(_ t: some ClusterAllocationQuery) throws(DiskIntegrationError)
        -> [IntegrationAction]
    {
        switch state {
        case .done:
            throw .protocolFinished
        case .drained:
            return []  // seed CP 2: EOF_on_T, nothing to sweep
        case .sweeping(let cursor):
            // seed CP 3: nextCluster(T) — asked of T as it is now, so clusters
            // AccessDisk allocated in T above the cursor are seen.
            let from = (cursor ?? -1) + 1
            if let next = t.firstAllocated(in: .T, from: from), next < geometry.clusterCount {
                guard next >= from else { throw .inconsistentAllocationAnswer(cluster: next, from: from) }
                state = .sweeping(cursor: next)
                var actions: [IntegrationAction] = []
                // DESIGN: every cluster of S0 the sweep takes from T is also
                // written to the record, unless copy-before-write already did.
                if switchOverClusters.contains(next), !savedToRecord.contains(next) {
                    savedToRecord.insert(next)
                    actions.append(.saveToRecord(cluster: next, from: .T))
                }
                // seed CP 4: updateCluster(U, content, Taddress)
                actions.append(.copyCluster(from: .T, to: .U, cluster: next))
                clustersInU.insert(next)
                return actions
            }
            // seed CP 5-7: send INTEGRATE_END, EOF_on_T = true
            state = .drained
            return [.sendToNewSide(.integrateEnd)]
        }
    }

    // MARK: - Messages from New_VM's side

    /// One message taken by seed CP 10.
    public mutating func receive(_ message: NewToOld, _ t: some ClusterAllocationQuery)
        throws(DiskIntegrationError) -> [IntegrationAction]
    {
        switch (message, state) {
        case (_, .done):
            throw .unexpectedMessageToOldSide(message, state: state)
        case (.request(let request), _):
            // seed CP 11-12: m is a disk request: accessDisk(m)
            return try accessDisk(request, t)
        case (.lastUpdate, .sweeping):
            throw .lastUpdateBeforeIntegrateEnd
        case (.lastUpdate, .drained):
            // seed CP 13-15: send UPDATE_DONE, DONE = true
            state = .done
            return [.sendToNewSide(.updateDone)]
        }
    }

    // MARK: - AccessDisk

    /// Seed AD 1-13, per cluster of the request.
    mutating func accessDisk(_ request: DiskRequest, _ t: some ClusterAllocationQuery)
        throws(DiskIntegrationError) -> [IntegrationAction]
    {
        try geometry.validate(request)
        var actions: [IntegrationAction] = []
        for span in geometry.split(offset: request.offset, length: request.length) {
            let k = span.cluster
            switch request.kind {
            case .write:  // seed AD 1
                if isIntegrated(cluster: k) {  // seed AD 2
                    // seed AD 3: updateCluster(U, ...). A partial write into a
                    // cluster U does not hold fills the rest from where a read
                    // would come from (seed AD 9: U, else B — here B).
                    if !clustersInU.contains(k), !span.isWholeCluster {
                        actions.append(.copyCluster(from: .B, to: .U, cluster: k))
                    }
                    clustersInU.insert(k)
                    actions.append(.write(to: .U, span: span, request: request.id))
                } else {  // seed AD 4
                    // DESIGN: copy before write — a cluster of S0 the sweep has
                    // not reached keeps its switch-over content in the record.
                    if switchOverClusters.contains(k), !savedToRecord.contains(k) {
                        savedToRecord.insert(k)
                        actions.append(.saveToRecord(cluster: k, from: .T))
                    }
                    // seed AD 5: updateCluster(T, ...). A partial write into a
                    // cluster T does not hold fills the rest from where a read
                    // would come from (seed AD 11: T, else U, else B).
                    if !span.isWholeCluster, !t.holds(.T, cluster: k) {
                        let fill: Layer = clustersInU.contains(k) ? .U : .B
                        actions.append(.copyCluster(from: fill, to: .T, cluster: k))
                    }
                    actions.append(.write(to: .T, span: span, request: request.id))
                }
            case .read:  // seed AD 7
                let layer: Layer
                if isIntegrated(cluster: k) {  // seed AD 8
                    layer = clustersInU.contains(k) ? .U : .B  // seed AD 9: U, else B
                } else if t.holds(.T, cluster: k) {  // seed AD 10-11: T,
                    layer = .T
                } else {
                    layer = clustersInU.contains(k) ? .U : .B  // else U, else B
                }
                actions.append(.read(from: layer, span: span, request: request.id))
            }
        }
        // seed AD 9 / AD 11: "send a cluster to New_VM" (a write is acknowledged)
        actions.append(.sendToNewSide(.completed(request.id)))
        return actions
    }
}
