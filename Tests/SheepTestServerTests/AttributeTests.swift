// VDI attributes as sheep keeps them (sheep/vdi.c `get_vdi_attr`, sheep/ops.c `cluster_get_vdi_attr`):
// GET_VDI_ATTR with CREAT / EXCL / DEL, then the attribute object read and written as any object.

import Testing
@testable import SheepTestServer
import SheepProtocol

private let key = "ringtgt.scsi"

private func attrOID(_ r: SheepReply) -> UInt64 { SheepOID.attr(vid: r.header.vdiID, attrID: r.header.attrID) }

private func storedValue(_ c: SheepClient, _ oid: UInt64) throws -> [UInt8]? {
    let r = try c.readObject(oid, offset: 0, length: UInt32(SheepVDIAttrLayout.objectSizeBytes))
    return r.result == .success ? SheepVDIAttr.value(of: r.data) : nil
}

@Suite struct VDIAttributes {
    @Test func exclusiveCreateWinsOnceThroughAnyNode() throws {
        try withServer({ $0.nodes = 2 }) { server in
            let a = try server.client(node: 0), b = try server.client(node: 1)
            _ = try a.newVDI(name: "vol", size: 1 << 30)
            let first = try a.vdiAttr(name: "vol", key: key, value: Array("A".utf8), flags: [.attrCreate, .attrExclusive])
            #expect(first.result == .success)
            // The object is named by the hash of the VDI name and the hash of the attribute header.
            #expect(first.header.vdiID == SheepVDIName.hash("vol"))
            let encoded = SheepVDIAttr.encode(name: "vol", key: key)
            #expect(first.header.attrID == encoded.withUnsafeBytes { SheepVDIAttr.hash($0.baseAddress!) })
            // What real sheep named this attribute's object (a 3-node cluster, `dog vdi setattr -x vol
            // ringtgt.scsi`): 0x20cb565a3251dff9.
            #expect(attrOID(first) == 0x20cb_565a_3251_dff9)
            let second = try b.vdiAttr(name: "vol", key: key, value: Array("B".utf8), flags: [.attrCreate, .attrExclusive])
            #expect(second.result == .vdiExist)
            #expect(attrOID(second) == attrOID(first))
            #expect(try storedValue(b, attrOID(first)) == Array("A".utf8))
        }
    }

    /// Creators racing through two nodes, their requests in the server together: one wins each key.
    @Test func racingExclusiveCreatesHaveOneWinner() throws {
        try withServer({ $0.nodes = 2 }) { server in
            let a = try server.client(node: 0), b = try server.client(node: 1)
            _ = try a.newVDI(name: "vol", size: 1 << 30)
            for round in 0..<20 {
                let k = "ringtgt.scsi.\(round)"
                let req = SheepRequestHeader.getVDIAttr(id: 0, flags: [.attrCreate, .attrExclusive])
                try a.send(req, payload: SheepVDIAttr.encode(name: "vol", key: k, value: [1]))
                try b.send(req, payload: SheepVDIAttr.encode(name: "vol", key: k, value: [2]))
                let results = [try a.receive().result, try b.receive().result]
                #expect(results.filter { $0 == .success }.count == 1, "round \(round): \(results)")
                #expect(results.filter { $0 == .vdiExist }.count == 1, "round \(round): \(results)")
                let winner: UInt8 = results[0] == .success ? 1 : 2
                let found = try a.vdiAttr(name: "vol", key: k)
                #expect(try storedValue(b, attrOID(found)) == [winner])
            }
        }
    }

