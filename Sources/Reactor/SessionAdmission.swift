/// Whether a logged-in session may keep using its target after the configuration changed. A login checks
/// the same conditions (Login.swift); a session must not keep access that a new login would be refused,
/// for example one that logged in without CHAP before CHAP was bound (RFC 7143 §12: a target that requires
/// authentication must not serve an initiator that did not authenticate). Pure.
import Floor
import URing
import ISCSIWire
import Store
import SCSI
import ISCSI
import NBD
public enum SessionAdmission {
    /// Nil while the session is still admitted; otherwise why it is not.
    /// `chapAccount`: the account the session authenticated as, nil when it did not authenticate.
    public static func refusal(target: TargetRuntime, peerAddress: String, initiatorName: String,
                               chapAccount: CHAPAccount?) -> String? {
        if !ACLCheck.allows(target.acl, address: peerAddress, initiatorName: initiatorName) {
            return "the ACL of \(target.name) no longer admits it"
        }
        return chapRefusal(target.chap, chapAccount: chapAccount, boundTo: target.name)
    }

    /// The same for a discovery session: `discovery` are the accounts bound without a target (tgt's global
    /// target), which a new discovery login must authenticate with.
    public static func discoveryRefusal(_ discovery: CHAPCredentials, chapAccount: CHAPAccount?) -> String? {
        chapRefusal(discovery, chapAccount: chapAccount, boundTo: "discovery")
    }

    private static func chapRefusal(_ credentials: CHAPCredentials, chapAccount: CHAPAccount?, boundTo name: String) -> String? {
        guard credentials.required else { return nil }
        guard let account = chapAccount else {
            return "\(name) now requires CHAP and the session did not authenticate"
        }
        if !credentials.incoming.contains(account) {
            return "CHAP account '\(account.user)' is no longer bound to \(name)"
        }
        return nil
    }
}
