import Records
import Testing

/// Checkpoints taken without retention must not grow a memory chain until
/// nothing can open it: a record whose parent's chain is at
/// `MemoryChain.maxIncrementalDepth` is written full.
@Suite struct ChainDepthTests {
    @Test func aChainAtTheBoundMakesTheNextRecordFull() throws {
        let tree = try V2Tree()
        var last = try tree.make(id: "20260101-000000-a000", parent: nil, pages: [0: V2Tree.content(0)])
        for depth in 2...MemoryChain.maxIncrementalDepth {
            let next = PageRecorder.Parent.forNextRecord(after: last.directory)
            #expect(next.whyFull == nil, "a chain of \(depth - 1) records takes one more increment")
            #expect(next.parent?.id == last.id)
            last = try tree.make(id: "20260101-000000-a\(String(format: "%03d", depth))", parent: last, pages: [depth: V2Tree.content(depth)])
        }
        #expect(try MemoryChain(last).records.count == MemoryChain.maxIncrementalDepth)
        let next = PageRecorder.Parent.forNextRecord(after: last.directory)
        #expect(next.parent == nil)
        #expect(next.whyFull?.contains("holds \(MemoryChain.maxIncrementalDepth) records") == true, "\(next.whyFull ?? "")")
        #expect(MemoryChain.maxIncrementalDepth < MemoryChain.maxDepth)
    }

    @Test func anUnreadablePreviousRecordMakesTheNextRecordFull() throws {
        let tree = try V2Tree()
        let next = PageRecorder.Parent.forNextRecord(after: "\(tree.tree)/missing")
        #expect(next.parent == nil)
        #expect(next.whyFull?.contains("cannot be a memory parent") == true, "\(next.whyFull ?? "")")
    }
}
