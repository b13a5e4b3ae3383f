// Placeholder: the stores are filled in by the reactor work.
public enum Backing: @unchecked Sendable {
    case null
}
