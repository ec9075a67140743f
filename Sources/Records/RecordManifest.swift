import VMStore

/// How a record was taken.
public enum Mechanism: String, Codable, Sendable, CaseIterable {
    /// Pause the guest, save memory and disk, resume (seed 001's T_cpt).
    case stopAndSave = "stop-and-save"
    /// Live-migrate to a new pinned instance while the old side serialises.
    case cevm
    /// QEMU's userfaultfd write-protect snapshot.
    case backgroundSnapshot = "background-snapshot"
}

/// `manifest.json`: what a record holds and how it was taken. Format
/// version 2 (memory as pages, `memory`); version 1 records (memory as
/// QEMU's raw stream) still load and restore. See Docs/record-format.md.
public struct RecordManifest: Codable, Sendable, Equatable {
    public static let formatName = "cevm-record"
    /// The version this cevm writes when the memory is a page image.
    public static let currentVersion = 2
    /// The versions this cevm reads.
    public static let readableVersions = 1...2

    public var format: String
    public var formatVersion: Int
    public var id: String
    public var vm: VMName
    public var createdAt: String
    public var mechanism: Mechanism
    /// The record this one's disk builds on (its backing file), if any.
    public var parent: String?
    public var spec: VMSpec
    public var qemu: QEMUInfo
    public var migration: MigrationInfo
    public var timings: Timings
    public var files: [FileEntry]
    /// nil for a VM without a disk.
    public var disk: DiskRecord?
    /// CEVM only: where New_VM and the old side ran.
    public var placement: Placement?
    /// The files outside the records tree the record needs (base image,
    /// kernel, initrd) with their identities; nil in records made before
    /// cevm kept them.
    public var external: [ExternalFile]?
    /// Format 2: the guest's memory as pages (nil in a version 1 record,
    /// whose memory file is QEMU's raw stream).
    public var memory: MemoryRecord? {
        didSet { formatVersion = memory == nil ? 1 : Self.currentVersion }
    }

    /// Version 2's memory: a page image (`MemoryImage`) and the stream's
    /// parts that are not RAM pages, kept verbatim.
    public struct MemoryRecord: Codable, Sendable, Equatable {
        public enum Kind: String, Codable, Sendable {
            /// Every page of the guest.
            case full
            /// Only pages whose content differs from the parent's chain.
            case incremental
        }

        public var kind: Kind
        /// The record whose memory image this one's builds on (its id).
        public var parent: String?
        public var layout: RAMLayout
        /// File names in the record's directory.
        public var image: String
        public var digests: String
        /// The stream up to and including the RAM setup section.
        public var prologue: String
        /// The stream's parts after the pages: commands, the RAM end
        /// section without pages, every device's state, the end.
        public var epilogue: String
        /// Pages this record stores as data / as zero; pages it leaves to
        /// its parent chain.
        public var dataPages: Int
        public var zeroPages: Int
        public var unchangedPages: Int

        public init(
            kind: Kind, parent: String?, layout: RAMLayout, image: String, digests: String, prologue: String, epilogue: String,
            dataPages: Int, zeroPages: Int, unchangedPages: Int
        ) {
            self.kind = kind
            self.parent = parent
            self.layout = layout
            self.image = image
            self.digests = digests
            self.prologue = prologue
            self.epilogue = epilogue
            self.dataPages = dataPages
            self.zeroPages = zeroPages
            self.unchangedPages = unchangedPages
        }

        /// Every file it names.
        public var fileNames: [String] { [image, digests, prologue, epilogue] }
    }

    /// The CPU sets of a CEVM checkpoint (DESIGN.md "Affinity policies").
    public struct Placement: Codable, Sendable, Equatable {
        public var policy: String
        /// New_VM's CPU set.
        public var newInstance: String
        /// The old side's: Old_VM until it ended, the tee, the integration.
        public var oldSide: String
        /// Where the migration's work ran during the pre-copy (Old_VM's
        /// migration thread, the tee, New_VM receiving), and where the guest
        /// computed on Old_VM meanwhile (nil in records made before cevm
        /// placed the pre-copy).
        public var precopy: String?
        public var oldInstance: String?
        /// What the kernel reported after pinning (sched_getaffinity /
        /// Cpus_allowed_list), per part: "New_VM", "Old_VM", "tee",
        /// "integration" after the switch-over; "migration" (Old_VM's
        /// migration threads), "precopy:Old_VM", "precopy:New_VM" during the
        /// pre-copy.
        public var observed: [String: String]?

