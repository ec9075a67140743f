/// What an export can do; decides the transmission flags it is advertised
/// with and which commands reach it.
public struct NBDExportCapabilities: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// Writes, trims and write-zeroes are refused with `NBD_EPERM`.
    public static let readOnly = NBDExportCapabilities(rawValue: 1 << 0)
    /// `NBD_CMD_FLUSH` is offered.
    public static let flush = NBDExportCapabilities(rawValue: 1 << 1)
    /// `NBD_CMD_FLAG_FUA` is offered: the export makes a write durable before
    /// completing it when asked.
    public static let fua = NBDExportCapabilities(rawValue: 1 << 2)
    /// `NBD_CMD_TRIM` is offered (writable exports only).
    public static let trim = NBDExportCapabilities(rawValue: 1 << 3)
    /// `NBD_CMD_WRITE_ZEROES` is offered (writable exports only).
    public static let writeZeroes = NBDExportCapabilities(rawValue: 1 << 4)
    /// `NBD_FLAG_CAN_MULTI_CONN`: the export has no per-connection cache, so a
    /// flush on one connection covers writes completed on every connection.
    public static let multiConnection = NBDExportCapabilities(rawValue: 1 << 5)

    /// A writable export with every optional command.
    public static let writable: NBDExportCapabilities = [.flush, .fua, .trim, .writeZeroes, .multiConnection]
}

/// One export as the handshake advertises it.
public struct NBDExportInfo: Sendable, Hashable {
    /// The name clients ask for (at most 4096 bytes of UTF-8, no NUL).
    public var name: String
    /// Free text shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    public var description: String
    /// Size in bytes.
    public var size: UInt64
    public var capabilities: NBDExportCapabilities

    public init(name: String, description: String = "", size: UInt64, capabilities: NBDExportCapabilities) {
        self.name = name
        self.description = description
        self.size = size
        self.capabilities = capabilities
    }

    /// The flags sent with the size: trim and write-zeroes are only offered
    /// on writable exports.
    public var transmissionFlags: NBDTransmissionFlags {
        var flags: NBDTransmissionFlags = .hasFlags
        let writable = !capabilities.contains(.readOnly)
        if !writable { flags.insert(.readOnly) }
        if capabilities.contains(.flush) { flags.insert(.sendFlush) }
        if capabilities.contains(.fua) { flags.insert(.sendFUA) }
        if writable, capabilities.contains(.trim) { flags.insert(.sendTrim) }
        if writable, capabilities.contains(.writeZeroes) { flags.insert(.sendWriteZeroes) }
        if capabilities.contains(.multiConnection) { flags.insert(.canMultiConn) }
        return flags
    }

    /// Why `name` cannot name an export, or nil when it can.
    public static func problem(withName name: String) -> String? {
        let bytes = Array(name.utf8)
        if case .failure(let problem) = decodeString(bytes) { return "export name \(problem)" }
        return nil
    }
}

/// The exports a handshake can choose from, by name. The empty name is an
/// ordinary key: an export registered as "" is the default export.
public struct NBDCatalog: Sendable, Hashable {
    public private(set) var exports: [String: NBDExportInfo]

    public init(_ exports: [NBDExportInfo] = []) {
        self.exports = [:]
        for export in exports { self.exports[export.name] = export }
    }

    public subscript(name: String) -> NBDExportInfo? { exports[name] }

    /// Adds or replaces the export with `info.name`.
    public mutating func insert(_ info: NBDExportInfo) { exports[info.name] = info }

    @discardableResult
    public mutating func remove(_ name: String) -> NBDExportInfo? { exports.removeValue(forKey: name) }

    /// Every export, by name in byte order (the order of `NBD_OPT_LIST`).
    public var sorted: [NBDExportInfo] {
        exports.values.sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
    }
}

/// What the handshake agreed on: the transmission phase runs with this.
public struct NBDSession: Sendable, Hashable {
    /// The export chosen, as advertised (size and flags are fixed for the connection).
    public var export: NBDExportInfo
    public var clientFlags: NBDClientFlags
    public var blockSizes: NBDBlockSizes
    /// The client asked for `NBD_INFO_BLOCK_SIZE` in its `NBD_OPT_GO`, so it
    /// promised to honour `blockSizes`.
    public var clientHonoursBlockSizes: Bool
    /// Bytes the client sent before its first transmission request.
    public var streamOffset: UInt64

    public init(
        export: NBDExportInfo, clientFlags: NBDClientFlags, blockSizes: NBDBlockSizes,
        clientHonoursBlockSizes: Bool, streamOffset: UInt64
    ) {
        self.export = export
        self.clientFlags = clientFlags
        self.blockSizes = blockSizes
        self.clientHonoursBlockSizes = clientHonoursBlockSizes
        self.streamOffset = streamOffset
    }
}
