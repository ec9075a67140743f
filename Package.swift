// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "cevm",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cevm", targets: ["cevm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.14.0"),
    ],
    targets: [
        // Thin executable: everything lives in CEVMCommands.
        .executableTarget(name: "cevm", dependencies: ["CEVMCommands"], swiftSettings: strict),

        // C macros Swift cannot import (CPU_SET, posix_spawn flags).
        .target(name: "CSystemShims"),
        // Syscall wrappers: spawn, wait, signals, affinity, durable files.
        .target(name: "CEVMSystem", dependencies: ["CSystemShims"], swiftSettings: strict),
        // QEMU Machine Protocol client over a Unix socket.
        .target(
            name: "QMP",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            exclude: ["README.md"],
            swiftSettings: strict),
        // One QEMU process: argv, spawn, QMP session, pinning, teardown, KVM probe.
        .target(name: "QEMU", dependencies: ["QMP", "CEVMSystem"], swiftSettings: strict),
        // $CEVM_HOME layout, VM names, specs and status files.
        .target(name: "VMStore", dependencies: ["CEVMSystem"], swiftSettings: strict),
        // Checkpoint records: manifest format v1, atomic commit, verification.
        .target(
            name: "Records",
            dependencies: ["CEVMSystem", "VMStore", "QCOW2", "MigrationStream", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict),
        // The checkpoint mechanisms as pure phase machines (no dependencies).
        .target(name: "CheckpointProtocol", exclude: ["README.md"], swiftSettings: strict),
        // The control socket's protocol: messages, validation, client and server (CLI and supervisor).
        .target(
            name: "Control",
            dependencies: [
                "CEVMSystem", "Records", "VMStore", "QMP",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            exclude: ["README.md"],
            swiftSettings: strict),
        // The per-VM supervisor: owns the instance, console log, control socket.
        .target(
            name: "Supervisor",
            dependencies: [
                "CheckpointProtocol", "Control", "QEMU", "VMStore", "CEVMSystem", "CSystemShims", "Records", "DiskManager", "DiskExportNBD", "NBDServer", "QCOW2", "Turnaround",
                "GuestCost",
                "NetSwitchControl",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // CEVM_FAULT (fault injection) exists in debug builds only.
            swiftSettings: strict + [.define("CEVM_FAULT_INJECTION", .when(configuration: .debug))]),
        // qcow2 images read and written cluster by cluster (no dependencies).
        .target(name: "QCOW2", exclude: ["README.md"], swiftSettings: strict),
        // Independent readers used as oracles and by `cevm disk verify` / `cevm inspect`.
        .systemLibrary(name: "CLibQcow", pkgConfig: "libqcow", providers: [.apt(["libqcow-dev"])]),
        .systemLibrary(name: "CGuestfs", pkgConfig: "libguestfs", providers: [.apt(["libguestfs-dev"])]),
        .target(name: "DiskTools", dependencies: ["QCOW2", "CLibQcow", "CGuestfs", "CEVMSystem"], swiftSettings: strict),
        // The seed's integration and AccessDisk protocols as pure state machines.
        .target(name: "DiskIntegration", exclude: ["README.md"], swiftSettings: strict),
        // NBD wire protocol: pure decoders/encoders and the handshake machine (no dependencies).
        .target(name: "NBDProtocol", exclude: ["README.md"], swiftSettings: strict),
        // QEMU's pre-copy migration stream: a push parser and a rebuilder (no dependencies).
        .target(name: "MigrationStream", exclude: ["README.md"], swiftSettings: strict),
        // NBD server over SwiftNIO: exports, connections, Unix sockets only.
        .target(
            name: "NBDServer",
            dependencies: [
                "NBDProtocol", "CEVMSystem",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict),
        // The disk manager: VM disks as layered qcow2, the integration protocol run on them (no NBD, no NIO).
        .target(name: "DiskManager", dependencies: ["QCOW2", "DiskIntegration", "CEVMSystem"], swiftSettings: strict),
        // A ManagedDisk as an NBD export: the adapter between the disk manager and the NBD server.
        .target(
            name: "DiskExportNBD",
            dependencies: [
                "DiskManager", "NBDProtocol", "NBDServer", "QCOW2",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict),
        // The turnaround model of seed 001: fits, predictions, intervals, plots (pure).
        .target(name: "Turnaround", exclude: ["README.md"], swiftSettings: strict),
        // A checkpoint's cost to the guest estimated from vCPU schedstat samples (pure, no dependencies).
        .target(name: "GuestCost", exclude: ["README.md"], swiftSettings: strict),
        // The turnaround report rendered: a terminal table and an SVG plot.
        .target(name: "TurnaroundReport", dependencies: ["Turnaround"], swiftSettings: strict),
        // The benchmark drivers behind `cevm bench`: runners, measurements, reports (no ArgumentParser).
        .target(
            name: "CEVMBench",
            dependencies: [
                "CEVMSystem", "Control", "QEMU", "QMP", "Records", "Supervisor", "VMStore", "DiskExportNBD", "DiskManager", "NBDServer",
                "QCOW2", "Turnaround", "TurnaroundReport",
            ],
            exclude: ["README.md"],
            swiftSettings: strict),
        // Command-line commands, one file per subcommand (`cevm bench`'s parse options and call CEVMBench).
        .target(
            name: "CEVMCommands",
            dependencies: [
                "Supervisor", "Control", "QEMU", "VMStore", "CEVMSystem", "Records", "QCOW2", "DiskTools", "DiskManager", "DiskExportNBD", "Turnaround",
                "TurnaroundReport", "CEVMBench", "NetSwitchControl", "NetSwitchServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            // CEVM_GROUP_FAULT (the group coordinator's fault injection) exists in debug builds only.
            swiftSettings: strict + [.define("CEVM_FAULT_INJECTION", .when(configuration: .debug))]),
        // A measurement tool, not shipped: depth-1 NBD latency around disk cuts (Docs/benchmarks.md).
        .executableTarget(
            name: "disk-cut-latency",
            dependencies: ["DiskManager", "DiskExportNBD", "NBDServer", "QCOW2"],
            path: "Sources/DiskCutLatency",
            swiftSettings: strict),
        // A measurement tool, not shipped: the version 2 page recorder alone, stage by stage (Docs/benchmarks.md).
        .executableTarget(
            name: "record-replay",
            dependencies: ["CEVMSystem", "MigrationStream", "Records", .product(name: "Crypto", package: "swift-crypto")],
            path: "Sources/RecordReplay",
            swiftSettings: strict),

        // Helpers shared by the test targets (scratch directories, qemu-img oracles).
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "CEVMSystemTests", dependencies: ["CEVMSystem"], swiftSettings: strict),
        .testTarget(
            name: "QMPTests",
            dependencies: ["QMP", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")],
            swiftSettings: strict),
        .testTarget(name: "QEMUTests", dependencies: ["QEMU", "QMP", "CEVMSystem", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "VMStoreTests", dependencies: ["VMStore"], swiftSettings: strict),
        .testTarget(name: "RecordsTests", dependencies: ["Records", "VMStore", "CEVMSystem", "QCOW2", "MigrationStream", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "QCOW2Tests", dependencies: ["QCOW2", "DiskTools", "CEVMSystem", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "DiskIntegrationTests", dependencies: ["DiskIntegration", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "NBDTests",
            dependencies: [
                "NBDProtocol", "NBDServer", "QCOW2", "CEVMSystem",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "MigrationStreamTests", dependencies: ["MigrationStream", "QEMU", "QMP", "CEVMSystem", "Records"], swiftSettings: strict),
        .testTarget(
            name: "DiskManagerTests",
            dependencies: [
                "DiskManager", "DiskExportNBD", "DiskIntegration", "QCOW2", "CEVMSystem", "TestSupport", "NBDProtocol", "NBDServer",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strict),
        .testTarget(name: "SupervisorTests", dependencies: ["Supervisor", "CheckpointProtocol", "Control", "CEVMSystem", "Records", "VMStore", "QCOW2", "QEMU", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "CheckpointProtocolTests", dependencies: ["CheckpointProtocol"], swiftSettings: strict),
        .testTarget(name: "GuestCostTests", dependencies: ["GuestCost"], swiftSettings: strict),
        .testTarget(name: "TurnaroundTests", dependencies: ["Turnaround", "TurnaroundReport", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "CEVMCommandsTests", dependencies: ["CEVMCommands", "VMStore"], swiftSettings: strict),
        .testTarget(name: "CEVMBenchTests", dependencies: ["CEVMBench", "CEVMSystem", "Records", "VMStore"], swiftSettings: strict),
        .testTarget(name: "IntegrationTests", dependencies: ["CEVMSystem", "VMStore", "Records", "TestSupport"], swiftSettings: strict),

        // cevm networks: the switch as a pure value (learning, flooding, bounds, checkpoint holds; no dependencies).
        .target(name: "NetSwitch", exclude: ["README.md"], swiftSettings: strict),
        .testTarget(name: "NetSwitchTests", dependencies: ["NetSwitch"], swiftSettings: strict),
        // The switch's control protocol, network names and paths, and a blocking client (CLI and supervisor).
        .target(name: "NetSwitchControl", dependencies: ["CEVMSystem"], exclude: ["README.md"], swiftSettings: strict),
        // The switch process: the NetSwitch value driven over socket pairs with SwiftNIO, and its control socket.
        .target(
            name: "NetSwitchServer",
            dependencies: [
                "NetSwitch", "NetSwitchControl", "CEVMSystem",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "NetSwitchServerTests",
            dependencies: ["NetSwitchServer", "NetSwitchControl", "NetSwitch", "CEVMSystem", "TestSupport"],
            swiftSettings: strict),
    ]
)
