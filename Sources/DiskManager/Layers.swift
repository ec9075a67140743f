import DiskIntegration
import QCOW2

/// The images one integration works on: T (the old overlay), U (the new one),
/// B (what both are layered over) and R (the disk record being written).
/// T and U share one reader of B, so "B's content" is the same bytes for both.
public struct Layers: @unchecked Sendable {
    // @unchecked: QCOW2Image and BlockReader are Sendable (one mutex per image);
    // the existential `any BlockReader` is, too — the struct only holds them.
    public let t: QCOW2Image
    public let u: QCOW2Image
    public let base: (any BlockReader)?
    public let record: QCOW2Image?

    public init(t: QCOW2Image, u: QCOW2Image, base: (any BlockReader)?, record: QCOW2Image?) {
        self.t = t
        self.u = u
        self.base = base
        self.record = record
    }

    var clusterSize: Int { Int(t.clusterSize) }
    var virtualSize: UInt64 { t.virtualSize }

    /// Reads `buffer.count` bytes of one layer at `offset`. A layer's own
    /// read goes through its backing chain, which is what the protocol
    /// means: the machines only ask T or U for clusters they hold.
    func read(_ layer: Layer, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        switch layer {
        case .T: try t.read(into: buffer, at: offset)
        case .U: try u.read(into: buffer, at: offset)
        case .B:
            if let base {
                try base.read(into: buffer, at: offset)
            } else if let start = buffer.baseAddress {
                start.initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count)
            }
        }
    }

    func write(_ layer: Layer, _ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(QCOW2Error) {
        switch layer {
        case .T: try t.write(buffer, at: offset)
        case .U: try u.write(buffer, at: offset)
        case .B: throw .readOnly(path: base?.path ?? "B", reason: "the integration never writes B")
        }
    }

    /// Reads layer bytes into `array[range]`.
    func read(_ layer: Layer, into array: inout [UInt8], _ range: Range<Int>, at offset: UInt64) throws(DiskManagerError) {
        var failure: QCOW2Error?
        array.withUnsafeMutableBytes { buffer in
            do throws(QCOW2Error) {
                try read(layer, into: UnsafeMutableRawBufferPointer(rebasing: buffer[range]), at: offset)
            } catch { failure = error }
        }
        if let failure { throw .image(failure) }
    }

    /// Writes `array[range]` into a layer.
    func write(_ layer: Layer, _ array: [UInt8], _ range: Range<Int>, at offset: UInt64) throws(DiskManagerError) {
        var failure: QCOW2Error?
        array.withUnsafeBytes { buffer in
            do throws(QCOW2Error) {
                try write(layer, UnsafeRawBufferPointer(rebasing: buffer[range]), at: offset)
            } catch { failure = error }
        }
        if let failure { throw .image(failure) }
    }

    /// Writes `array[range]` into an image (the record).
    static func write(_ image: QCOW2Image, _ array: [UInt8], _ range: Range<Int>, at offset: UInt64) throws(DiskManagerError) {
        var failure: QCOW2Error?
        array.withUnsafeBytes { buffer in
            do throws(QCOW2Error) {
                try image.write(UnsafeRawBufferPointer(rebasing: buffer[range]), at: offset)
            } catch { failure = error }
        }
        if let failure { throw .image(failure) }
    }

    /// Zeroes `count` bytes of a layer (T or U) at `offset`: the qcow2
    /// engine makes whole clusters zero clusters (T or U then holds them,
    /// as after a write, unless the cluster already read as zeros with no
    /// backing file below) and writes zeros into partial ones from one
    /// cluster-sized buffer.
    func writeZeroes(_ layer: Layer, at offset: UInt64, count: Int) throws(DiskManagerError) {
        let image: QCOW2Image
        switch layer {
        case .T: image = t
        case .U: image = u
        case .B: throw .image(.readOnly(path: base?.path ?? "B", reason: "the integration never writes B"))
        }
        try Self.writeZeroes(image, at: offset, count: count)
    }

    /// Zeroes bytes of an image (the record).
    static func writeZeroes(_ image: QCOW2Image, at offset: UInt64, count: Int) throws(DiskManagerError) {
        do throws(QCOW2Error) { try image.writeZeroes(at: offset, count: UInt64(count)) } catch { throw .image(error) }
    }

    /// True when the layer holds the cluster as a zero cluster (B: never
    /// asked; it is read).
    func isZeroCluster(_ layer: Layer, _ cluster: Int) throws(DiskManagerError) -> Bool {
        let image: QCOW2Image
        switch layer {
        case .B: return false
        case .T: image = t
        case .U: image = u
        }
        do throws(QCOW2Error) {
            if case .zero = try image.clusterState(UInt64(cluster)) { return true }
            return false
        } catch {
            throw .image(error)
        }
    }

    /// The byte range of a cluster that lies inside the disk (the last
    /// cluster may be partial).
    func extent(ofCluster k: Int) -> (offset: UInt64, count: Int) {
        let offset = UInt64(k) * UInt64(clusterSize)
        let count = Int(min(UInt64(clusterSize), virtualSize - min(offset, virtualSize)))
        return (offset, count)
    }
}

/// Allocation answers for the state machines, read from the live qcow2
/// tables (so clusters allocated after a sweep began are seen).
struct LiveAllocation: ClusterAllocationQuery {
    let layers: Layers
    /// The first error a query met; the driver checks it after every input.
    var failure: QCOW2Error? { box.failure }
    let box = FailureBox()

    final class FailureBox: @unchecked Sendable {
        // Only touched on the integration's own thread.
        var failure: QCOW2Error?
    }

    func holds(_ layer: Layer, cluster: Int) -> Bool {
        let image: QCOW2Image
        switch layer {
        case .B: return true
        case .T: image = layers.t
        case .U: image = layers.u
        }
        do throws(QCOW2Error) {
            if case .unallocated = try image.clusterState(UInt64(cluster)) { return false }
            return true
        } catch {
            box.failure = box.failure ?? error
            return false
        }
    }

    func firstAllocated(in layer: Layer, from: Int) -> Int? {
        let image: QCOW2Image
        switch layer {
        case .B: return from
        case .T: image = layers.t
        case .U: image = layers.u
        }
        do throws(QCOW2Error) {
            return try image.nextAllocatedCluster(atOrAfter: UInt64(from)).map { Int($0) }
        } catch {
            box.failure = box.failure ?? error
            return nil
        }
    }
}
