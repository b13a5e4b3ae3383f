// An NBD client for the simulation: the fixed newstyle handshake with NBD_OPT_GO (no structured replies), then
// NBD_CMD_READ, NBD_CMD_WRITE and NBD_CMD_FLUSH under cookies, answered by simple replies.

import DeterministicRandom
@testable import Target
@testable import Store
@testable import SCSI
@testable import ISCSI
@testable import NBD
@testable import Reactor

final class SimNBDClient: SimClientBase, SimClient {
    /// An option reply's data: NBD strings are at most 4096 bytes (proto.md), plus the reply's own fields.
    static let maxOptionReplyDataBytes = NBDWire.maxStringBytes + 64

    let export: String
    let blockSize: Int

    private enum Phase {
        /// No connection yet, or it died.
        case down
        /// Waiting for the server's 18-byte greeting.
        case greeting
        /// NBD_OPT_GO sent; option replies until NBD_REP_ACK.
        case options
        /// Requests flow.
        case transmission
    }
    private var phase = Phase.down
    private var exportBytes: UInt64? = nil
    private var transmissionFlags: UInt16 = 0

    init(name: String, export: String, blocks: Range<UInt64>, blockSize: Int, queueDepth: Int, commands: Int,
         maxBlocksPerCommand: Int, verify: Bool, connect: @escaping () -> Int32) {
        precondition(export.utf8.count <= NBDWire.maxStringBytes, "\(name): export name too long")
        self.export = export
        self.blockSize = blockSize
        let workload = SimWorkload(name: name, range: blocks, blockSize: blockSize,
                                   maxBlocksPerCommand: maxBlocksPerCommand, commands: commands,
                                   queueDepth: queueDepth, verify: verify)
        let maxCommandBytes = maxBlocksPerCommand * blockSize
        let optionBytes = NBDWire.clientFlagsBytes + NBDWire.optionHeaderBytes + 8 + NBDWire.maxStringBytes
        let txBytes = queueDepth * NBDWire.requestBytes + 2 * max(NBDWire.requestBytes + maxCommandBytes, optionBytes)
        let largestIn = max(NBDWire.simpleReplyBytes + maxCommandBytes,
                            NBDWire.optionReplyHeaderBytes + SimNBDClient.maxOptionReplyDataBytes)
        super.init(name: name, workload: workload, queueDepth: queueDepth, txBytes: txBytes, rxBytes: 2 * largestIn,
                   connect: connect)
    }

    override func sessionStarted() {
        phase = .greeting
        exportBytes = nil
        transmissionFlags = 0
    }

    override var idle: Bool {
        if case .transmission = phase { return true }
        return false
    }

    // MARK: Handshake

    /// The greeting: both magics and FIXED_NEWSTYLE; answered with the client flags and NBD_OPT_GO at once.
    private func handleGreeting() -> Bool {
        guard rx.count >= NBDWire.greetingBytes else { return false }
        let p = UnsafeRawPointer(rx.bytes)
        let flags = be16(p, 16)
        guard be64(p, 0) == NBDWire.initMagic, be64(p, 8) == NBDWire.optionMagic,
              flags & NBDWire.flagFixedNewstyle != 0 else {
            abandon("greeting \(hex(be64(p, 0))) \(hex(be64(p, 8))) flags \(hex(flags)): not fixed newstyle")
            return true
        }
        rx.consume(NBDWire.greetingBytes)
        let name = Array(export.utf8)
        // One information request: NBD_INFO_BLOCK_SIZE, whose maximum payload bounds every command.
        let optionData = 4 + name.count + 2 + 2
        guard let h = tx.reserve(NBDWire.clientFlagsBytes + NBDWire.optionHeaderBytes + optionData) else {
            preconditionFailure("the send buffer is empty after connecting and sized for the option")
        }
        let clientFlags = NBDWire.clientFixedNewstyle | (flags & NBDWire.flagNoZeroes != 0 ? NBDWire.clientNoZeroes : 0)
        put32(h, 0, clientFlags)
        let o = h + NBDWire.clientFlagsBytes
        put64(o, 0, NBDWire.optionMagic)
        put32(o, 8, NBDWire.optGo)
        put32(o, 12, UInt32(optionData))
        put32(o, 16, UInt32(name.count))
        name.withUnsafeBytes { (o + 20).copyMemory(from: $0.baseAddress!, byteCount: name.count) }
        put16(o, 20 + name.count, 1)
        put16(o, 22 + name.count, NBDWire.infoBlockSize)
        tx.commit(NBDWire.clientFlagsBytes + NBDWire.optionHeaderBytes + optionData)
        phase = .options
        return true
    }

