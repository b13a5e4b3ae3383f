// The one version of ringtgt: every program prints it for -V/--version (just the version, as tgtd and
// tgtadm do), and scripts/build-deb reads it from here for the package version.

public enum RingtgtVersion {
    /// A Debian upstream version: digits and dots, so that dpkg orders releases.
    public static let string = "0.1.0"
    /// The tgt release whose options, messages and output ringtgt follows (named in ringtgtadm --help).
    public static let tgtCompatible = "1.0.85"
}
