#!/usr/bin/env bash
# Builds what the kexec scenario's test hypervisors ("L1 hosts") boot: two
# Debian kernels (an OLD one they boot and a NEW one they kexec into), an
# initramfs per kernel that mounts this machine's root file system read-only
# over 9p under a writable tmpfs overlay, and a "layer" directory laid over
# that root (kernels in /boot, their modules, sshd, the L1 init scripts).
#
#   tests/kexec/build-l1.sh [OUTDIR]
#
# OUTDIR defaults to ${HYPERVISOR_CPR_CACHE:-~/.cache/hypervisor-cpr}/kexec-l1.
# Kernels: KEXEC_OLD_KERNEL (default 6.1.0-47-amd64, or the oldest of the new
# one's series apt still has) and KEXEC_NEW_KERNEL (default: the one
# linux-image-amd64 depends on, e.g. 6.1.0-56-amd64), both
# from the host's apt sources with `apt-get download` (nothing is installed).
# Nothing is rebuilt while the stamp (script, l1/ and kernel names) matches.
# Run as root on Debian 12 (amd64); the L1 hosts run this machine's own
# userland, so it must have QEMU, Python and kexec-tools installed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/common.sh
. "$HERE/../../scripts/lib/common.sh"
# shellcheck source=scripts/lib/initramfs.sh
. "$REPO_ROOT/scripts/lib/initramfs.sh"
OUTDIR=$(realpath -m "${1:-$CACHE/kexec-l1}")
OLD=${KEXEC_OLD_KERNEL:-}
NEW=${KEXEC_NEW_KERNEL:-}
# Modules the initramfs loads, in this order, with their dependencies: PCI
# virtio, the 9p root, the overlay, the state disk (ext4 on virtio-blk), the
# NIC, and legacy persistent memory (memmap=SIZE!OFFSET -> /dev/pmem0).
MODULES=(virtio_pci virtio_blk virtio_net 9pnet_virtio 9p overlay crc32c_generic ext4 nd_e820 nd_pmem)

