/// The allocation questions the state machines ask their caller, answered
/// from the caller's image metadata (qcow2 L1/L2 tables, or an in-memory map).
///
/// Answers must reflect every action already carried out: in particular
/// `firstAllocated(in: .T, from:)` must see clusters New_VM's writes
/// allocated in T after the sweep started (DESIGN.md, first trap). An
/// implementation that enumerates a copy of T's map taken at the start loses
/// those writes.
public protocol ClusterAllocationQuery {
    /// Does `layer` hold `cluster` now? `.B` holds every cluster.
    func holds(_ layer: Layer, cluster: Int) -> Bool
    /// The lowest cluster `>= from` that `layer` holds now, or nil.
    func firstAllocated(in layer: Layer, from: Int) -> Int?
}
