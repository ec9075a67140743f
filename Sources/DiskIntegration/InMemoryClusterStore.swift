/// A reference cluster store in memory: B, T, U and the record as maps from
/// cluster index to bytes. It answers the allocation queries and carries out
/// the store actions exactly as an I/O layer over qcow2 images would, and it
/// is strict: an action that a correct state machine never emits (copying a
/// cluster a layer does not hold, a partial write into an unallocated
/// cluster, saving a record cluster twice) is an error, not a silent repair.
public struct InMemoryClusterStore: ClusterAllocationQuery, Sendable {
    public enum Error: Swift.Error, Sendable, Hashable {
        case baseSizeMismatch(clusters: Int, expected: Int)
        case clusterSizeMismatch(cluster: Int, size: Int, expected: Int)
        case clusterOutOfRange(Int)
        case doesNotHold(Layer, cluster: Int)
        case partialWriteToUnallocated(Layer, cluster: Int)
        case cannotWrite(Layer)
        case recordSavedTwice(cluster: Int)
        case missingPayload(RequestID)
        case missingReplyBuffer(RequestID)
        case outsideRequest(RequestID, Range<Int>)
    }

    public let geometry: Geometry
    /// B: every cluster, read-only.
    public let base: [[UInt8]]
    /// T: Old_VM's overlay.
    public private(set) var t: [Int: [UInt8]]
    /// U: New_VM's overlay.
    public private(set) var u: [Int: [UInt8]] = [:]
    /// The disk record: clusters of S0 with their switch-over content.
    public private(set) var record: [Int: [UInt8]] = [:]

    public init(geometry: Geometry, base: [[UInt8]], t: [Int: [UInt8]]) throws(Error) {
        guard base.count == geometry.clusterCount else {
            throw .baseSizeMismatch(clusters: base.count, expected: geometry.clusterCount)
        }
        for (index, cluster) in base.enumerated() where cluster.count != geometry.clusterSize {
            throw .clusterSizeMismatch(cluster: index, size: cluster.count, expected: geometry.clusterSize)
        }
        for (index, cluster) in t {
            guard index >= 0, index < geometry.clusterCount else { throw .clusterOutOfRange(index) }
            guard cluster.count == geometry.clusterSize else {
                throw .clusterSizeMismatch(cluster: index, size: cluster.count, expected: geometry.clusterSize)
            }
        }
        self.geometry = geometry
        self.base = base
        self.t = t
    }

    // MARK: ClusterAllocationQuery

    public func holds(_ layer: Layer, cluster: Int) -> Bool {
        switch layer {
        case .B: cluster >= 0 && cluster < geometry.clusterCount
        case .T: t[cluster] != nil
        case .U: u[cluster] != nil
        }
    }

    public func firstAllocated(in layer: Layer, from: Int) -> Int? {
        switch layer {
        case .B: return from < geometry.clusterCount ? max(from, 0) : nil
        case .T: return t.keys.filter { $0 >= from }.min()
        case .U: return u.keys.filter { $0 >= from }.min()
        }
    }

    /// The content `layer` holds for `cluster`, nil if it does not hold it.
    public func content(_ layer: Layer, cluster: Int) -> [UInt8]? {
        switch layer {
        case .B: cluster >= 0 && cluster < base.count ? base[cluster] : nil
        case .T: t[cluster]
        case .U: u[cluster]
        }
    }

    /// What a plain reader of `top` over B sees for `cluster` (`top`, else B).
    public func visible(over top: Layer, cluster: Int) -> [UInt8]? {
        content(top, cluster: cluster) ?? content(.B, cluster: cluster)
    }

    // MARK: Carrying out actions

    /// Carries out one store action. Message actions (`sendTo…`,
    /// `complete`) are not the store's business: it returns false for them.
    /// Writes take their bytes from `payloads[request]`; reads put theirs in
    /// `replies[request]`, which the caller sized to the request's length.
    @discardableResult
    public mutating func perform(
        _ action: IntegrationAction, payloads: [RequestID: [UInt8]], replies: inout [RequestID: [UInt8]]
    ) throws(Error) -> Bool {
        switch action {
        case .copyCluster(let from, let to, let cluster):
            guard let bytes = content(from, cluster: cluster) else { throw .doesNotHold(from, cluster: cluster) }
            try store(bytes, in: to, cluster: cluster)
        case .saveToRecord(let cluster, let from):
            guard let bytes = content(from, cluster: cluster) else { throw .doesNotHold(from, cluster: cluster) }
            guard record[cluster] == nil else { throw .recordSavedTwice(cluster: cluster) }
            record[cluster] = bytes
        case .read(let from, let span, let request):
            guard let bytes = content(from, cluster: span.cluster) else {
                throw .doesNotHold(from, cluster: span.cluster)
            }
            guard var reply = replies[request] else { throw .missingReplyBuffer(request) }
            guard span.requestRange.upperBound <= reply.count else {
                throw .outsideRequest(request, span.requestRange)
            }
            reply.replaceSubrange(span.requestRange, with: bytes[span.range])
            replies[request] = reply
        case .write(let to, let span, let request):
            guard let payload = payloads[request] else { throw .missingPayload(request) }
            guard span.requestRange.upperBound <= payload.count else {
                throw .outsideRequest(request, span.requestRange)
            }
            var bytes: [UInt8]
            if let held = content(to, cluster: span.cluster), to != .B {
                bytes = held
            } else if span.isWholeCluster {
                bytes = [UInt8](repeating: 0, count: geometry.clusterSize)
            } else {
                throw .partialWriteToUnallocated(to, cluster: span.cluster)
            }
            bytes.replaceSubrange(span.range, with: payload[span.requestRange])
            try store(bytes, in: to, cluster: span.cluster)
        case .sendToNewSide, .sendToOldSide, .complete:
            return false
        }
        return true
    }

    private mutating func store(_ bytes: [UInt8], in layer: Layer, cluster: Int) throws(Error) {
        guard cluster >= 0, cluster < geometry.clusterCount else { throw .clusterOutOfRange(cluster) }
        switch layer {
        case .B: throw .cannotWrite(.B)
        case .T: t[cluster] = bytes
        case .U: u[cluster] = bytes
        }
    }
}
