// The CHAP accounts a target is configured with (tgtadm `--mode account`), as the model holds them. The
// authentication itself is ISCSI/CHAP.swift.

/// One CHAP account: a user name and its secret.
public struct CHAPAccount: Sendable, Equatable {
    public var user: String
    public var secret: [UInt8]
    public init(user: String, secret: [UInt8]) {
        self.user = user
        self.secret = secret
    }
    public init(user: String, password: String) { self.init(user: user, secret: Array(password.utf8)) }
}

/// A target's CHAP configuration.
public struct CHAPCredentials: Sendable, Equatable {
    /// Initiators must authenticate as one of these (empty: no authentication).
    public var incoming: [CHAPAccount]
    /// The target's own account for mutual CHAP.
    public var outgoing: CHAPAccount?
    public init(incoming: [CHAPAccount] = [], outgoing: CHAPAccount? = nil) {
        self.incoming = incoming
        self.outgoing = outgoing
    }
    public var required: Bool { !incoming.isEmpty }
}
