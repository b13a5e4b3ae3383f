// Persistent and SPC-2 reservations as the shared record carries them between the gateways of one sheepdog
// VDI (docs/CLUSTER-STATE.md): a version built from an LU's state after a local change, and a version another
// gateway wrote adopted into the LU's state. Off the I/O path: both take the LU lock once per version.

extension LUNSharedState {
    /// An SPC-2 reservation held through another gateway: no local nexus has this id (ids count up from 1).
    static let remoteSPC2Holder = UInt64.max
}

extension SheepSCSIRecord {
    /// The version after `base`, written by `writer`, with the reservations of `s` (the LU's state after this
    /// gateway applied a command to it). An SPC-2 reservation held through another gateway stays as `base` has
    /// it; the lease and anything else not about reservations is carried over.
    init(successorOf base: SheepSCSIRecord, writer: UInt64, state s: LUNSharedState) {
        self = base.successor(writer: writer)
        setPersistentReservation(s.pr)
        switch s.spc2Holder {
        case nil: spc2Holder = nil
        case LUNSharedState.remoteSPC2Holder?: spc2Holder = base.spc2Holder
        case let id?: spc2Holder = s.nexuses[id].map { PortIdentity($0) }
        }
    }
}

extension LUNState {
    /// Adopts a version another gateway wrote: its registrations and reservation replace ours, its SPC-2 holder
    /// becomes the local nexus with that identity (or a remote one), and this gateway's nexuses get the unit
    /// attentions SPC-4 §5.9 gives those a PREEMPT, CLEAR or RELEASE elsewhere concerns. A version this gateway
    /// wrote itself is not adopted this way: applying the command locally already queued them.
    func adoptShared(_ r: SheepSCSIRecord) {
        shared.withLock { s in
            let before = s.pr
            s.pr = r.persistentReservation
            if let holder = r.spc2Holder {
                s.spc2Holder = s.nexuses.first { PortIdentity($0.value) == holder }?.key ?? LUNSharedState.remoteSPC2Holder
            } else {
                s.spc2Holder = nil
            }
            let lost = before.registrations.map(\.port).filter { p in !r.registrations.contains { $0.port == p } }
            if !lost.isEmpty {
                // CLEAR removes every registration and the reservation; PREEMPT leaves the preemptor's.
                let asc: ASC = r.registrations.isEmpty && !r.reserved ? .reservationsPreempted : .registrationsPreempted
                queueUAForAll(&s, except: nil, asc) { lost.contains(PortIdentity($0)) }
            } else if before.reserved && !r.reserved
                        && (PRType.isRegistrantsOnly(before.type) || PRType.isAllRegistrants(before.type)) {
                queueUAForAll(&s, except: nil, .reservationsReleased) { rec in
                    r.registrations.contains { $0.port == PortIdentity(rec) }
                }
            }
            publishFlags(s)
        }
    }
}