        public init(policy: String, newInstance: String, oldSide: String) {
            self.policy = policy
            self.newInstance = newInstance
            self.oldSide = oldSide
        }
    }

    public struct QEMUInfo: Codable, Sendable, Equatable {
        public var version: String
        public var package: String

        public init(version: String, package: String) {
            self.version = version
            self.package = package
        }
    }

    public struct MigrationInfo: Codable, Sendable, Equatable {
        /// Migration parameters cevm set (e.g. max-bandwidth, downtime-limit).
        public var parameters: [String: Int64]
        public var capabilities: [String: Bool]
        /// QEMU's query-migrate figures.
        public var totalTimeMs: Double?
        public var downtimeMs: Double?
        public var streamBytes: Int64
        /// CEVM: the cap on the memory stream in pre-copy, and what cevm
        /// does when the stream passes it (`switch-over` or `cancel`).
        public var maxStreamBytes: Int64?
        public var onMaxStream: String?
        /// CEVM: present when the stream passed `maxStreamBytes` and cevm
        /// forced the switch-over.
        public var forcedSwitchOver: ForcedSwitchOver?

        /// A pre-copy that did not converge, ended by raising QEMU's
        /// `downtime-limit` so that its next round was the last.
        public struct ForcedSwitchOver: Codable, Sendable, Equatable {
            /// The stream's bytes when cevm forced it.
            public var streamBytes: Int64
            /// From the `migrate` command to forcing it.
            public var afterMs: Double
            /// The `downtime-limit` then set.
            public var downtimeLimitMs: Int64
            /// QEMU's `ram.remaining` (dirty bytes still to send) then.
            public var remainingBytes: Int64?

            public init(streamBytes: Int64, afterMs: Double, downtimeLimitMs: Int64, remainingBytes: Int64?) {
                self.streamBytes = streamBytes
                self.afterMs = afterMs
                self.downtimeLimitMs = downtimeLimitMs
                self.remainingBytes = remainingBytes
            }
        }

        public init(parameters: [String: Int64], capabilities: [String: Bool], totalTimeMs: Double?, downtimeMs: Double?, streamBytes: Int64) {
            self.parameters = parameters
            self.capabilities = capabilities
            self.totalTimeMs = totalTimeMs
            self.downtimeMs = downtimeMs
            self.streamBytes = streamBytes
        }
    }

    /// Milliseconds, measured on the host with a monotonic clock.
    public struct Timings: Codable, Sendable, Equatable {
        /// From the checkpoint request to the guest's pause (or switch-over).
        public var requestToPauseMs: Double
        /// How long the guest did not run.
        public var guestPauseMs: Double
        /// From the request to the manifest being durable.
        public var requestToDurableMs: Double
        /// Wall-clock UTC times of the pause and of the guest running again,
        /// comparable with the console log's host timestamps: a console line
        /// stamped before `resumedAt` was printed before the checkpoint.
        public var pausedAt: String
        public var resumedAt: String
        /// The longest gap between two console lines around the pause, as
        /// the host timestamped them: the pause the guest's output shows.
        public var consoleGapMs: Double?
        /// How long the guest computed while the old side still serialised
        /// (from resuming to the record being durable).
        public var overlapMs: Double?
        /// Optional phases: name → milliseconds from the request.
        public var phases: [String: Double]?
        /// What the checkpoint cost the guest, estimated from the host
        /// (nil in records made before cevm estimated it).
        public var cost: Cost?