    @Test func findThenReadAndWriteTheObject() throws {
        try withServer { server in
            let c = try server.client()
            _ = try c.newVDI(name: "vol", size: 1 << 30)
            #expect(try c.vdiAttr(name: "vol", key: key).result == .noObj)
            #expect(try c.vdiAttr(name: "nothere", key: key).result == .noVDI)
            let made = try c.vdiAttr(name: "vol", key: key, value: [1, 2, 3], flags: [.attrCreate, .attrExclusive])
            let found = try c.vdiAttr(name: "vol", key: key)
            #expect(found.result == .success)
            #expect(attrOID(found) == attrOID(made))
            let oid = attrOID(found)
            // ctime is the VDI's create time, filled in by sheep.
            let inode = try c.readInode(vid: try c.findVDI(name: "vol"), withIndex: false)
            let object = try c.readObject(oid, offset: 0, length: UInt32(SheepVDIAttrLayout.objectSizeBytes))
            #expect(Array(object.data[SheepVDIAttrLayout.ctimeOffset..<SheepVDIAttrLayout.ctimeOffset + 8])
                    == Array(inode.data[SheepInodeLayout.createTimeOffset..<SheepInodeLayout.createTimeOffset + 8]))
            // A value rewritten with WRITE_OBJ (length, then bytes) reads back; the object has the attribute size.
            var len = UInt32(4).littleEndian
            let lenBytes = withUnsafeBytes(of: &len) { Array($0) }
            #expect(try c.writeObject(oid, offset: UInt32(SheepVDIAttrLayout.valueLengthOffset), data: lenBytes).result == .success)
            #expect(try c.writeObject(oid, offset: UInt32(SheepVDIAttrLayout.valueOffset), data: [9, 8, 7, 6]).result == .success)
            #expect(try storedValue(c, oid) == [9, 8, 7, 6])
            #expect(try c.readObject(oid, offset: UInt32(SheepVDIAttrLayout.objectSizeBytes - 1), length: 1).result == .success)
            #expect(try c.readObject(oid, offset: UInt32(SheepVDIAttrLayout.objectSizeBytes), length: 1).result == .invalidParms)
        }
    }

    @Test func createWithoutExclusiveRewritesTheAttribute() throws {
        try withServer { server in
            let c = try server.client()
            _ = try c.newVDI(name: "vol", size: 1 << 30)
            let a = try c.vdiAttr(name: "vol", key: key, value: Array("old".utf8), flags: [.attrCreate])
            let b = try c.vdiAttr(name: "vol", key: key, value: Array("new".utf8), flags: [.attrCreate])
            #expect(a.result == .success && b.result == .success)
            #expect(attrOID(a) == attrOID(b))
            #expect(try storedValue(c, attrOID(b)) == Array("new".utf8))
        }
    }

    @Test func deleteClearsTheNameAndTheNextCreateProbesOn() throws {
        try withServer { server in
            let c = try server.client()
            _ = try c.newVDI(name: "vol", size: 1 << 30)
            let made = try c.vdiAttr(name: "vol", key: key, flags: [.attrCreate, .attrExclusive])
            #expect(try c.vdiAttr(name: "vol", key: key, flags: [.attrDelete]).result == .success)
            // The object stays with an empty name, so a lookup probes past it to the next (missing) slot.
            #expect(server.cluster.hasObject(attrOID(made)))
            #expect(try c.vdiAttr(name: "vol", key: key).result == .noObj)
            #expect(try c.vdiAttr(name: "vol", key: key, flags: [.attrDelete]).result == .noObj)
            let again = try c.vdiAttr(name: "vol", key: key, flags: [.attrCreate, .attrExclusive])
            #expect(again.result == .success)
            #expect(again.header.attrID == made.header.attrID &+ 1)
        }
    }

    @Test func theAttributeOutlivesASnapshotOfTheVDI() throws {
        try withServer { server in
            let c = try server.client()
            let vid = try c.newVDI(name: "vol", size: 1 << 30).header.vdiID
            let made = try c.vdiAttr(name: "vol", key: key, value: [5], flags: [.attrCreate, .attrExclusive])
            #expect(try c.newVDI(name: "vol", size: 1 << 30, baseVID: vid, snapshot: true).result == .success)
            let found = try c.vdiAttr(name: "vol", key: key)
            #expect(found.result == .success)
            #expect(attrOID(found) == attrOID(made))
        }
    }

    @Test func needsTheInternalProtocolVersion() throws {
        try withServer { server in
            let c = try server.client()
            _ = try c.newVDI(name: "vol", size: 1 << 30)
            var h = SheepRequestHeader.getVDIAttr(id: 0, flags: [.attrCreate])
            h.protoVersion = SheepWire.clientProtoVersion
            #expect(try c.call(h, payload: SheepVDIAttr.encode(name: "vol", key: key)).result == .verMismatch)
        }
    }
}