[ "$(id -u)" -eq 0 ] || die "run as root"
[ -n "$NEW" ] || NEW=$(default_kernel)
# Whether apt can download this kernel (it has a candidate version of it).
downloadable() { apt-cache policy "linux-image-$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" {ok = 1} END {exit !ok}'; }
if [ -z "$OLD" ]; then
    # 6.1.0-47-amd64 while the archive has it (docs/kexec-scenario.md shows runs
    # with it); else, as Debian drops old kernel ABIs at point releases, the
    # oldest kernel of the new one's series that it still has.
    OLD=6.1.0-47-amd64
    if ! downloadable "$OLD"; then
        series=$(echo "$NEW" | cut -d. -f1,2)
        mapfile -t kernels < <(apt-cache pkgnames "linux-image-$series." | sed -n 's/^linux-image-//p' \
            | grep -E '^[0-9]+\.[0-9]+\.[0-9]+(-[0-9]+|\+deb[0-9][^-]*)-amd64$' | sort -V)
        OLD=
        for kernel in "${kernels[@]}"; do
            if [ "$kernel" != "$NEW" ] && downloadable "$kernel"; then OLD=$kernel; break; fi
        done
        [ -n "$OLD" ] || die "apt has no kernel of the $series series but $NEW; set KEXEC_OLD_KERNEL"
    fi
fi
[ "$OLD" != "$NEW" ] || die "old and new kernel are both $OLD"
if [ "$(printf '%s\n%s\n' "$OLD" "$NEW" | sort -V | tail -n1)" != "$NEW" ]; then
    die "KEXEC_NEW_KERNEL $NEW is not newer than KEXEC_OLD_KERNEL $OLD"
fi

# The test-bed guest (the Linux L2 guest) is built first: it is part of the image.
"$REPO_ROOT/tests/testbed/build-guest.sh" >/dev/null || die "tests/testbed/build-guest.sh failed"
GUEST=$CACHE/guest
stamp=$( { inputs_hash "${BASH_SOURCE[0]}" "$HERE/l1" "$HERE/l2"; echo "$OLD $NEW"; cat "$GUEST/stamp"; } |
           sha256sum | cut -d' ' -f1)
up_to_date() { [ "$(cat "$OUTDIR/stamp" 2>/dev/null)" = "$stamp" ] && [ -d "$OUTDIR/layer/boot" ]; }
if up_to_date; then echo "L1 host image up to date in $OUTDIR"; exit 0; fi

mkdir -p "$OUTDIR"
exec 9>"$OUTDIR/.lock"
flock 9
if up_to_date; then echo "L1 host image up to date in $OUTDIR"; exit 0; fi

need_build_tools cpio:cpio depmod:kmod modinfo:kmod xz:xz-utils zstd:zstd as:binutils ld:binutils busybox:busybox-static
BUSYBOX=$(command -v busybox)
for tool in qemu-system-x86_64 kexec python3 mkfs.ext4 blkid ip; do
    command -v "$tool" >/dev/null || die "this machine lacks $tool, which the L1 hosts run from its root file system"
done

work=$(mktemp -d "$OUTDIR/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

apt_download "linux-image-$OLD" "linux-image-$NEW" openssh-server openssh-sftp-server libwrap0

layer=$work/layer
# usr/lib and usr/sbin, never lib or sbin: on a merged-/usr root those are
# symbolic links, and a directory of the same name in a layer above hides them.
mkdir -p "$layer"/{boot,usr/lib/modules,usr/sbin,usr/lib/openssh,usr/lib/kexec-l1,etc/kexec-l1,srv/pmem,var/lib/qemu-cpr}

# sshd from openssh-server, unpacked (not installed): its libraries are this
# machine's, libwrap0 excepted.
dpkg-deb -x openssh-server_*.deb ssh
dpkg-deb -x openssh-sftp-server_*.deb ssh
dpkg-deb -x libwrap0_*.deb ssh
install -m 0755 ssh/usr/sbin/sshd "$layer/usr/sbin/sshd"
install -m 0755 ssh/usr/lib/openssh/sftp-server "$layer/usr/lib/openssh/sftp-server"
mkdir -p "$layer/usr/lib/x86_64-linux-gnu"
cp -a ssh/usr/lib/x86_64-linux-gnu/libwrap.so.0* "$layer/usr/lib/x86_64-linux-gnu/" 2>/dev/null \
    || cp -a ssh/lib/x86_64-linux-gnu/libwrap.so.0* "$layer/usr/lib/x86_64-linux-gnu/"
if LD_LIBRARY_PATH=$layer/usr/lib/x86_64-linux-gnu ldd "$layer/usr/sbin/sshd" | grep -q 'not found'; then
    die "sshd needs libraries this machine lacks: $(LD_LIBRARY_PATH=$layer/usr/lib/x86_64-linux-gnu ldd "$layer/usr/sbin/sshd" | grep 'not found')"
fi

install -m 0755 "$BUSYBOX" "$layer/usr/lib/kexec-l1/busybox"
install -m 0755 "$HERE/l1/rc" "$layer/usr/lib/kexec-l1/rc"
install -m 0644 "$HERE/l1/inittab" "$layer/etc/inittab"
install -m 0644 "$HERE/l1/sshd_config" "$layer/usr/lib/kexec-l1/sshd_config"

# The L1 hosts run /usr/bin/python3 of this machine: qemu.qmp and jmespath
# (pure Python) and xxhash (built for this very Python) are copied into its
# dist-packages in the layer, from the virtual environment of
# scripts/install-host-deps.sh.
site=$("$VENV/bin/python" -c 'import os, qemu.qmp; print(os.path.dirname(os.path.dirname(os.path.dirname(qemu.qmp.__file__))))') \
    || die "no qemu.qmp in $VENV: run scripts/install-host-deps.sh"
dist=$layer/usr/lib/python3/dist-packages
mkdir -p "$dist/qemu"
cp -a "$site/qemu/qmp" "$dist/qemu/"
cp -a "$site"/qemu_qmp-*.dist-info "$site/jmespath" "$site"/jmespath-*.dist-info "$site/xxhash" \
    "$site"/xxhash-*.dist-info "$dist/"
find "$dist" -name __pycache__ -prune -exec rm -rf {} +

# The L2 guests: the firmware-only pattern program, and the test-bed guest.
as --32 -o pattern.o "$HERE/l2/pattern.S"
ld -m elf_i386 -Ttext 0x100000 -o "$layer/usr/lib/kexec-l1/pattern.elf" pattern.o
mkdir -p "$layer/usr/lib/kexec-l1/guest"
cp "$GUEST"/{vmlinuz,initrd.img,cmdline,versions} "$layer/usr/lib/kexec-l1/guest/"

build_kernel() {
    local kver=$1 kdir=$work/k-$1 root=$work/initramfs-$1 moddir order
    dpkg-deb -x "linux-image-${kver}"_*.deb "$kdir"
    moddir=$kdir/lib/modules/$kver
    [ -d "$moddir" ] || die "linux-image-$kver has no lib/modules/$kver"
    cp "$kdir/boot/vmlinuz-$kver" "$kdir/boot/config-$kver" "$kdir/boot/System.map-$kver" "$layer/boot/"
    mv "$moddir" "$layer/usr/lib/modules/$kver"
    depmod -b "$layer/usr" "$kver" 2>/dev/null || depmod -b "$layer" "$kver"
    moddir=$layer/usr/lib/modules/$kver

    mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,l0,layer,cfg,rw,newroot,lib/modules}
    initramfs_busybox "$root" "$BUSYBOX" sh mount umount mkdir insmod cat sleep switch_root echo ls
    order=$(initramfs_modules "$root" "$moddir" "${MODULES[@]}")
    install -m 0755 "$HERE/l1/init" "$root/init"
    initramfs_pack "$root" "$layer/boot/initrd.img-$kver" 1
    echo "$kver: $order"
}
build_kernel "$OLD"
build_kernel "$NEW"

printf 'old %s\nnew %s\nopenssh-server %s\n' "$OLD" "$NEW" "$(dpkg-deb -f openssh-server_*.deb Version)" > versions
rm -rf "$OUTDIR/layer" "$OUTDIR/versions"
mv "$layer" "$OUTDIR/layer"
mv versions "$OUTDIR/versions"
echo "$stamp" > "$OUTDIR/stamp"
echo "L1 host image built in $OUTDIR (boots $OLD, kexecs into $NEW)"