    /// One option reply: NBD_REP_INFO (the export's size and flags), NBD_REP_ACK (transmission), or an error.
    private func handleOptionReply() -> Bool {
        guard rx.count >= NBDWire.optionReplyHeaderBytes else { return false }
        let p = UnsafeRawPointer(rx.bytes)
        let option = be32(p, 8), type = be32(p, 12), length = Int(be32(p, 16))
        guard be64(p, 0) == NBDWire.optionReplyMagic, option == NBDWire.optGo,
              length <= SimNBDClient.maxOptionReplyDataBytes else {
            workload.fail("option reply magic \(hex(be64(p, 0))) option \(option) length \(length)")
            drop("protocol error")
            return true
        }
        guard rx.count >= NBDWire.optionReplyHeaderBytes + length else { return false }
        let data = p + NBDWire.optionReplyHeaderBytes
        switch type {
        case NBDWire.repInfo:
            if length >= 12 && be16(data, 0) == NBDWire.infoExport {
                exportBytes = be64(data, 2)
                transmissionFlags = be16(data, 10)
            } else if length >= 14 && be16(data, 0) == NBDWire.infoBlockSize {
                let minimum = Int(be32(data, 2)), maximum = Int(be32(data, 10))
                guard minimum > 0, blockSize % minimum == 0, maximum >= blockSize else {
                    abandon("block sizes minimum \(minimum), maximum payload \(maximum) do not fit \(blockSize)-byte blocks")
                    return true
                }
                workload.limitBlocksPerCommand(maximum / blockSize)
            }
        case NBDWire.repAck:
            let needed = workload.range.upperBound * UInt64(blockSize)
            guard let size = exportBytes, size >= needed else {
                abandon("export '\(export)' has \(exportBytes.map { "\($0)" } ?? "no size") bytes; the blocks need \(needed)")
                return true
            }
            phase = .transmission
        default:
            abandon("NBD_OPT_GO '\(export)' refused with reply type \(hex(type))")
            return true
        }
        rx.consume(NBDWire.optionReplyHeaderBytes + length)
        return true
    }

    // MARK: Transmission

    override func produce(_ rng: inout SeededRandom) -> Bool {
        guard case .transmission = phase else { return false }
        return issueCommands(&rng, flushAllowed: transmissionFlags & NBDWire.transSendFlush != 0) { true }
    }

    override func issue(_ s: Int) -> Bool {
        guard let c = slots[s] else { preconditionFailure() }
        let bytes = c.op == .flush ? 0 : c.blocks * blockSize
        let payload = c.op == .write ? bytes : 0
        guard let h = tx.reserve(NBDWire.requestBytes + payload) else { return false }
        let type: UInt16
        switch c.op {
        case .read: type = NBDWire.cmdRead
        case .write: type = NBDWire.cmdWrite
        case .flush: type = NBDWire.cmdFlush
        }
        let offset = c.op == .flush ? 0 : c.lba * UInt64(blockSize)
        NBDRequestHeader(flags: 0, type: type, cookie: UInt64(newTag(s)), offset: offset, length: UInt32(bytes))
            .encode(to: h)
        if payload > 0 { workload.fill(c, offset: 0, count: payload, into: h + NBDWire.requestBytes) }
        tx.commit(NBDWire.requestBytes + payload)
        return true
    }

    /// A simple reply, with a READ's data after it when the error is 0.
    private func handleReply() -> Bool {
        guard rx.count >= NBDWire.simpleReplyBytes else { return false }
        let p = UnsafeRawPointer(rx.bytes)
        guard be32(p, 0) == NBDWire.simpleReplyMagic else {
            workload.fail("reply magic \(hex(be32(p, 0))) (structured replies were not negotiated)")
            drop("protocol error")
            return true
        }
        let error = be32(p, 4)
        guard let s = slot(forTag: be64(p, 8), "NBD reply"), let c = slots[s] else {
            drop("protocol error")
            return true
        }
        let what = c.op == .flush ? "FLUSH" : "\(c.op == .read ? "READ" : "WRITE") of \(c.blocks) block(s) at LBA \(c.lba)"
        if error != 0 {
            rx.consume(NBDWire.simpleReplyBytes)
            end(s, .failed("\(what): NBD error \(error)"))
            return true
        }
        let payload = c.op == .read ? c.blocks * blockSize : 0
        guard rx.count >= NBDWire.simpleReplyBytes + payload else { return false }
        if payload > 0 { workload.check(c, offset: 0, count: payload, from: p + NBDWire.simpleReplyBytes) }
        rx.consume(NBDWire.simpleReplyBytes + payload)
        end(s, .good)
        return true
    }

    override func consume() -> Bool {
        var did = false
        while !dropping {
            let progressed: Bool
            switch phase {
            case .down: progressed = false
            case .greeting: progressed = handleGreeting()
            case .options: progressed = handleOptionReply()
            case .transmission: progressed = handleReply()
            }
            guard progressed else { break }
            did = true
        }
        return did
    }
}
