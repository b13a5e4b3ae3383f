#!/usr/bin/env python3
"""Hand-made seeds for what no captured traffic covers: CHAP logins (with the "CHAP_R=?" marker the login
target answers correctly), Text continuations, the sheep machine and parsers, targets.conf and tgtadm lines.
Writes into DIR/TARGET/ (default fuzz/corpus)."""
import os, struct, sys

out = sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus"

def put(target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    with open(os.path.join(out, target, "seed-" + name), "wb") as f:
        f.write(data)

def text(pairs):
    return b"".join(("%s=%s" % kv).encode() + b"\0" for kv in pairs)

def pdu(opcode, flags, data, itt=1, lun=0, f20=0, f24=0, f28=0, cdb=b"", immediate=True):
    bhs = bytearray(48)
    bhs[0] = opcode | (0x40 if immediate else 0)
    bhs[1] = flags
    bhs[5:8] = struct.pack(">I", len(data))[1:]
    bhs[8:16] = struct.pack(">Q", lun)
    bhs[16:20] = struct.pack(">I", itt)
    bhs[20:24] = struct.pack(">I", f20)
    bhs[24:28] = struct.pack(">I", f24)
    bhs[28:32] = struct.pack(">I", f28)
    bhs[32:32 + len(cdb)] = cdb
    return bytes(bhs) + data + b"\0" * (-len(data) % 4)

def login(t, c, csg, nsg, pairs, itt=1):
    isid = struct.pack(">Q", 0x23D000000001)[2:]
    p = bytearray(pdu(0x03, t << 7 | c << 6 | csg << 2 | nsg, text(pairs), itt=itt))
    p[8:14] = isid
    return bytes(p)

IQN = "iqn.2026-01.org.ringtgt:fuzz"
INIT = "iqn.2026-01.org.example:host"
operational = [("HeaderDigest", "None,CRC32C"), ("DataDigest", "None"), ("InitialR2T", "No"), ("ImmediateData", "Yes"),
               ("MaxBurstLength", "262144"), ("FirstBurstLength", "262144"), ("MaxRecvDataSegmentLength", "262144"),
               ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"),
               ("ErrorRecoveryLevel", "0"), ("MaxConnections", "1"), ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes")]
first = [("InitiatorName", INIT), ("TargetName", IQN), ("SessionType", "Normal"), ("AuthMethod", "CHAP,None")]
chap = (login(1, 0, 0, 1, first, 1) + login(0, 0, 0, 1, [("CHAP_A", "5")], 2)
        + login(1, 0, 0, 1, [("CHAP_N", "alice"), ("CHAP_R", "?")], 3) + login(1, 0, 1, 3, operational, 4))
put("login", "chap", b"\x01" + chap)
mutual = (login(1, 0, 0, 1, first, 1) + login(0, 0, 0, 1, [("CHAP_A", "5")], 2)
          + login(1, 0, 0, 1, [("CHAP_N", "alice"), ("CHAP_R", "?"), ("CHAP_I", "7"), ("CHAP_C", "0x" + "ab" * 16)], 3)
          + login(1, 0, 1, 3, operational, 4))
put("login", "chap-mutual", b"\x02" + mutual)
put("login", "chap-reflect", b"\x02" + mutual.replace(("0x" + "ab" * 16).encode(), b"!"))
disc = [("InitiatorName", INIT), ("SessionType", "Discovery"), ("AuthMethod", "CHAP")]
put("login", "chap-discovery", b"\x10" + login(1, 0, 0, 1, disc, 1) + login(0, 0, 0, 1, [("CHAP_A", "5")], 2)
    + login(1, 0, 0, 3, [("CHAP_N", "alice"), ("CHAP_R", "?")], 3))
put("login", "tight-limits", b"\x08" + login(1, 0, 1, 3, [("InitiatorName", INIT), ("TargetName", IQN)] + operational))
long_value = [("InitiatorName", INIT), ("TargetName", IQN), ("X-com.example.pad", "p" * 9000)]
body = text(long_value)
put("login", "continuation", b"\x00" + pdu(0x03, 0x40 | 1 << 2 | 3, body[:8192]) + pdu(0x03, 0x80 | 1 << 2 | 3, body[8192:]))

st = text([("SendTargets", "All")])
put("text", "sendtargets-all", b"\x00" + pdu(0x04, 0x80, st, f20=0xFFFFFFFF))
put("text", "sendtargets-small", b"\x08" + pdu(0x04, 0x80, st, f20=0xFFFFFFFF) + pdu(0x04, 0x80, b"", f20=1))
long_text = text([("SendTargets", ""), ("MaxRecvDataSegmentLength", "4096"), ("X-com.example.k", "v" * 3000)])
put("text", "continuation", b"\x01" + pdu(0x04, 0x40, long_text[:1024], f20=0xFFFFFFFF) + pdu(0x04, 0x80, long_text[1024:], f20=1))

def scsi(cdb, edtl, r=False, w=False, data=b"", itt=1, lun=0):
    return pdu(0x01, 0x80 | (0x40 if r else 0) | (0x20 if w else 0), data, itt=itt, lun=lun << 48, f20=edtl, cdb=cdb)
put("scsi", "rw", b"\x00" + scsi(bytes([0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0]), 512, w=True, data=b"\xAA" * 512)
    + scsi(bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]), 512, r=True) + scsi(bytes([0x35] + [0] * 9), 0)
    + scsi(bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]), 512, r=True, itt=0x85))
