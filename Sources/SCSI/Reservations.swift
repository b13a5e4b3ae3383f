// SPC-2 RESERVE/RELEASE and SPC-4 persistent reservations: the conflict rules every command passes
// through when a reservation is held, and the PERSISTENT RESERVE IN/OUT service actions.
//
// Persistent reservations are kept per LU in memory and survive sessions (keyed by initiator port and
// target port). On file LUs, sheep LUs with multipath=off and hyper volumes they do not survive power loss:
// APTPL=1 is refused (PTPL_C is zero), the honest answer for a target that does not write them to stable
// storage. On a multipath sheep LU (the default) they live in the shared record in sheep (docs/CLUSTER-STATE.md, "APTPL"): PTPL_C is one, APTPL=1 is
// accepted with REGISTER and REGISTER AND IGNORE EXISTING KEY and recorded, and PTPL_A reports it.

/// How a command relates to reservations (SPC-4 table 57, SBC-3 table 13).
import Floor
import Store
public enum ReservationAccess {
    /// Allowed whatever reservation is held.
    case allowed
    /// Reads the medium: refused to non-holders under exclusive-access types.
    case read
    /// Changes the medium or LU state: refused to non-holders under every type.
    case write
}

extension SCSITask {
    var reservationAccess: ReservationAccess {
        switch opcode {
        case Opcode.inquiry, Opcode.reportLUNs, Opcode.requestSense, Opcode.testUnitReady,
             Opcode.persistentReserveIn, Opcode.persistentReserveOut, Opcode.readCapacity10,
             Opcode.maintenanceIn, Opcode.receiveCopyResults, Opcode.reserve6, Opcode.reserve10,
             Opcode.release6, Opcode.release10:
            return .allowed
        case Opcode.serviceActionIn16:
            return cdb[1] & 0x1F == ServiceAction.readCapacity16 ? .allowed : .read
        case Opcode.read6, Opcode.read10, Opcode.read12, Opcode.read16, Opcode.verify10, Opcode.verify12,
             Opcode.verify16, Opcode.prefetch10, Opcode.prefetch16, Opcode.modeSense6, Opcode.modeSense10,
             Opcode.readDefectData10, Opcode.readDefectData12:
            return .read
        case Opcode.preventAllowMediumRemoval:
            return cdb[4] & 0x03 == 0 ? .allowed : .write
        default:
            return .write
        }
    }

    /// SPC-2 reservation: the holder may do anything, others only what SPC-2 §5.5.1 lists.
    func spc2Allows() -> Bool {
        switch opcode {
        case Opcode.inquiry, Opcode.reportLUNs, Opcode.requestSense, Opcode.release6, Opcode.release10,
             Opcode.maintenanceIn:
            return true
        default:
            return false
        }
    }

    func reservationConflicts(state: LUNState, nexus: Nexus) -> Bool {
        let access = reservationAccess
        let port = PortIdentity(nexus)
        return state.shared.withLock { s in
            if let h = s.spc2Holder {
                return h != nexus.id && !spc2Allows()
            }
            guard s.pr.reserved, access != .allowed else { return false }
            if s.pr.isHolder(port) { return false }
            let type = s.pr.type
            if (PRType.isRegistrantsOnly(type) || PRType.isAllRegistrants(type)) && s.pr.registrationIndex(port) != nil {
                return false
            }
            if access == .read { return PRType.isExclusiveAccess(type) }
            return true
        }
    }

    // MARK: RESERVE / RELEASE (6) and (10)

    mutating func reserve() -> SCSIAction {
        guard let lun, let nexus else { return internalError() }
        // Third-party and extent reservations are not supported.
        if cdb[1] & 0x10 != 0 { return invalidField(byte: 1, bit: 4) }
        if opcode == Opcode.reserve6 && cdb[1] & 0x01 != 0 { return invalidField(byte: 1, bit: 0) }
        if let sync = syncSharedFirst() { return sync }
        let ok = lun.state.shared.withLock { s -> Bool in
            // SPC-4 §5.9.1: with persistent reservation registrations present, RESERVE conflicts.
            if !s.pr.registrations.isEmpty || s.pr.reserved { return false }
            if let h = s.spc2Holder, h != nexus.id { return false }
            s.spc2Holder = nexus.id
            lun.state.publishFlags(s)
            return true
        }
        return ok ? completeShared() : reservationConflict()
    }