        /// The host-side estimate of the guest's lost progress: its vCPU
        /// threads' run time over the window (request → the end of the
        /// checkpoint's work) against their rate just before the request
        /// (Docs/turnaround.md, "The host-side estimate"). Every field but
        /// `estimator` and `samples` is absent when there is no estimate;
        /// `unavailable` then says why.
        public struct Cost: Codable, Sendable, Equatable {
            /// How it was estimated (`schedstat-run-time`).
            public var estimator: String
            /// vCPU-seconds per second the guest's vCPUs ran before the request.
            public var rateBefore: Double?
            /// Seconds of guest progress lost over the window, pause included
            /// (negative when the vCPUs ran more than before).
            public var lostMs: Double?
            /// Request → the last sample.
            public var windowMs: Double?
            /// How long the rate was measured over.
            public var baselineMs: Double?
            /// Bound on run time no sample saw (vCPU threads that started or
            /// ended between two samples), in the same unit as `lostMs`.
            public var uncertaintyMs: Double?
            /// vCPU threads runnable but waiting for a CPU during the window.
            public var waitMs: Double?
            /// Samples (sweeps of every vCPU thread) used: baseline and window.
            public var samples: Int
            /// vCPU threads seen in the window (Old_VM's and New_VM's).
            public var threads: Int?
            /// Why there is no estimate.
            public var unavailable: String?

            public init(estimator: String, samples: Int) {
                self.estimator = estimator
                self.samples = samples
            }
        }

        public init(requestToPauseMs: Double, guestPauseMs: Double, requestToDurableMs: Double, pausedAt: String, resumedAt: String) {
            self.requestToPauseMs = requestToPauseMs
            self.guestPauseMs = guestPauseMs
            self.requestToDurableMs = requestToDurableMs
            self.pausedAt = pausedAt
            self.resumedAt = resumedAt
        }
    }

    public struct FileEntry: Codable, Sendable, Equatable {
        public enum Role: String, Codable, Sendable {
            case memory, disk
        }

        public var name: String
        public var role: Role
        public var size: Int64
        /// The file's SHA-256, hex. None for a version 2 page image
        /// (`MemoryRecord.image`): it is checked page by page against the
        /// record's digest file, which has one (`Record.verifyRestorable`),
        /// so a second pass over the whole image would check nothing more.
        public var sha256: String?

        public init(name: String, role: Role, size: Int64, sha256: String?) {
            self.name = name
            self.role = role
            self.size = size
            self.sha256 = sha256
        }
    }

    /// The disk record: a qcow2 overlay QEMU and qemu-img open directly.
    public struct DiskRecord: Codable, Sendable, Equatable {
        public enum Kind: String, Codable, Sendable {
            /// Every cluster written since the base image.
            case full
            /// Only clusters written since the parent record.
            case incremental
        }

        public var file: String
        public var kind: Kind
        /// The backing file as the disk's header names it: relative to the
        /// record's directory for a parent record in the same records tree
        /// ("../PARENT/disk.qcow2"), absolute for the VM's base image (and in
        /// records made before relative names). `backingPath(in:)` resolves it.
        public var backing: String
        public var backingFormat: String

        /// `backing` as a path: relative names resolve against the record's
        /// directory (where the disk file lies).
        public func backingPath(in directory: String) -> String {
            backing.hasPrefix("/") ? backing : "\(directory)/\(backing)"
        }

        public init(file: String, kind: Kind, backing: String, backingFormat: String) {
            self.file = file
            self.kind = kind
            self.backing = backing
            self.backingFormat = backingFormat
        }
    }

    public init(
        id: String, vm: VMName, createdAt: String, mechanism: Mechanism, parent: String?, spec: VMSpec,
        qemu: QEMUInfo, migration: MigrationInfo, timings: Timings, files: [FileEntry], disk: DiskRecord?
    ) {
        self.format = Self.formatName
        // Version 1 until a page image is set as `memory`.
        self.formatVersion = 1
        self.id = id
        self.vm = vm
        self.createdAt = createdAt
        self.mechanism = mechanism
        self.parent = parent
        self.spec = spec
        self.qemu = qemu
        self.migration = migration
        self.timings = timings
        self.files = files
        self.disk = disk
    }

    public func file(_ role: FileEntry.Role) -> FileEntry? { files.first { $0.role == role } }
}
