/// A request that passed validation: what to do to the export.
public enum NBDCommand: Sendable, Hashable {
    case read(offset: UInt64, length: Int)
    case write(offset: UInt64, length: Int, fua: Bool)
    case flush
    case trim(offset: UInt64, length: Int, fua: Bool)
    /// `mayTrim` is false when the client set `NBD_CMD_FLAG_NO_HOLE`.
    case writeZeroes(offset: UInt64, length: Int, fua: Bool, mayTrim: Bool)
    /// `NBD_CMD_DISC`: finish what is in flight, send no reply, close.
    case disconnect
}

/// The decision on one request.
public enum NBDVerdict: Sendable, Hashable {
    /// Carry the command out and reply with its result.
    case perform(NBDCommand)
    /// A zero-length READ, WRITE, TRIM or WRITE_ZEROES within bounds: reply
    /// success (a READ with no data) without touching the export.
    case succeed
    /// Reply with this error (a READ gets no data); the text, for the log, says why.
    case reject(NBDErrno, String)
}

extension NBDSession {
    /// Decides what to do with `request`, in this order (proto.md "Request
    /// types", "Error values", "Size constraints"):
    ///
    /// 1. unknown or unnegotiated command (CACHE, BLOCK_STATUS, ...) → EINVAL;
    ///    DISC → disconnect, whatever its other fields;
    /// 2. a flag not valid for the command, FUA not offered → EINVAL;
    /// 3. WRITE, TRIM, WRITE_ZEROES on a read-only export → EPERM;
    /// 4. FLUSH, TRIM, WRITE_ZEROES not offered → EINVAL; FLUSH with a
    ///    non-zero offset or length → EINVAL;
    /// 5. READ or WRITE longer than the maximum payload → EINVAL;
    /// 6. offset or length not a multiple of the minimum block size → EINVAL;
    /// 7. past the end of the export (offset + length computed without
    ///    overflow) → ENOSPC for WRITE and WRITE_ZEROES, EINVAL otherwise;
    /// 8. zero length → success without I/O.
    public func validate(_ request: NBDRequest) -> NBDVerdict {
        let capabilities = export.capabilities
        let type = request.type
        let known: [NBDCommandType] = [.read, .write, .flush, .trim, .writeZeroes]
        if type == .disconnect { return .perform(.disconnect) }
        guard known.contains(type) else {
            return .reject(.invalid, "\(type) is not supported")
        }

        var allowed: NBDCommandFlags = capabilities.contains(.fua) ? .fua : []
        if type == .writeZeroes { allowed.insert(.noHole) }
        let extra = request.flags.subtracting(allowed)
        guard extra.isEmpty else {
            return .reject(.invalid, "flags 0x\(hex(extra.rawValue)) are not valid for \(type)")
        }

        let writes = type == .write || type == .trim || type == .writeZeroes
        if writes, capabilities.contains(.readOnly) {
            return .reject(.notPermitted, "\(type) on read-only export '\(printable(export.name))'")
        }
        switch type {
        case .flush:
            guard capabilities.contains(.flush) else { return .reject(.invalid, "NBD_CMD_FLUSH was not offered") }
            guard request.offset == 0, request.length == 0 else {
                return .reject(.invalid, "NBD_CMD_FLUSH with offset 0x\(hex(request.offset)) length \(request.length)")
            }
            return .perform(.flush)
        case .trim where !capabilities.contains(.trim), .writeZeroes where !capabilities.contains(.writeZeroes):
            return .reject(.invalid, "\(type) was not offered")
        case .read, .write:
            guard request.length <= blockSizes.maximum else {
                return .reject(.invalid, "\(type) of \(request.length) bytes exceeds the maximum payload \(blockSizes.maximum)")
            }
        default:
            break
        }

        let minimum = UInt64(blockSizes.minimum)
        guard request.offset % minimum == 0, UInt64(request.length) % minimum == 0 else {
            return .reject(
                .invalid,
                "\(type) at 0x\(hex(request.offset)) length \(request.length) is not aligned to \(minimum) bytes")
        }
        let size = export.size
        guard request.offset <= size, UInt64(request.length) <= size - request.offset else {
            let errno: NBDErrno = type == .write || type == .writeZeroes ? .noSpace : .invalid
            return .reject(
                errno,
                "\(type) at 0x\(hex(request.offset)) length \(request.length) is past the end of the export (size 0x\(hex(size)))")
        }
        guard request.length > 0 else { return .succeed }

        let offset = request.offset
        let length = Int(request.length)
        let fua = request.flags.contains(.fua)
        switch type {
        case .read: return .perform(.read(offset: offset, length: length))
        case .write: return .perform(.write(offset: offset, length: length, fua: fua))
        case .trim: return .perform(.trim(offset: offset, length: length, fua: fua))
        default:
            return .perform(
                .writeZeroes(offset: offset, length: length, fua: fua, mayTrim: !request.flags.contains(.noHole)))
        }
    }
}
