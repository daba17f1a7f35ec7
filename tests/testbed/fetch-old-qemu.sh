#!/usr/bin/env bash
# Extracts Debian 12's own QEMU 7.2 (which has no cpr-reboot) into a cache
# directory, so tests can check how hypervisor.cpr treats a QEMU too old.
# Nothing is installed: the packages are downloaded and unpacked only.
# Prints the path of the qemu-system-x86_64 wrapper it made.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"
CACHE=$CACHE/qemu-7.2
wrapper=$CACHE/qemu-system-x86_64

if [ ! -x "$wrapper" ]; then
    version=$(apt-cache madison qemu-system-x86 | awk '$3 ~ /^1:7\.2/ {print $3; exit}')
    if [ -z "$version" ]; then
        echo "fetch-old-qemu.sh: no QEMU 7.2 in this machine's apt sources (Debian 12 has it)" >&2
        exit 3
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download -q "qemu-system-x86=$version" "qemu-system-common=$version" >/dev/null 2>&1)
    mkdir -p "$CACHE"
    for deb in "$work"/*.deb; do
        dpkg-deb -x "$deb" "$CACHE/root"
    done
    # The 7.2 binary must load its own TCG module, not the installed QEMU's.
    cat > "$wrapper" <<WRAPPER
#!/bin/sh
QEMU_MODULE_DIR=$CACHE/root/usr/lib/x86_64-linux-gnu/qemu exec $CACHE/root/usr/bin/qemu-system-x86_64 -L /usr/share/qemu -L /usr/share/seabios "\$@"
WRAPPER
    chmod +x "$wrapper"
fi
echo "$wrapper"