    mutating func release() -> SCSIAction {
        guard let lun, let nexus else { return internalError() }
        if cdb[1] & 0x10 != 0 { return invalidField(byte: 1, bit: 4) }
        if let sync = syncSharedFirst() { return sync }
        let outcome = lun.state.shared.withLock { s -> (ok: Bool, changed: Bool) in
            if !s.pr.registrations.isEmpty || s.pr.reserved { return (false, false) }
            // Releasing someone else's reservation, or none, is a successful no-op (SPC-2 §7.21).
            if s.spc2Holder == nexus.id {
                s.spc2Holder = nil
                lun.state.publishFlags(s)
                return (true, true)
            }
            return (true, false)
        }
        return outcome.ok ? completeShared(changed: outcome.changed) : reservationConflict()
    }

    // MARK: PERSISTENT RESERVE IN

    mutating func persistentReserveIn(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun, let target else { return internalError() }
        if let sync = syncSharedFirst() { return sync }   // READ KEYS and the rest report every gateway's state
        let action = cdb[1] & 0x1F
        let allocation = Int(cdb.u16(7))
        let state = lun.state.shared.withLock { $0.pr }
        let b = buffer
        var n = 0
        switch action {
        case 0x00:  // READ KEYS
            let fit = min(state.registrations.count, (b.count - 8) / 8)
            b.put32(0, state.generation)
            b.put32(4, UInt32(8 * state.registrations.count))
            for i in 0 ..< fit { b.put64(8 + 8 * i, state.registrations[i].key) }
            n = 8 + 8 * fit
        case 0x01:  // READ RESERVATION
            b.zero(0, 24)
            b.put32(0, state.generation)
            if state.reserved {
                b.put32(4, 16)
                b.put64(8, state.reservationKey)
                b.put8(21, state.type & 0x0F)                   // scope 0 (LU)
                n = 24
            } else {
                b.put32(4, 0)
                n = 8
            }
        case 0x02:  // REPORT CAPABILITIES
            b.zero(0, 8)
            b.put16(0, 8)
            // CRH: RESERVE/RELEASE under PR as SPC-4 §5.9.3; PTPL_C only where the state is in sheep.
            b.put8(2, 0x10 | (sharesReservations ? 0x01 : 0))
            b.put8(3, 0x80 | 0x10 | (state.aptpl ? 0x01 : 0))   // TMV, ALLOW COMMANDS 001b, PTPL_A
            b.put8(4, 0x80 | 0x40 | 0x20 | 0x08 | 0x02)         // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
            b.put8(5, 0x01)                                     // EX_AC_AR
            n = 8
        case 0x03:  // READ FULL STATUS
            n = readFullStatus(b, state: state, relativeTargetPortID: target.relativeTargetPortID)
        default:
            return invalidField(byte: 1, bit: 4)
        }
        return completeDataIn(generated: n, allocationLength: allocation)
    }

    /// READ FULL STATUS (SPC-4 §6.16.5): one descriptor per registration with its iSCSI TransportID.
    func readFullStatus(_ b: UnsafeMutableRawBufferPointer, state: PersistentReservationState,
                        relativeTargetPortID: UInt16) -> Int {
        b.put32(0, state.generation)
        var p = 8
        for r in state.registrations {
            let hex = String(r.port.isid, radix: 16)
            let name = "\(r.port.initiatorName),i,0x\(String(repeating: "0", count: max(0, 12 - hex.count)))\(hex)"
            let nameBytes = Array(name.utf8.prefix(223))
            // iSCSI TransportID, format 01b: 4-byte header, NUL-terminated port name padded to 4 bytes.
            var idLen = 4 + nameBytes.count + 1
            idLen = (idLen + 3) & ~3
            if p + 24 + idLen > b.count { break }
            b.zero(p, 24 + idLen)
            b.put64(p, r.key)
            if state.isHolder(r.port) {
                b.put8(p + 12, 0x01)                            // R_HOLDER
                b.put8(p + 13, state.type & 0x0F)
            }
            b.put16(p + 18, r.port.relativeTargetPortID == 0 ? relativeTargetPortID : r.port.relativeTargetPortID)
            b.put32(p + 20, UInt32(idLen))
            b.put8(p + 24, 0x40 | 0x05)
            b.put16(p + 26, UInt16(idLen - 4))
            for (i, c) in nameBytes.enumerated() { b.put8(p + 28 + i, c) }
            p += 24 + idLen
        }
        b.put32(4, UInt32(p - 8))
        return p
    }

    // MARK: PERSISTENT RESERVE OUT

    /// Length of the basic PERSISTENT RESERVE OUT parameter list (SPC-4 §6.17.3).
    static let prOutParameterListBytes = 24

