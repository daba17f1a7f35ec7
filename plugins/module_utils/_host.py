# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""What a hypervisor runs and has installed: its kernel, boot id, the kernels in /boot, kexec and systemd; and which
process is which, across pid reuse and reboots."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

BOOT_DIR = "/boot"
IMAGE_PREFIX = "vmlinuz-"
# Where kexec lives when the PATH of a module's shell lacks the sbin directories.
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as handle:
        return handle.read().strip()


def kernel_started_at() -> float:
    """When the running kernel started, in seconds since the epoch (from /proc/uptime)."""
    with open("/proc/uptime", encoding="utf-8") as handle:
        return time.time() - float(handle.read().split()[0])


def process_start(pid: int) -> Optional[int]:
    """When a process started, in clock ticks since boot (/proc/<pid>/stat field 22); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after the command: state is field 3, starttime field 22.
    return int(fields[19]) if len(fields) > 19 and fields[0] != "Z" else None


def process_identity(pid: int) -> Dict[str, Any]:
    """What tells this process apart from any other, even one that reuses its pid later or on another boot."""
    return {"pid": pid, "start_time": process_start(pid), "boot_id": boot_id()}


def is_running(identity: Optional[Dict[str, Any]]) -> bool:
    """Whether the process an identity was taken of still runs (same boot, same pid, same start)."""
    if not identity or not identity.get("pid") or identity.get("boot_id") != boot_id():
        return False
    return process_start(int(identity["pid"])) == identity.get("start_time")


def started_at(identity: Dict[str, Any]) -> Optional[float]:
    """When the process of an identity taken on this boot started, in seconds since the epoch."""
    try:
        with open("/proc/stat", encoding="utf-8") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + identity["start_time"] / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, KeyError, TypeError, ValueError):
        return None


def unit_of(pid: int, cgroup: Optional[str] = None) -> Optional[str]:
    """The systemd unit (service or scope) a process runs in, from /proc/<pid>/cgroup; None outside one."""
    if cgroup is None:
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as handle:
                cgroup = handle.read()
        except OSError:
            return None
    for line in cgroup.splitlines():
        # cgroup v2: "0::/system.slice/qemu@web1.service"; v1: "1:name=systemd:/machine.slice/machine-qemu.scope".
        # A user's own units and sessions (user.slice) are not the system's: not counted.
        hierarchy, _sep, path = line.partition(":")[2].partition(":")
        if hierarchy not in ("", "name=systemd") or path.startswith("/user.slice/"):
            continue
        units = [part for part in path.split("/") if part.endswith((".service", ".scope"))]
        if units:
            return units[-1]
    return None


def parent_of(pid: int) -> Optional[Tuple[int, str]]:
    """(pid, command name) of a process's parent."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/comm", encoding="utf-8") as handle:
            return ppid, handle.read().strip()
    except (OSError, IndexError, ValueError):
        return None


def describe_process(pid: int) -> str:
    """pid, start time and unit, for a message that names a process an operator must deal with."""
    when = started_at(process_identity(pid))
    unit = unit_of(pid)
    return (f"pid {pid}" + (time.strftime(", started %Y-%m-%d %H:%M:%S UTC", time.gmtime(when)) if when else "")
            + (f", in systemd unit {unit}" if unit else ""))


def systemd_runs_host() -> bool:
    """PID 1 is systemd (containers and small hosts often run another init)."""
    return os.path.isdir("/run/systemd/system")


def version_key(release: str) -> Tuple[Any, ...]:
    """Order kernel releases as versions: 6.1.0-28-amd64 after 6.1.0-9-amd64, 6.10 after 6.9."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.findall(r"\d+|[^\d.\-+~_]+", release))


def installed_kernels(boot_dir: str = BOOT_DIR) -> List[Dict[str, Any]]:
    """The kernel images in boot_dir, newest release first, each with its initrd when there is one."""
    try:
        entries = os.listdir(boot_dir)
    except OSError:
        return []
    releases = [e[len(IMAGE_PREFIX):] for e in entries
                if e.startswith(IMAGE_PREFIX) and os.path.isfile(os.path.join(boot_dir, e))]
    return [{"release": release, "image": os.path.join(boot_dir, IMAGE_PREFIX + release),
             "initrd": _first_existing(initrd_candidates(release, "", boot_dir)) or None}
            for release in sorted(releases, key=version_key, reverse=True)]


def initrd_candidates(release: str, initrd: str, boot_dir: str = BOOT_DIR) -> List[str]:
    """The initrd given, else the names Debian and the RHEL family give it."""
    if initrd:
        return [initrd]
    return [os.path.join(boot_dir, f"initrd.img-{release}"), os.path.join(boot_dir, f"initramfs-{release}.img")]


def _first_existing(paths: List[str]) -> str:
    return next((path for path in paths if os.path.exists(path)), "")


def target_kernel(kernel: str, initrd: str, release: str, boot_dir: str = BOOT_DIR) -> Dict[str, Any]:
    """The kernel an update boots into.

    kernel is an image path, a release (meaning <boot_dir>/vmlinuz-<release>) or empty (the newest installed).
    release is what the kernel reports once it runs; empty: taken from the image's name, vmlinuz-<release>.
    """
    if kernel.startswith("/"):
        image = kernel
    elif kernel:
        image = os.path.join(boot_dir, IMAGE_PREFIX + kernel)
    else:
        newest = installed_kernels(boot_dir)
        image = newest[0]["image"] if newest else ""
    name = os.path.basename(image)
    if not release and name.startswith(IMAGE_PREFIX):
        release = name[len(IMAGE_PREFIX):]
    candidates = initrd_candidates(release, initrd, boot_dir) if release else []
    return {
        "image": image,
        "image_exists": bool(image) and os.path.isfile(image),
        "release": release,
        "initrd": _first_existing(candidates),
        "initrd_candidates": candidates,
    }


def kexec_tools() -> Dict[str, Any]:
    """Whether kexec is installed, its version, and whether a kernel is loaded for kexec -e."""
    path = shutil.which("kexec", path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")
    version: Optional[str] = None
    if path:
        try:
            version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True,
                                     timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            path = None
    try:
        with open("/sys/kernel/kexec_loaded", encoding="utf-8") as handle:
            loaded = handle.read().strip() == "1"
    except OSError:
        loaded = False
    return {"path": path, "version": version, "loaded": loaded}


def status(kernel: str = "", initrd: str = "", release: str = "") -> Dict[str, Any]:
    """What the host_status module returns."""
    return {
        "changed": False,
        "kernel": platform.release(),
        "boot_id": boot_id(),
        "systemd": systemd_runs_host(),
        "kexec": kexec_tools(),
        "kernels": installed_kernels(),
        "target": target_kernel(kernel, initrd, release),
    }
