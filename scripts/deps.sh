#!/usr/bin/env bash
# Installs the Debian packages ringtgt needs (build: liburing-dev; tests: the user-space initiators and tgt
# as the peer to compare with; --release/--deb: what scripts/build-release and build-deb use). Only what is
# missing is installed.
set -euo pipefail
want=(liburing-dev pkg-config)
case "${1:-}" in
    --test) want+=(libiscsi-bin qemu-utils libnbd-bin fio sg3-utils tgt iproute2 procps) ;;
    --release) want+=(binutils) ;;                       # strip
    --deb) want+=(binutils dpkg-dev gzip) ;;              # strip, dpkg-shlibdeps, man pages
esac
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v swift >/dev/null 2>&1; then
    for d in /opt/swift/usr/bin /usr/share/swift/usr/bin; do [ -x "$d/swift" ] && export PATH="$d:$PATH"; done
fi
command -v swift >/dev/null 2>&1 || { echo "ringtgt needs a Swift 6 toolchain on PATH (swift.org/install)" >&2; exit 1; }
