#!/usr/bin/env bash
# Installs what hypervisor.cpr and its test bed need on a Debian 12 or 13 host:
# QEMU >= 10 (bookworm-backports on Debian 12, main on Debian 13), kexec-tools,
# the pieces the test guest is built from, and a Python virtual environment
# with ansible-core, qemu.qmp, jmespath and libvirt-python (built against the
# host's libvirt). Safe to run again.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
PYTHON=${PYTHON:-python3}

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get and /dev/kvm access)"

. /etc/os-release
export DEBIAN_FRONTEND=noninteractive
# libvirt 11.3 (bookworm-backports; sparse save images since 11.2) for the libvirt path and its lab
# (tests/libvirt), and what pip needs to build libvirt-python against it.
packages=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev)
apt_target=()

if [ "${VERSION_CODENAME}" = bookworm ]; then
    # Debian 12's own QEMU is 7.2, without cpr-reboot: take QEMU from
    # bookworm-backports, from the same mirror and keyring as the bookworm entry.
    sources=/etc/apt/sources.list.d/debian.sources
    backports=/etc/apt/sources.list.d/hypervisor-cpr-backports.sources
    if [ ! -e "$backports" ]; then
        if [ -r "$sources" ]; then
            uri=$(awk '/^URIs:/ && !/security/ {print $2; exit}' "$sources")
            keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$sources")
        else
            uri=$(awk '/^deb / && / bookworm / {print $2; exit}' /etc/apt/sources.list)
            keyring=/usr/share/keyrings/debian-archive-keyring.gpg
        fi
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
            "${uri:-http://deb.debian.org/debian}" "${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}" > "$backports"
    fi
    apt_target=(-t bookworm-backports)
fi

apt-get update -qq
apt-get install -y -qq "${apt_target[@]}" "${packages[@]}" >/dev/null
# binutils (as, ld), iproute2 and e2fsprogs: the kexec scenario's L1 image
# (tests/kexec/build-l1.sh) and its hosts, which run this machine's userland. tini: the PID 1 of the tests'
# own PID namespace (scripts/test.sh), reaping the processes orphaned there.
apt-get install -y -qq kexec-tools busybox-static cpio gzip kmod xz-utils zstd python3-venv \
    openssh-client rsync shellcheck binutils iproute2 e2fsprogs pkg-config gcc python3-dev tini >/dev/null
# The rolling playbook's tests (tests/integration/test_rollout.py): a real Prometheus for the alert gate, a real
# browser (headless Chromium) that renders the HTML report and takes its screenshot, and a font for it; and
# for the unit tests of host_status's reboot_required, the RHEL family's real `dnf needs-restarting -r`, with rpm
# and rpmbuild for an RPM database of the test's own. Without recommends: no desktop, no services.
apt-get install -y -qq --no-install-recommends prometheus chromium fonts-dejavu-core dnf-plugins-core rpm >/dev/null

# "QEMU emulator version 10.0.2 (Debian ...)": cpr-reboot needs 8.2, VFIO guests and the test bed 9.0.
qemu_version=$(qemu-system-x86_64 --version | sed -nE '1s/.*version ([0-9]+\.[0-9]+(\.[0-9]+)?).*/\1/p')
[ -n "$qemu_version" ] || die "cannot read the QEMU version from: $(qemu-system-x86_64 --version | head -n 1)"
if [ "${qemu_version%%.*}" -lt 9 ]; then
    die "QEMU ${qemu_version} is installed, and hypervisor.cpr needs 9.0 or newer" \
        "(8.2 for cpr-reboot, 9.0 for VFIO guests). Install QEMU from bookworm-backports on Debian 12" \
        "(apt-get install -t bookworm-backports qemu-system-x86 qemu-utils) or use Debian 13"
fi
echo "QEMU ${qemu_version}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -r "$REPO_ROOT/requirements.txt" -r "$REPO_ROOT/tests/requirements.txt"
echo "virtual environment: $VENV"
