# shellcheck shell=bash
# Building blocks of the test images' initramfs, shared by tests/testbed/build-guest.sh (the
# test-bed guest) and tests/kexec/build-l1.sh (the kexec lab's L1 hosts). Source it after
# scripts/lib/common.sh (it uses die). Everything comes from this machine's apt sources.
#
#   inputs_hash PATH...                 hash of files and directory trees (and of these libraries)
#   default_kernel                      the kernel release linux-image-amd64 depends on, e.g. 6.1.0-56-amd64
#   need_build_tools COMMAND:PACKAGE... apt-get install the packages of the commands that are missing
#   apt_download PACKAGE...             apt-get download into the current directory (updates the lists once on failure)
#   initramfs_busybox ROOT BUSYBOX [APPLET...]
#                                       ROOT/bin/busybox and a link per applet (default: every applet, at its path)
#   initramfs_modules ROOT MODDIR MODULE...
#                                       the modules and their dependencies, decompressed, in ROOT/lib/modules,
#                                       with ROOT/lib/modules/load-order; prints the load order
#   initramfs_pack ROOT OUTPUT [GZIP_LEVEL]
#                                       a gzip'd newc cpio of ROOT, owned by root, in a stable order

if [ -z "${__HYPERVISOR_CPR_INITRAMFS:-}" ]; then
__HYPERVISOR_CPR_INITRAMFS=1

__INITRAMFS_LIBS=("${BASH_SOURCE[0]}" "$(dirname "${BASH_SOURCE[0]}")/common.sh")

inputs_hash() {
    local path
    {
        for path in "${__INITRAMFS_LIBS[@]}" "$@"; do
            if [ -d "$path" ]; then
                (cd "$path" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
            else
                sha256sum < "$path"
            fi
        done
    } | sha256sum | cut -d' ' -f1
}

default_kernel() {
    local release
    release=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {sub("linux-image-", "", $2); print $2; exit}')
    if [ -z "$release" ]; then
        apt-get update -qq
        release=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {sub("linux-image-", "", $2); print $2; exit}')
    fi
    [ -n "$release" ] || die "cannot tell which kernel linux-image-amd64 depends on"
    echo "$release"
}

need_build_tools() {
    local pair missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# apt-get download needs no install; as root into a private directory it warns that it runs
# unsandboxed, which is fine here. Stale package lists point at files the mirror dropped: update once.
__apt_download() { apt-get download -q "$@" 2>&1 | { grep -v unsandboxed || true; }; }
apt_download() {
    echo "downloading $*"
    if ! __apt_download "$@"; then
        apt-get update -qq
        __apt_download "$@" || die "apt-get download $* failed"
    fi
}

initramfs_busybox() {
    local root=$1 busybox=$2 applet
    shift 2
    mkdir -p "$root/bin"
    install -m 0755 "$busybox" "$root/bin/busybox"
    if [ $# -eq 0 ]; then
        # Every applet at its own path, so that e.g. qemu-ga's guest-exec finds /bin/cat.
        for applet in $("$busybox" --list-full); do
            mkdir -p "$root/$(dirname "$applet")"
            [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
        done
    else
        for applet in "$@"; do
            ln -s busybox "$root/bin/$applet"
        done
    fi
}

# Kernel modules are .ko, .ko.xz, .ko.zst or .ko.gz depending on the kernel's build; busybox insmod
# takes plain .ko only. Names are compared with '-' as '_', as modprobe does.
initramfs_modules() {
    local root=$1 moddir=$2 path name
    shift 2
    local -A __modpath=() __added=()
    local __order=()
    while read -r path; do
        name=$(basename "$path"); name=${name%%.ko*}; name=${name//-/_}
        __modpath[$name]=$path
    done < <(find "$moddir" -name '*.ko*')
    mkdir -p "$root/lib/modules"
    __initramfs_add_module() {
        local name=${1//-/_} path dep
        [ -z "${__added[$name]:-}" ] || return 0
        __added[$name]=1
        path=${__modpath[$name]:-}
        if [ -z "$path" ]; then
            tr '-' '_' < "$moddir/modules.builtin" | grep -q "/$name\.ko" && return 0
            die "$(basename "$moddir") has no module $name"
        fi
        case $path in
            *.ko) cp "$path" "$root/lib/modules/$name.ko" ;;
            *.ko.xz) xz -dc "$path" > "$root/lib/modules/$name.ko" ;;
            *.ko.zst) zstd -qdc "$path" > "$root/lib/modules/$name.ko" ;;
            *.ko.gz) gzip -dc "$path" > "$root/lib/modules/$name.ko" ;;
            *) die "unknown module format: $path" ;;
        esac
        for dep in $(modinfo -F depends "$root/lib/modules/$name.ko" | tr ',' ' '); do
            __initramfs_add_module "$dep"
        done
        __order+=("$name")
    }
    for name in "$@"; do
        __initramfs_add_module "$name"
    done
    unset -f __initramfs_add_module
    printf '%s\n' "${__order[@]}" > "$root/lib/modules/load-order"
    echo "${__order[*]}"
}

initramfs_pack() {
    local root=$1 output=$2 level=${3:-6}
    (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) |
        gzip "-$level" > "$output"
}

fi
