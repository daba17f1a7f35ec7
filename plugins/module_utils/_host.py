# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""What a hypervisor runs and has installed: its kernel, boot id, the kernels in /boot, kexec and systemd."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Tuple

BOOT_DIR = "/boot"
IMAGE_PREFIX = "vmlinuz-"
# Where kexec lives when the PATH of a module's shell lacks the sbin directories.
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as handle:
        return handle.read().strip()


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
