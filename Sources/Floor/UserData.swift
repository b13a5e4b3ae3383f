/// What a completion is for: the top `UserData.kindBits` of its user_data. Completions dispatch by switch on it;
/// the rest of the 64 bits is laid out by the kind's operation type below.
public enum OpKind: UInt8 {
    case accept = 1
    case recv = 2
    case send = 3
    case storeIO = 4
    case tick = 5
    case mailbox = 6
    case cancel = 7
    case close = 8
    case sheep = 9
    /// The end of an accept back-off: arm the listener's accept again.
    case acceptRetry = 10
    /// A store operation of a logical unit's background job (Reactor/LUNJobs.swift).
    case lunJob = 11
}

/// user_data = kind (8 bits) | payload (56 bits). Each payload layout states its field widths; the reactor checks
/// once at start that its table sizes fit them (`UserData.check`), so encoding never truncates an index.
public enum UserData {
    public static let kindBits = 8
    public static let payloadBits = 64 - kindBits
    /// Generation tags guard against a completion for a slot that was reused since the operation started.
    public static let generationBits = 32

    @inlinable @inline(__always)
    public static func kind(_ u: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: u >> UInt64(payloadBits)) }

    @inlinable @inline(__always)
    static func mask(_ bits: Int) -> UInt64 { (1 << UInt64(bits)) &- 1 }

    @inlinable @inline(__always)
    static func pack(_ kind: OpKind, _ payload: UInt64) -> UInt64 {
        UInt64(kind.rawValue) << UInt64(payloadBits) | (payload & mask(payloadBits))
    }

    /// Payload of an operation that names an index, a sub-index and a generation:
    /// (major << minorBits | minor) << generationBits | generation.
    @inlinable @inline(__always)
    static func pack(_ kind: OpKind, major: Int, minor: Int, minorBits: Int, generation: UInt32) -> UInt64 {
        let index = UInt64(major) << UInt64(minorBits) | UInt64(minor)
        return pack(kind, index << UInt64(generationBits) | UInt64(generation))
    }

    @inlinable @inline(__always)
    static func unpack(_ u: UInt64, majorBits: Int, minorBits: Int) -> (major: Int, minor: Int, generation: UInt32) {
        let index = u >> UInt64(generationBits)
        return (Int((index >> UInt64(minorBits)) & mask(majorBits)), Int(index & mask(minorBits)),
                UInt32(truncatingIfNeeded: u))
    }

    /// Why these table sizes cannot be encoded in user_data, or nil when they fit.
    public static func check(maxConnections: Int, taskCapacity: Int, listeners: Int) -> String? {
        if maxConnections > ConnectionOp.connectionLimit || maxConnections > TaskOp.connectionLimit {
            return "\(maxConnections) connections per core do not fit user_data "
                + "(at most \(min(ConnectionOp.connectionLimit, TaskOp.connectionLimit)))"
        }
        if taskCapacity > TaskOp.taskLimit {
            return "\(taskCapacity) task entries per connection do not fit user_data (at most \(TaskOp.taskLimit))"
        }
        if listeners > ListenerOp.listenerLimit {
            return "\(listeners) listeners per core do not fit user_data (at most \(ListenerOp.listenerLimit))"
        }
        return nil
    }
}

/// recv and send on a connection: connection index | generation.
public struct ConnectionOp: Equatable {
    public static let connectionBits = 24
    public static let connectionLimit = 1 << connectionBits
    public var connection: Int
    public var generation: UInt32

    @inlinable public init(connection: Int, generation: UInt32) {
        self.connection = connection
        self.generation = generation
    }

    @inlinable @inline(__always)
    public func encode(_ kind: OpKind) -> UInt64 {
        UserData.pack(kind, major: connection, minor: 0, minorBits: 0, generation: generation)
    }

    @inlinable @inline(__always)
    public static func decode(_ u: UInt64) -> ConnectionOp {
        let f = UserData.unpack(u, majorBits: connectionBits, minorBits: 0)
        return ConnectionOp(connection: f.major, generation: f.generation)
    }
}

/// A store operation of one task: connection index | task index | the connection's generation.
public struct TaskOp: Equatable {
    public static let taskBits = 10
    public static let connectionBits = UserData.payloadBits - UserData.generationBits - taskBits
    public static let taskLimit = 1 << taskBits
    public static let connectionLimit = 1 << connectionBits
    public var connection: Int
    public var task: Int
    public var generation: UInt32

    @inlinable public init(connection: Int, task: Int, generation: UInt32) {
        self.connection = connection
        self.task = task
        self.generation = generation
    }

    @inlinable @inline(__always)
    public func encode() -> UInt64 {
        UserData.pack(.storeIO, major: connection, minor: task, minorBits: TaskOp.taskBits, generation: generation)
    }

    @inlinable @inline(__always)
    public static func decode(_ u: UInt64) -> TaskOp {
        let f = UserData.unpack(u, majorBits: connectionBits, minorBits: taskBits)
        return TaskOp(connection: f.major, task: f.minor, generation: f.generation)
    }
}

/// A store operation of a LU's background job: job entry | the entry's generation.
public struct JobOp: Equatable {
    public static let jobBits = 16
    public var job: Int
    public var generation: UInt32

    @inlinable public init(job: Int, generation: UInt32) {
        self.job = job
        self.generation = generation
    }

    @inlinable @inline(__always)
    public func encode() -> UInt64 {
        UserData.pack(.lunJob, major: job, minor: 0, minorBits: 0, generation: generation)
    }

    @inlinable @inline(__always)
    public static func decode(_ u: UInt64) -> JobOp {
        let f = UserData.unpack(u, majorBits: jobBits, minorBits: 0)
        return JobOp(job: f.major, generation: f.generation)
    }
}

/// An operation of a sheepdog channel: endpoint index | which operation | the channel's generation.
public struct ChannelOp: Equatable {
    public enum Op: UInt8 { case connect = 0, send = 1, recv = 2 }
    public static let opBits = 2
    public static let endpointBits = UserData.payloadBits - UserData.generationBits - opBits
    public static let endpointLimit = 1 << endpointBits
    public var endpoint: Int
    public var op: Op
    public var generation: UInt32

    @inlinable public init(endpoint: Int, op: Op, generation: UInt32) {
        self.endpoint = endpoint
        self.op = op
        self.generation = generation
    }

    @inlinable @inline(__always)
    public func encode() -> UInt64 {
        UserData.pack(.sheep, major: endpoint, minor: Int(op.rawValue), minorBits: ChannelOp.opBits, generation: generation)
    }

    /// nil for an operation code no channel issues.
    @inlinable @inline(__always)
    public static func decode(_ u: UInt64) -> ChannelOp? {
        let f = UserData.unpack(u, majorBits: endpointBits, minorBits: opBits)
        guard let op = Op(rawValue: UInt8(f.minor)) else { return nil }
        return ChannelOp(endpoint: f.major, op: op, generation: f.generation)
    }
}

/// accept and its back-off timer: the listener's index. Tick and mailbox use it with index 0.
public struct ListenerOp: Equatable {
    public static let listenerBits = 24
    public static let listenerLimit = 1 << listenerBits
    public var listener: Int

    @inlinable public init(listener: Int) { self.listener = listener }

    @inlinable @inline(__always)
    public func encode(_ kind: OpKind) -> UInt64 {
        UserData.pack(kind, major: listener, minor: 0, minorBits: 0, generation: 0)
    }

    @inlinable @inline(__always)
    public static func decode(_ u: UInt64) -> ListenerOp {
        ListenerOp(listener: UserData.unpack(u, majorBits: listenerBits, minorBits: 0).major)
    }
}
