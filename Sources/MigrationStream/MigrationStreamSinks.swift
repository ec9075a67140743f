/// Keeps a stream the way a version-2 record does: the prologue and the
/// epilogue verbatim, the live framing counted and dropped, and for every
/// page the last version sent. Holds every page in memory: for tests,
/// tools and small guests; a record writer keeps pages its own way.
public struct MigrationStreamRecorder: MigrationStreamSink, Sendable {
    public var prologue: [UInt8] = []
    public var epilogue: [UInt8] = []
    /// Bytes of PART section framing (headers, EOS, footers), dropped.
    public var liveBytes = 0
    public var blocks: [MigrationStream.Block] = []
    public var pages: [MigrationStream.PageKey: MigrationStream.PageData] = [:]
    /// Page records seen (data and zero), repeats included.
    public var dataRecords = 0
    public var zeroRecords = 0

    public init() {}

    public mutating func verbatim(_ bytes: UnsafeRawBufferPointer, region: MigrationStream.Region) {
        switch region {
        case .prologue: prologue.append(contentsOf: bytes)
        case .live: liveBytes += bytes.count
        case .epilogue: epilogue.append(contentsOf: bytes)
        }
    }

    public mutating func blocks(_ blocks: [MigrationStream.Block]) { self.blocks = blocks }

    public mutating func page(block: Int, offset: UInt64, content: MigrationStream.PageContent) {
        switch content {
        case .zero: zeroRecords += 1
        case .data: dataRecords += 1
        }
        pages[.init(block: block, offset: offset)] = .init(content)
    }
}

/// Every event as an owned value, adjacent verbatim bytes of one region
/// merged, so that two logs of one stream fed in different chunks compare
/// equal.
public struct MigrationStreamEventLog: MigrationStreamSink, Sendable {
    public enum Event: Sendable, Hashable {
        case verbatim([UInt8], MigrationStream.Region)
        case blocks([MigrationStream.Block])
        case page(block: Int, offset: UInt64, MigrationStream.PageData)
    }

    /// The events so far, the verbatim bytes still being merged included.
    public var events: [Event] {
        guard let region = pendingRegion else { return closed }
        return closed + [.verbatim(pending, region)]
    }

    private var closed: [Event] = []
    private var pending: [UInt8] = []
    private var pendingRegion: MigrationStream.Region?

    public init() {}

    public mutating func verbatim(_ bytes: UnsafeRawBufferPointer, region: MigrationStream.Region) {
        if pendingRegion != region { close() }
        pendingRegion = region
        pending.append(contentsOf: bytes)
    }

    private mutating func close() {
        if let region = pendingRegion { closed.append(.verbatim(pending, region)) }
        pending = []
        pendingRegion = nil
    }

    public mutating func blocks(_ blocks: [MigrationStream.Block]) {
        close()
        closed.append(.blocks(blocks))
    }

    public mutating func page(block: Int, offset: UInt64, content: MigrationStream.PageContent) {
        close()
        closed.append(.page(block: block, offset: offset, .init(content)))
    }
}

extension MigrationStreamParser {
    /// Parses a whole stream in one go (tests, tools).
    public static func parse<S: MigrationStreamSink>(
        _ stream: [UInt8], pageSize: Int = 4096, into sink: inout S
    ) throws(MigrationStreamError) {
        var parser = MigrationStreamParser(pageSize: pageSize)
        try parser.consume(stream, into: &sink)
        try parser.finish()
    }

    /// Feeds an array's bytes.
    public mutating func consume<S: MigrationStreamSink>(_ bytes: [UInt8], into sink: inout S) throws(MigrationStreamError) {
        var failure: MigrationStreamError?
        bytes.withUnsafeBytes { b in
            do throws(MigrationStreamError) { try consume(b, into: &sink) } catch { failure = error }
        }
        if let failure { throw failure }
    }
}
