// The seed's disk protocols (seed 001: the Checkpointing protocol "CP" and the
// Disk Image Manipulation protocol AccessDisk "AD") as pure state machines.
// Line references in comments ("seed CP 2-4", "seed AD 8") are to the
// numbered pseudo-code lines of those two listings; see Docs/protocols.md.

/// Namespace for the disk-integration protocols.
public enum DiskIntegration {}

/// The image layers the protocols move clusters between.
public enum Layer: Sendable, Hashable, CustomStringConvertible {
    /// The base image: read-only, holds every cluster.
    case B
    /// Old_VM's overlay: every cluster the VM wrote since B.
    case T
    /// New_VM's overlay, created empty at the checkpoint.
    case U

    public var description: String {
        switch self {
        case .B: "B"
        case .T: "T"
        case .U: "U"
        }
    }
}

/// The disk's shape: `clusterCount` clusters of `clusterSize` bytes.
public struct Geometry: Sendable, Hashable {
    public let clusterSize: Int
    public let clusterCount: Int

    public var diskSize: Int { clusterSize * clusterCount }

    public init(clusterSize: Int, clusterCount: Int) throws(DiskIntegrationError) {
        guard clusterSize > 0, clusterCount >= 0,
            clusterCount <= Int.max / clusterSize
        else {
            throw .invalidGeometry(clusterSize: clusterSize, clusterCount: clusterCount)
        }
        self.clusterSize = clusterSize
        self.clusterCount = clusterCount
    }

    /// Splits the byte range `offset..<offset+length` into one span per
    /// cluster (DESIGN: "a request that spans the cursor, or several clusters,
    /// is split per cluster").
    public func split(offset: Int, length: Int) -> [ClusterSpan] {
        var spans: [ClusterSpan] = []
        var position = offset
        let end = offset + length
        while position < end {
            let cluster = position / clusterSize
            let inCluster = position - cluster * clusterSize
            let take = min(clusterSize - inCluster, end - position)
            spans.append(
                ClusterSpan(
                    cluster: cluster,
                    range: inCluster..<(inCluster + take),
                    requestRange: (position - offset)..<(position - offset + take),
                    clusterSize: clusterSize))
            position += take
        }
        return spans
    }
}

/// The part of one request that falls in one cluster.
public struct ClusterSpan: Sendable, Hashable {
    /// Cluster index.
    public let cluster: Int
    /// Bytes within the cluster.
    public let range: Range<Int>
    /// The same bytes within the request (offset into a write's payload or a
    /// read's reply buffer).
    public let requestRange: Range<Int>
    /// True when the span covers the whole cluster.
    public let isWholeCluster: Bool

    public init(cluster: Int, range: Range<Int>, requestRange: Range<Int>, clusterSize: Int) {
        self.cluster = cluster
        self.range = range
        self.requestRange = requestRange
        self.isWholeCluster = range.lowerBound == 0 && range.upperBound == clusterSize
    }
}

/// Identifies one New_VM request (an NBD handle, for instance).
public struct RequestID: Sendable, Hashable, CustomStringConvertible {
    public let raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public var description: String { "#\(raw)" }
}

/// A New_VM disk request. A write's payload stays with the I/O layer; actions
/// refer to it by `ClusterSpan.requestRange`.
public struct DiskRequest: Sendable, Hashable {
    public enum Kind: Sendable, Hashable { case read, write }
    public let id: RequestID
    public let kind: Kind
    /// Byte offset on the disk.
    public let offset: Int
    /// Length in bytes.
    public let length: Int

    public init(id: RequestID, kind: Kind, offset: Int, length: Int) {
        self.id = id
        self.kind = kind
        self.offset = offset
        self.length = length
    }
}

/// Messages from New_VM's side to the old side.
public enum NewToOld: Sendable, Hashable {
    /// A disk request, served by AccessDisk (seed CP 11-12).
    case request(DiskRequest)
    /// Seed CP 13: New_VM's side has seen INTEGRATE_END and has nothing in flight.
    case lastUpdate
}

/// Messages from the old side to New_VM's side.
public enum OldToNew: Sendable, Hashable {
    /// Seed CP 6: T is exhausted; from now on everything goes to U.
    case integrateEnd
    /// Seed CP 14: the protocol is over; New_VM continues in plain mode on U.
    case updateDone
    /// AccessDisk served the request (seed AD 9 / AD 11 "send a cluster"): for
    /// a read, the I/O layer sends the bytes its read actions gathered.
    case completed(RequestID)
}

/// What the I/O layer must do, in order, before the next input.
public enum IntegrationAction: Sendable, Hashable {
    /// Copy a whole cluster between layers (from `.B` means B's content).
    case copyCluster(from: Layer, to: Layer, cluster: Int)
    /// Write `from`'s current content of `cluster` to the disk record.
    case saveToRecord(cluster: Int, from: Layer)
    /// Read `span` of its cluster from `from` into the request's reply buffer
    /// at `span.requestRange`.
    case read(from: Layer, span: ClusterSpan, request: RequestID)
    /// Write the request's payload bytes `span.requestRange` into `to` at
    /// `span.range` of its cluster. The layer already holds the cluster, or
    /// the span covers it whole.
    case write(to: Layer, span: ClusterSpan, request: RequestID)
    /// Old side: send a message to New_VM's side.
    case sendToNewSide(OldToNew)
    /// New_VM's side: send a message to the old side.
    case sendToOldSide(NewToOld)
    /// New_VM's side: the request is finished; reply to New_VM (for a read,
    /// with the reply buffer).
    case complete(RequestID)
}

/// Everything the state machines reject. They never crash on input.
public enum DiskIntegrationError: Error, Sendable, Hashable {
    case invalidGeometry(clusterSize: Int, clusterCount: Int)
    /// A switch-over cluster index outside the disk.
    case clusterOutOfRange(cluster: Int, clusterCount: Int)
    /// A request outside `0..<diskSize`, or with a negative length.
    case requestOutOfRange(RequestID, offset: Int, length: Int, diskSize: Int)
    /// A request id already in flight.
    case duplicateRequest(RequestID)
    /// A completion for a request that is not in flight.
    case unknownCompletion(RequestID)
    /// LAST_UPDATE before INTEGRATE_END was sent: accepting it would end the
    /// protocol with part of T never integrated.
    case lastUpdateBeforeIntegrateEnd
    /// A message the receiving side cannot take in its current state.
    case unexpectedMessageToOldSide(NewToOld, state: OldSide.State)
    case unexpectedMessageToNewSide(OldToNew, state: NewSide.State)
    /// `firstAllocated(in:from:)` answered a cluster below `from`.
    case inconsistentAllocationAnswer(cluster: Int, from: Int)
    /// An input after the protocol ended.
    case protocolFinished
}

extension Geometry {
    func validate(_ request: DiskRequest) throws(DiskIntegrationError) {
        guard request.offset >= 0, request.length >= 0,
            request.offset <= diskSize, request.length <= diskSize - request.offset
        else {
            throw .requestOutOfRange(
                request.id, offset: request.offset, length: request.length, diskSize: diskSize)
        }
    }
}
