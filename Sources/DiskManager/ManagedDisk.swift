import DiskIntegration
import Dispatch
import QCOW2
import Synchronization

/// One VM disk as the disk manager serves it: plain mode (reads T, else B;
/// writes T) between checkpoints, integration mode (`Integration`) from a
/// checkpoint's switch-over until UPDATE_DONE, then plain mode on U. The
/// object stays the same across modes, so the NBD export and New_VM's
/// connection never change.
///
/// It also keeps the set of clusters written since the last cut: the
/// clusters an incremental disk record must hold.
public final class ManagedDisk: Sendable {
    enum Mode {
        case plain(QCOW2Image)
        case integrating(Integration, next: QCOW2Image)
    }

    public let virtualSize: UInt64
    public let clusterSize: UInt64
    let mode: Mutex<Mode>
    let dirty = Mutex(Set<Int>())
    /// Plain-mode I/O blocks on pread/pwrite: it runs here, never on the caller's thread.
    let io = DispatchQueue(label: "cevm-disk-io")

    public init(top: QCOW2Image) {
        virtualSize = top.virtualSize
        clusterSize = top.clusterSize
        mode = Mutex(.plain(top))
    }

    /// The image writes go to in plain mode (T; U once an integration ended).
    public var top: QCOW2Image {
        mode.withLock { mode in
            switch mode {
            case .plain(let image): image
            case .integrating(let integration, _): integration.layers.t
            }
        }
    }

    public var isIntegrating: Bool {
        mode.withLock { if case .integrating = $0 { true } else { false } }
    }

    // MARK: - Guest requests

    public func read(offset: UInt64, length: Int) async throws(DiskManagerError) -> [UInt8] {
        try check(offset, UInt64(length))
        return try await perform(
            integrating: { .read(offset: Int(offset), length: length, $0) },
            plain: { image throws(QCOW2Error) in
                try image.read(at: offset, count: length)
            })
    }

    public func write(offset: UInt64, bytes: [UInt8], fua: Bool = false) async throws(DiskManagerError) {
        try check(offset, UInt64(bytes.count))
        markDirty(offset, UInt64(bytes.count))
        _ = try await perform(
            integrating: { .write(offset: Int(offset), bytes: bytes, $0) },
            plain: { image throws(QCOW2Error) in
                try image.write(bytes, at: offset)
                return []
            })
        if fua { try await flush() }
    }

    public func writeZeroes(offset: UInt64, length: UInt64, fua: Bool = false) async throws(DiskManagerError) {
        try check(offset, length)
        markDirty(offset, length)
        _ = try await perform(
            integrating: { .writeZeroes(offset: Int(offset), length: Int(length), $0) },
            plain: { image throws(QCOW2Error) in
                try image.writeZeroes(at: offset, count: length)
                return []
            })
        if fua { try await flush() }
    }

    public func flush() async throws(DiskManagerError) {
        _ = try await perform(
            integrating: { .flush($0) },
            plain: { image throws(QCOW2Error) in
                try image.flush()
                return []
            })
    }

    private func check(_ offset: UInt64, _ length: UInt64) throws(DiskManagerError) {
        guard offset <= virtualSize, length <= virtualSize - offset else {
            throw .outOfRange(offset: offset, length: length, size: virtualSize)
        }
    }

    private func markDirty(_ offset: UInt64, _ length: UInt64) {
        guard length > 0 else { return }
        let first = Int(offset / clusterSize), last = Int((offset + length - 1) / clusterSize)
        dirty.withLock { set in for k in first...last { set.insert(k) } }
    }

    /// Routes one request to the integration, or to the plain image.
    private func perform(
        integrating make: @escaping @Sendable (@escaping Integration.Completion) -> Integration.Work,
        plain: @escaping @Sendable (QCOW2Image) throws(QCOW2Error) -> [UInt8]
    ) async throws(DiskManagerError) -> [UInt8] {
        let result: Result<[UInt8], DiskManagerError> = await withCheckedContinuation { continuation in
            while true {
                // A plain request is queued under the mode lock, so a cut
                // (which takes the lock, then drains the queue) never lets
                // one reach T after S0 was frozen.
                let integrating: (Integration, QCOW2Image)? = mode.withLock { mode in
                    switch mode {
                    case .plain(let image):
                        io.async {
                            do throws(QCOW2Error) {
                                continuation.resume(returning: .success(try plain(image)))
                            } catch {
                                continuation.resume(returning: .failure(.image(error)))
                            }
                        }
                        return nil
                    case .integrating(let integration, let next):
                        return (integration, next)
                    }
                }
                guard let pair = integrating else { return }
                let (integration, next) = pair
                if integration.submit(make({ continuation.resume(returning: $0) })) { return }
                if let failure = integration.failure {
                    // A failed integration leaves U incomplete: never serve from it.
                    continuation.resume(returning: .failure(failure))
                    return
                }
                // The integration is over: U is the plain image from now on.
                mode.withLock { mode in
                    if case .integrating(let running, _) = mode, running === integration { mode = .plain(next) }
                }
            }
        }
        return try result.get()
    }

    // MARK: - Checkpoints

    /// The cut at a checkpoint's switch-over: freezes S0 (T's clusters now),
    /// starts integrating T into `u` while requests keep being served, and
    /// writes the switch-over content to `record`. `incremental`: the record
    /// holds only the clusters written since the previous cut (its backing
    /// must be the previous record); otherwise all of S0 (backing B).
    /// Call it while nothing writes the disk (guest paused, writes drained).
    public func cut(u: QCOW2Image, record: QCOW2Image?, incremental: Bool) throws(DiskManagerError) -> Integration {
        try cut(u: u, record: record, incremental: incremental, hooks: Integration.Hooks())
    }

    func cut(u: QCOW2Image, record: QCOW2Image?, incremental: Bool, hooks: Integration.Hooks) throws(DiskManagerError) -> Integration {
        let integration: Integration = try mode.withLock { mode throws(DiskManagerError) in
            guard case .plain(let t) = mode else {
                throw .integrationFailed("a checkpoint is already integrating this disk")
            }
            // Plain-mode I/O already queued finishes on T before S0 is frozen;
            // none can be queued meanwhile (queuing takes this lock).
            io.sync {}
            let written = dirty.withLock { set in
                defer { set = [] }
                return set
            }
            let integration = try Integration(
                layers: Layers(t: t, u: u, base: t.backing, record: record), recordClusters: incremental ? written : nil,
                hooks: hooks)
            mode = .integrating(integration, next: u)
            return integration
        }
        integration.start()
        return integration
    }

    /// After `Integration.wait()`: plain mode on U (requests already switch
    /// lazily; this makes it immediate and drops the last reference to T).
    public func settle() {
        mode.withLock { mode in
            if case .integrating(let integration, let next) = mode, integration.isFinished, integration.failure == nil {
                mode = .plain(next)
            }
        }
    }
}