    mutating func startPersistentReserveOut(buffer: UnsafeMutableRawBufferPointer) -> SCSIAction {
        let action = cdb[1] & 0x1F
        if action > 6 { return invalidField(byte: 1, bit: 4) }              // REGISTER AND MOVE unsupported
        let length = Int(cdb.u32(5))
        if length != SCSITask.prOutParameterListBytes { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        return requestParameterList(length: length)
    }

    mutating func persistentReserveOut(_ p: UnsafeMutableRawBufferPointer) -> SCSIAction {
        guard let lun, let nexus else { return internalError() }
        if p.count < SCSITask.prOutParameterListBytes { return fail(SenseKey.illegalRequest, .parameterListLengthError) }
        let action = cdb[1] & 0x1F
        let scope = cdb[2] >> 4
        let type = cdb[2] & 0x0F
        let key = p.get64(0)
        let serviceKey = p.get64(8)
        let flags = p.get8(20)
        if flags & 0x08 != 0 { return invalidParameter(byte: 20, bit: 3) }  // SPEC_I_PT unsupported
        if flags & 0x04 != 0 { return invalidParameter(byte: 20, bit: 2) }  // ALL_TG_PT unsupported
        // APTPL: persisted through power loss only where the state lives in sheep; elsewhere refused for every
        // service action, as before (SPC-4 §6.17.3 asks it for REGISTER; the others ignore it where it is valid).
        let aptpl = flags & 0x01 != 0
        if aptpl && !sharesReservations { return invalidParameter(byte: 20, bit: 0) }
        if let sync = syncSharedFirst() { return sync }
        let port = PortIdentity(nexus)
        let state = lun.state
        let outcome: PROutcome = state.shared.withLock { s in
            let r = Self.applyPROut(&s, state: state, action: action, scope: scope, type: type, key: key,
                                    serviceKey: serviceKey, port: port, nexusID: nexus.id)
            // The last valid APTPL bit of a REGISTER or REGISTER AND IGNORE EXISTING KEY is the LU's (SPC-4 §5.9.4).
            if case .good = r, action == 0x00 || action == 0x06 { s.pr.aptpl = aptpl }
            state.publishFlags(s)
            return r
        }
        switch outcome {
        case .good: return completeShared()
        case .conflict: return reservationConflict()
        case .invalidCDB(let byte, let bit): return invalidField(byte: byte, bit: bit)
        case .invalidParameter(let byte): return invalidParameter(byte: byte)
        case .invalidRelease: return fail(SenseKey.illegalRequest, ASC(0x26, 0x04))
        case .noResources: return fail(SenseKey.illegalRequest, .insufficientRegistrationResources)
        }
    }

    public enum PROutcome {
        case good, conflict, invalidRelease, noResources
        case invalidCDB(Int, Int?)
        case invalidParameter(Int)
    }

    /// The PERSISTENT RESERVE OUT state transitions (SPC-4 §5.9.7–§5.9.11), under the LU lock.
    static func applyPROut(_ s: inout LUNSharedState, state: LUNState, action: UInt8, scope: UInt8, type: UInt8,
                           key: UInt64, serviceKey: UInt64, port: PortIdentity, nexusID: UInt64) -> PROutcome {
        let mine = s.pr.registrationIndex(port)
        /// Queue `asc` for every registered nexus except the requester (`only`: limit to these ports).
        func notifyRegistrants(_ asc: ASC, ports: [PortIdentity]) {
            state.queueUAForAll(&s, except: nexusID, asc) { r in ports.contains(PortIdentity(r)) }
        }
        func unregister(_ i: Int) {
            let gone = s.pr.registrations.remove(at: i)
            guard s.pr.reserved else { return }
            if PRType.isAllRegistrants(s.pr.type) {
                if s.pr.registrations.isEmpty { s.pr.reserved = false; s.pr.holder = nil }
            } else if s.pr.holder == gone.port {
                let wasRegistrantsOnly = PRType.isRegistrantsOnly(s.pr.type)
                s.pr.reserved = false
                s.pr.holder = nil
                if wasRegistrantsOnly {
                    notifyRegistrants(.reservationsReleased, ports: s.pr.registrations.map(\.port))
                }
            }
        }

        /// PREEMPT that removes registrations only (no reservation, or one not held by the preempted key).
        func preemptRegistrations() -> PROutcome {
            let removed = s.pr.registrations.filter { $0.key == serviceKey && $0.port != port }.map(\.port)
            if removed.isEmpty { return .conflict }
            s.pr.registrations.removeAll { $0.key == serviceKey && $0.port != port }
            s.pr.generation &+= 1
            notifyRegistrants(.registrationsPreempted, ports: removed)
            return .good
        }

        switch action {
        case 0x00, 0x06:  // REGISTER, REGISTER AND IGNORE EXISTING KEY
            let ignore = action == 0x06
            if let i = mine {
                if !ignore && key != s.pr.registrations[i].key { return .conflict }
                if serviceKey == 0 { unregister(i) } else { s.pr.registrations[i].key = serviceKey }
                s.pr.generation &+= 1
                return .good
            }
            if !ignore && key != 0 { return .conflict }
            if serviceKey == 0 { return .good }
            if s.pr.registrations.count >= PersistentReservationState.maxRegistrations { return .noResources }
            s.pr.registrations.append(PRRegistration(port: port, key: serviceKey))
            s.pr.generation &+= 1
            return .good

        case 0x01:  // RESERVE
            guard let i = mine, s.pr.registrations[i].key == key else { return .conflict }
            if scope != 0 { return .invalidCDB(2, 7) }
            if !PRType.isValid(type) { return .invalidCDB(2, 3) }
            if s.pr.reserved {
                if !s.pr.isHolder(port) || s.pr.type != type { return .conflict }
                return .good
            }
            s.pr.reserved = true
            s.pr.type = type
            s.pr.holder = PRType.isAllRegistrants(type) ? nil : port
            return .good

        case 0x02:  // RELEASE
            guard let i = mine, s.pr.registrations[i].key == key else { return .conflict }
            if !s.pr.reserved || !s.pr.isHolder(port) { return .good }
            if scope != 0 || type != s.pr.type { return .invalidRelease }
            let releasedType = s.pr.type
            s.pr.reserved = false
            s.pr.holder = nil
            if PRType.isRegistrantsOnly(releasedType) || PRType.isAllRegistrants(releasedType) {
                notifyRegistrants(.reservationsReleased, ports: s.pr.registrations.map(\.port))
            }
            return .good

        case 0x03:  // CLEAR
            guard let i = mine, s.pr.registrations[i].key == key else { return .conflict }
            let others = s.pr.registrations.map(\.port)
            s.pr.registrations.removeAll()
            s.pr.reserved = false
            s.pr.holder = nil
            s.pr.generation &+= 1
            notifyRegistrants(.reservationsPreempted, ports: others)
            return .good

        case 0x04, 0x05:  // PREEMPT, PREEMPT AND ABORT (task abort is the transport's; state is the same)
            guard let i = mine, s.pr.registrations[i].key == key else { return .conflict }
            if s.pr.reserved && PRType.isAllRegistrants(s.pr.type) {
                if serviceKey == 0 {
                    // Preempting an all-registrants reservation: every other registration goes, and the
                    // preemptor holds a new reservation of the requested type.
                    if scope != 0 { return .invalidCDB(2, 7) }
                    if !PRType.isValid(type) { return .invalidCDB(2, 3) }
                    let removed = s.pr.registrations.filter { $0.port != port }.map(\.port)
                    s.pr.registrations.removeAll { $0.port != port }
                    s.pr.type = type
                    s.pr.holder = PRType.isAllRegistrants(type) ? nil : port
                    s.pr.generation &+= 1
                    notifyRegistrants(.registrationsPreempted, ports: removed)
                    return .good
                }
                return preemptRegistrations()
            }
            if serviceKey == 0 { return .invalidParameter(8) }
            if s.pr.reserved, let h = s.pr.holder, let hi = s.pr.registrationIndex(h),
               s.pr.registrations[hi].key == serviceKey {
                // Preempting the holder: its registrations go and the preemptor takes the reservation.
                if scope != 0 { return .invalidCDB(2, 7) }
                if !PRType.isValid(type) { return .invalidCDB(2, 3) }
                let removed = s.pr.registrations.filter { $0.key == serviceKey && $0.port != port }.map(\.port)
                s.pr.registrations.removeAll { $0.key == serviceKey && $0.port != port }
                let changed = s.pr.type != type
                s.pr.type = type
                s.pr.holder = PRType.isAllRegistrants(type) ? nil : port
                s.pr.generation &+= 1
                notifyRegistrants(.registrationsPreempted, ports: removed)
                if changed {
                    notifyRegistrants(.reservationsReleased,
                                      ports: s.pr.registrations.map(\.port).filter { !removed.contains($0) })
                }
                return .good
            }
            return preemptRegistrations()

        default:
            return .invalidCDB(1, 4)
        }
    }
}
