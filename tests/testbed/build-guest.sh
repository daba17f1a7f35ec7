#!/usr/bin/env bash
# Builds the test guest: a Debian kernel and a gzip'd cpio initramfs holding
# busybox, qemu-ga and the init script from guest/. Everything comes from the
# host distribution's apt repositories, nothing else from the network.
#
#   tests/testbed/build-guest.sh [OUTDIR]
#
# OUTDIR defaults to ${HYPERVISOR_CPR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hypervisor-cpr}/guest
# and receives vmlinuz, initrd.img, cmdline (the kernel command line to boot
# with) and versions. Nothing is rebuilt while the stamp (a hash of this
# script and guest/) matches. Run as root on Debian 12 or 13 (amd64).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/common.sh
. "$HERE/../../scripts/lib/common.sh"
# shellcheck source=scripts/lib/initramfs.sh
. "$REPO_ROOT/scripts/lib/initramfs.sh"
OUTDIR=$(realpath -m "${1:-$CACHE/guest}")
# Kernel modules the guest needs when the kernel has them as modules: the
# virtio PCI transport and virtio-serial for the guest agent's port.
MODULES=(virtio_pci virtio_console)
# console=ttyS0: the serial log is the only console. mem_sleep_default=deep:
# "mem" must mean ACPI S3 (which QEMU reports as "suspended"), not s2idle.
# no_timer_check, i8042.*, mitigations=off: each saves time under TCG.
# panic=-1 with QEMU's -no-reboot turns a guest panic into a QEMU exit.
CMDLINE="console=ttyS0 quiet panic=-1 no_timer_check mem_sleep_default=deep i8042.noaux i8042.nokbd mitigations=off"

stamp=$(inputs_hash "${BASH_SOURCE[0]}" "$HERE/guest")
if [ -f "$OUTDIR/vmlinuz" ] && [ -f "$OUTDIR/initrd.img" ] && [ "$(cat "$OUTDIR/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "guest up to date in $OUTDIR"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "run as root (it installs build tools with apt-get)"
[ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64 hosts are supported"

mkdir -p "$OUTDIR"
# One build at a time per OUTDIR (parallel test runs may all ask for it).
exec 9>"$OUTDIR/.lock"
flock 9
if [ -f "$OUTDIR/vmlinuz" ] && [ -f "$OUTDIR/initrd.img" ] && [ "$(cat "$OUTDIR/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "guest up to date in $OUTDIR"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
need_build_tools cpio:cpio modinfo:kmod zstd:zstd xz:xz-utils

work=$(mktemp -d "$OUTDIR/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# The kernel linux-image-amd64 currently points to, e.g. linux-image-6.1.0-56-amd64.
kver=$(default_kernel)
kpkg=linux-image-$kver
apt_download "$kpkg" busybox-static qemu-guest-agent
dpkg-deb -x "$kpkg"_*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
dpkg-deb -x qemu-guest-agent_*.deb qga

root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,etc,var,lib/modules}
ln -s /run "$root/var/run"

# busybox and a symlink per applet, so qemu-ga's guest-exec finds /bin/cat etc.
initramfs_busybox "$root" busybox/bin/busybox

# qemu-ga, the shared libraries it links (copied from the host, which has the
# same distribution) and the dynamic loader, at the paths ldd reports.
install -m 0755 qga/usr/sbin/qemu-ga "$root/usr/sbin/qemu-ga"
if ldd qga/usr/sbin/qemu-ga | grep -q 'not found'; then
    mapfile -t libs < <(dpkg-deb -f qemu-guest-agent_*.deb Depends | tr ',' '\n' | awk '$1 ~ /^lib/ && $1 != "libc6" {print $1}')
    apt-get install -y -qq --no-install-recommends "${libs[@]}" >/dev/null
fi
ldd qga/usr/sbin/qemu-ga | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' | while read -r lib; do
    [ -f "$lib" ] || die "qemu-ga needs $lib, which is missing on this host"
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
if ldd qga/usr/sbin/qemu-ga | grep -q 'not found'; then
    die "qemu-ga needs libraries this host lacks: $(ldd qga/usr/sbin/qemu-ga | grep 'not found')"
fi

# Kernel modules with their dependencies, decompressed and listed in load order for /init.
moddir=$(find kernel -type d -path "*/lib/modules/$kver" | head -n1)
[ -n "$moddir" ] || die "$kpkg has no lib/modules/$kver"
load_order=$(initramfs_modules "$root" "$moddir" "${MODULES[@]}")

install -m 0755 "$HERE/guest/init" "$root/init"
install -m 0755 "$HERE/guest/pm-is-supported" "$root/usr/sbin/pm-is-supported"
install -m 0755 "$HERE/guest/pm-suspend" "$root/usr/sbin/pm-suspend"
install -m 0755 "$HERE/guest/shutdown" "$root/sbin/shutdown"

initramfs_pack "$root" initrd.img 6
cp "$(find kernel -path "*/boot/vmlinuz-$kver")" vmlinuz

qga_version=$(dpkg-deb -f qemu-guest-agent_*.deb Version)
busybox_version=$(dpkg-deb -f busybox-static_*.deb Version)
kernel_version=$(dpkg-deb -f "$kpkg"_*.deb Version)
mv -f vmlinuz "$OUTDIR/vmlinuz"
mv -f initrd.img "$OUTDIR/initrd.img"
echo "$CMDLINE" > "$OUTDIR/cmdline"
printf 'kernel %s %s\nmodules %s\nqemu-guest-agent %s\nbusybox-static %s\n' \
    "$kpkg" "$kernel_version" "${load_order:-none}" "$qga_version" "$busybox_version" > "$OUTDIR/versions"
echo "$stamp" > "$OUTDIR/stamp"
echo "guest built in $OUTDIR ($kpkg, qemu-guest-agent $qga_version)"
