import DiskIntegration
import Testing

/// The decisions, one seed line at a time, as action lists.
@Suite("Old side and New_VM's side decisions")
struct StateMachineTests {
    static func store(_ geometry: Geometry, t: [Int]) throws -> InMemoryClusterStore {
        let base = (0..<geometry.clusterCount).map { [UInt8](repeating: UInt8($0), count: geometry.clusterSize) }
        var tMap: [Int: [UInt8]] = [:]
        for k in t { tMap[k] = [UInt8](repeating: 0xA0 + UInt8(k), count: geometry.clusterSize) }
        return try InMemoryClusterStore(geometry: geometry, base: base, t: tMap)
    }

    @Test("split per cluster, with offsets in the request")
    func split() throws {
        let g = try Geometry(clusterSize: 8, clusterCount: 4)
        let spans = g.split(offset: 6, length: 12)
        #expect(spans.map(\.cluster) == [0, 1, 2])
        #expect(spans.map(\.range) == [6..<8, 0..<8, 0..<2])
        #expect(spans.map(\.requestRange) == [0..<2, 2..<10, 10..<12])
        #expect(spans.map(\.isWholeCluster) == [false, true, false])
        #expect(g.split(offset: 3, length: 0).isEmpty)
    }

    @Test("seed CP 3-4: the sweep saves S0 clusters to the record and copies T to U; CP 5-7 at EOF")
    func sweep() throws {
        let g = try Geometry(clusterSize: 4, clusterCount: 4)
        let store = try Self.store(g, t: [1, 3])
        var old = try OldSide(geometry: g, switchOverClusters: [1, 3])
        #expect(try old.sweepStep(store) == [.saveToRecord(cluster: 1, from: .T), .copyCluster(from: .T, to: .U, cluster: 1)])
        #expect(old.cursor == 1)
        #expect(try old.sweepStep(store) == [.saveToRecord(cluster: 3, from: .T), .copyCluster(from: .T, to: .U, cluster: 3)])
        #expect(try old.sweepStep(store) == [.sendToNewSide(.integrateEnd)])
        #expect(old.eofOnT)
        #expect(try old.sweepStep(store) == [])
        #expect(try old.receive(.lastUpdate, store) == [.sendToNewSide(.updateDone)])
        #expect(old.isDone)
        #expect(throws: DiskIntegrationError.protocolFinished) { try old.sweepStep(store) }
    }