put("scsi", "reserve", b"\x00" + scsi(bytes([0x16, 0, 0, 0, 0, 0]), 0) + scsi(bytes([0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0]), 512, w=True, itt=0x100)
    + scsi(bytes([0x17, 0, 0, 0, 0, 0]), 0))
put("scsi", "unmap", b"\x00" + scsi(bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]), 24, w=True,
                                     data=struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 2, 4))
    + scsi(bytes([0x9E, 0x12]) + struct.pack(">QI", 0, 64) + b"\0\0", 64, r=True))

framed = pdu(0x01, 0x80, b"abcde", cdb=bytes([0x12, 0, 0, 0, 36, 0]))
put("framing", "digests", b"\x03" + framed[:48] + b"\0" * 4 + framed[48:] + b"\0" * 4
    + pdu(0x00, 0x80, b"", itt=0xFFFFFFFF) + b"\0" * 4)
put("nbd", "list-info-go", b"\x00" + struct.pack(">I", 3)
    + struct.pack(">QII", 0x49484156454F5054, 3, 0)
    + struct.pack(">QII", 0x49484156454F5054, 6, 4 + 6 + 2 + 2) + struct.pack(">I", 6) + b"disk/1" + struct.pack(">HH", 1, 3)
    + struct.pack(">QII", 0x49484156454F5054, 99, 0)
    + struct.pack(">QII", 0x49484156454F5054, 7, 4 + 27 + 2) + struct.pack(">I", 27) + b"iqn.2026-01.org.ringtgt:a/2" + struct.pack(">H", 0)
    + struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 4096) + struct.pack(">IHHQQI", 0x25609513, 1, 1, 2, 4096, 512) + b"w" * 512
    + struct.pack(">IHHQQI", 0x25609513, 0, 4, 3, 0, 1 << 21) + struct.pack(">IHHQQI", 0x25609513, 0, 3, 4, 0, 0))
put("nbd", "export-name", b"\x02" + struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 1, 0)
    + struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 1, 512))

put("sheep", "machine", bytes([0x00, 0, 3, 0, 0, 3, 0, 0, 1, 1, 0, 4, 5, 1, 0, 0, 2, 2, 3, 0, 0, 0, 3, 0, 1, 0]))
put("sheep", "snapshot", bytes([0x03, 2, 4, 3, 0, 1, 2, 3, 0, 1, 0, 3, 0, 1, 1, 3, 0, 1, 0, 1, 0, 5, 9]))
hdr = struct.pack("<BBHIII", 0, 0x03, 0, 1, 0x10001, 8) + struct.pack("<I", 0x1A) + b"\0" * 28
put("sheep", "replies", b"\x80" + hdr + b"x" * 8 + struct.pack("<BBHIII", 0, 0x02, 0, 1, 2, 0) + b"\0" * 32)

put("config", "tgt", b"""default-driver iscsi
ignore-errors yes
incomingdiscoveryuser disc secret123456
<target iqn.2026-01.org.ringtgt:a>
    <backing-store /dev/null>
        bs-type null
        lun 1
        scsi_sn SN001
        readonly 1
        lbppbe 3
    </backing-store>
    backing-store /var/tmp/b.img
    initiator-address 10.0.0.0/8
    initiator-name iqn.2026-01.org.example:host
    incominguser alice secret123456
    outgoinguser tgt0 targetsecret99
    MaxRecvDataSegmentLength 65536
    HeaderDigest CRC32C,None
    TargetAlias "a disk"
    nop_interval 5
</target>
<target iqn.2026-01.org.ringtgt:b>
    tid 7
    bs-type null
    backing-store /dev/zero
    state offline
</target>
""")
put("config", "minimal", b"<target iqn.2026-01.org.ringtgt:c>\n    backing-store /dev/null\n</target>\n")
put("config", "nbd-export", b"iqn.2026-01.org.ringtgt:x=/var/tmp/x.img\nsheepdog:127.0.0.1:7000:vol:2\nsheepdog:/run/sheep.sock:vol@snap\n")

put("tgtadm", "session", b"""--lld iscsi --mode target --op new --tid 1 --targetname iqn.2026-01.org.ringtgt:a
--lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store /dev/null --bstype null
--lld iscsi --mode logicalunit --op update --tid 1 --lun 1 --params scsi_sn=ABC,readonly=1
--lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
--lld iscsi --mode account --op new --user alice --password secret123456
--lld iscsi --mode account --op bind --tid 1 --user alice
--lld iscsi --mode target --op update --tid 1 --name MaxRecvDataSegmentLength --value 65536
--lld iscsi --mode target --op show
--lld iscsi --mode sys --op update --name State --value offline
""")
put("tgtadm", "short", b"-L iscsi -o new -m target -t 2 -T iqn.2026-01.org.ringtgt:b\n-L iscsi -o delete -m target -t 2 --force\n--help\n-o show -m sys\n")