    @Test("seed AD 2-5: a write spanning the cursor is split; copy before write above it")
    func writeAcrossCursor() throws {
        let g = try Geometry(clusterSize: 4, clusterCount: 4)
        let store = try Self.store(g, t: [0, 1, 2])
        var old = try OldSide(geometry: g, switchOverClusters: [0, 1, 2])
        _ = try old.sweepStep(store)  // cursor 0
        let id = RequestID(7)
        let write = DiskRequest(id: id, kind: .write, offset: 2, length: 8)  // clusters 0 (part), 1 (whole), 2 (part)
        let actions = try old.receive(.request(write), store)
        let spans = g.split(offset: 2, length: 8)
        #expect(
            actions == [
                .write(to: .U, span: spans[0], request: id),  // AD 2-3: cursor's cluster, U holds it
                .saveToRecord(cluster: 1, from: .T),  // copy before write
                .write(to: .T, span: spans[1], request: id),  // AD 5: T holds 1, no fill
                .saveToRecord(cluster: 2, from: .T),
                .write(to: .T, span: spans[2], request: id),  // partial, but T holds 2: no fill
                .sendToNewSide(.completed(id)),
            ])
    }

    @Test("partial writes into unallocated clusters fill from the layer a read would use")
    func partialFill() throws {
        let g = try Geometry(clusterSize: 4, clusterCount: 4)
        let store = try Self.store(g, t: [2])
        var old = try OldSide(geometry: g, switchOverClusters: [2])
        _ = try old.sweepStep(store)  // cursor 2
        let below = DiskRequest(id: RequestID(1), kind: .write, offset: 1, length: 2)  // cluster 0, not in U
        #expect(
            try old.receive(.request(below), store) == [
                .copyCluster(from: .B, to: .U, cluster: 0),  // AD 9: U, else B
                .write(to: .U, span: g.split(offset: 1, length: 2)[0], request: RequestID(1)),
                .sendToNewSide(.completed(RequestID(1))),
            ])
        let above = DiskRequest(id: RequestID(2), kind: .write, offset: 13, length: 2)  // cluster 3, T did not hold it
        #expect(
            try old.receive(.request(above), store) == [
                .copyCluster(from: .B, to: .T, cluster: 3),  // AD 11: T, else U, else B
                .write(to: .T, span: g.split(offset: 13, length: 2)[0], request: RequestID(2)),
                .sendToNewSide(.completed(RequestID(2))),
            ])
    }

    @Test("seed AD 8-11: where reads come from")
    func reads() throws {
        let g = try Geometry(clusterSize: 4, clusterCount: 4)
        let store = try Self.store(g, t: [1, 2])
        var old = try OldSide(geometry: g, switchOverClusters: [1, 2])
        _ = try old.sweepStep(store)  // cursor 1
        let id = RequestID(3)
        let actions = try old.receive(.request(DiskRequest(id: id, kind: .read, offset: 0, length: 16)), store)
        let spans = g.split(offset: 0, length: 16)
        #expect(
            actions == [
                .read(from: .B, span: spans[0], request: id),  // AD 9: below cursor, not in U: B
                .read(from: .U, span: spans[1], request: id),  // AD 9: U
                .read(from: .T, span: spans[2], request: id),  // AD 11: T
                .read(from: .B, span: spans[3], request: id),  // AD 11: not T, not U: B
                .sendToNewSide(.completed(id)),
            ])
    }

    @Test("New_VM's side: LAST_UPDATE only after INTEGRATE_END with nothing in flight; holds, then plain mode")
    func newSide() throws {
        let g = try Geometry(clusterSize: 4, clusterCount: 2)
        let store = try Self.store(g, t: [])
        var new = NewSide(geometry: g)
        let r1 = DiskRequest(id: RequestID(1), kind: .read, offset: 0, length: 4)
        #expect(try new.submit(r1, store) == [.sendToOldSide(.request(r1))])
        #expect(try new.receive(.integrateEnd, store) == [])  // r1 in flight
        #expect(try new.receive(.completed(RequestID(1)), store) == [.complete(RequestID(1)), .sendToOldSide(.lastUpdate)])
        #expect(new.state == .lastUpdateSent)
        let w = DiskRequest(id: RequestID(2), kind: .write, offset: 1, length: 2)
        #expect(try new.submit(w, store) == [])  // held
        let span = g.split(offset: 1, length: 2)[0]
        #expect(
            try new.receive(.updateDone, store) == [
                .copyCluster(from: .B, to: .U, cluster: 0), .write(to: .U, span: span, request: RequestID(2)),
                .complete(RequestID(2)),
            ])
        #expect(new.state == .plain)
    }

    @Test("errors: out-of-range requests, early LAST_UPDATE, unknown completions, duplicate ids")
    func errors() throws {
        #expect(throws: DiskIntegrationError.invalidGeometry(clusterSize: 0, clusterCount: 1)) {
            try Geometry(clusterSize: 0, clusterCount: 1)
        }
        let g = try Geometry(clusterSize: 4, clusterCount: 2)
        let store = try Self.store(g, t: [0])
        #expect(throws: DiskIntegrationError.clusterOutOfRange(cluster: 5, clusterCount: 2)) {
            try OldSide(geometry: g, switchOverClusters: [5])
        }
        var old = try OldSide(geometry: g, switchOverClusters: [0])
        let bad = DiskRequest(id: RequestID(1), kind: .read, offset: 6, length: 4)
        #expect(throws: DiskIntegrationError.requestOutOfRange(RequestID(1), offset: 6, length: 4, diskSize: 8)) {
            try old.receive(.request(bad), store)
        }
        #expect(throws: DiskIntegrationError.lastUpdateBeforeIntegrateEnd) { try old.receive(.lastUpdate, store) }
        var new = NewSide(geometry: g)
        #expect(throws: DiskIntegrationError.unknownCompletion(RequestID(9))) {
            try new.receive(.completed(RequestID(9)), store)
        }
        let r = DiskRequest(id: RequestID(2), kind: .read, offset: 0, length: 1)
        _ = try new.submit(r, store)
        #expect(throws: DiskIntegrationError.duplicateRequest(RequestID(2))) { try new.submit(r, store) }
        #expect(throws: DiskIntegrationError.self) { try new.receive(.updateDone, store) }
    }

    @Test("the reference store is strict")
    func strictStore() throws {
        let g = try Geometry(clusterSize: 4, clusterCount: 2)
        var store = try Self.store(g, t: [0])
        var replies: [RequestID: [UInt8]] = [:]
        let span = g.split(offset: 5, length: 2)[0]
        #expect(throws: InMemoryClusterStore.Error.partialWriteToUnallocated(.U, cluster: 1)) {
            try store.perform(.write(to: .U, span: span, request: RequestID(1)), payloads: [RequestID(1): [1, 2]], replies: &replies)
        }
        #expect(throws: InMemoryClusterStore.Error.doesNotHold(.U, cluster: 0)) {
            try store.perform(.copyCluster(from: .U, to: .T, cluster: 0), payloads: [:], replies: &replies)
        }
        try store.perform(.saveToRecord(cluster: 0, from: .T), payloads: [:], replies: &replies)
        #expect(throws: InMemoryClusterStore.Error.recordSavedTwice(cluster: 0)) {
            try store.perform(.saveToRecord(cluster: 0, from: .T), payloads: [:], replies: &replies)
        }
    }
}
