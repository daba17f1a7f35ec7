# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""Where a VM's RAM lives, and whether it survives a QEMU restart or a reboot.

RAM can stay in place across cpr-reboot only when it is shared and backed by
a path a new QEMU can map again: a regular file, a block device or a device
DAX. It survives a reboot only when that path is on persistent storage: a
disk filesystem, a DAX/pmem filesystem or device. tmpfs, ramfs, hugetlbfs
and anonymous memory do not.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

VOLATILE_FILESYSTEMS = frozenset(("tmpfs", "ramfs", "hugetlbfs", "devtmpfs"))
# Block devices whose contents live in RAM.
VOLATILE_BLOCK_PREFIXES = ("ram", "zram")
ANONYMOUS_BACKENDS = frozenset(("memory-backend-ram", "memory-backend-memfd", "memory-backend-epc"))


@dataclass
class MemoryBackend:
    """One memory backend of a VM and where its memory lives."""

    id: str
    type: str
    size: int
    share: bool
    mem_path: Optional[str]
    # anonymous | file | directory | block-device | dax-device | char-device | missing
    kind: str
    filesystem: Optional[str]
    dax: bool
    # A new QEMU can map the same memory again by its path.
    mappable: bool
    # The memory survives a reboot of the host.
    persistent: bool
    note: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class _Mount:
    device: str
    mount_point: str
    fstype: str
    options: List[str]


def read_mountinfo(pid: Optional[int]) -> List[_Mount]:
    """The mount table as the process sees it (QEMU may run in its own mount namespace)."""
    path = f"/proc/{pid}/mountinfo" if pid else "/proc/self/mountinfo"
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    mounts = []
    for line in lines:
        # id parent major:minor root mount-point options [optional...] - fstype source super-options
        left, separator, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not separator:
            continue
        if len(fields) < 6 or len(tail) < 3:
            continue
        options = fields[5].split(",") + tail[2].split(",")
        mounts.append(_Mount(fields[2], _unescape(fields[4]), tail[0], options))
    return mounts


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040); nothing else."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), path)


def mount_of(path: str, st_dev: int, mounts: List[_Mount]) -> Optional[_Mount]:
    """The mount a path is on: same device number, deepest mount point that contains it."""
    device = f"{os.major(st_dev)}:{os.minor(st_dev)}"

    def contains(mount: _Mount) -> bool:
        return path == mount.mount_point or path.startswith(mount.mount_point.rstrip("/") + "/")

    candidates = [m for m in mounts if m.device == device] or [m for m in mounts if contains(m)]
    candidates.sort(key=lambda m: (contains(m), len(m.mount_point)), reverse=True)
    return candidates[0] if candidates else None


def _sys_device_name(kind: str, rdev: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/sys/dev/{kind}/{os.major(rdev)}:{os.minor(rdev)}"))
    except OSError:
        return ""


def _loop_backing_file(name: str) -> Optional[str]:
    try:
        with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def locate(path: str, pid: Optional[int]) -> Tuple[str, Optional[str], bool, bool, str]:
    """Classify a mem-path: (kind, filesystem, dax, persistent, note)."""
    root = f"/proc/{pid}/root" if pid and os.access(f"/proc/{pid}/root", os.R_OK) else ""
    try:
        st = os.stat(root + path)
    except OSError as exc:
        return "missing", None, False, False, f"mem-path {path} cannot be read ({exc.strerror}): a new QEMU could not map it"

    if stat.S_ISDIR(st.st_mode):
        return ("directory", None, False, False,
                f"mem-path {path} is a directory: QEMU's file in it is unlinked and dies with the process")

    if stat.S_ISBLK(st.st_mode):
        name = _sys_device_name("block", st.st_rdev)
        if name.startswith(VOLATILE_BLOCK_PREFIXES):
            return "block-device", None, False, False, f"block device {name} keeps its data in RAM"
        backing = _loop_backing_file(name) if name.startswith("loop") else None
        if backing:
            fstype, dax, persistent, note = locate(backing, None)[1:]
            return "block-device", fstype, dax, persistent, f"loop device {name} over {backing}: {note}"
        dax = name.startswith("pmem")
        kind_text = "persistent memory" if dax else "a disk"
        return "block-device", None, dax, True, f"block device {name or path} is {kind_text}"

    if stat.S_ISCHR(st.st_mode):
        name = _sys_device_name("char", st.st_rdev)
        if name.startswith("dax"):
            return "dax-device", None, True, True, f"device DAX {name} on persistent memory"
        return "char-device", None, False, False, f"character device {name or path} is not known to persist"

    fstype, dax, persistent, note = filesystem_of(path, st.st_dev, pid)
    return "file", fstype, dax, persistent, note


def filesystem_of(path: str, st_dev: int, pid: Optional[int]) -> Tuple[Optional[str], bool, bool, str]:
    """The filesystem a file or directory is on: (type, dax, survives a reboot, note)."""
    mount = mount_of(path, st_dev, read_mountinfo(pid))
    fstype = mount.fstype if mount else None
    dax = mount is not None and any(o == "dax" or (o.startswith("dax=") and o != "dax=never") for o in mount.options)
    if mount and fstype in VOLATILE_FILESYSTEMS:
        return fstype, dax, False, f"{path} is on {fstype} ({mount.mount_point}), which lives in RAM"
    where = f"{fstype} ({mount.mount_point})" if mount else "an unknown filesystem"
    return fstype, dax, True, f"{path} is on {where}, which survives a reboot"


class QemuBackend(NamedTuple):
    """A memory backend as QEMU describes it (query-memdev and QOM)."""

    id: str
    type: str
    size: int
    share: bool
    mem_path: Optional[str]
    discard_data: bool


def classify(backend: QemuBackend, pid: Optional[int]) -> MemoryBackend:
    """Build the facts of one memory backend of the QEMU with this pid."""
    if backend.type in ANONYMOUS_BACKENDS or not backend.mem_path:
        note = f"{backend.type} is anonymous memory: it dies with the QEMU process"
        return MemoryBackend(backend.id, backend.type, backend.size, backend.share, None, "anonymous", None, False,
                             False, False, note)
    kind, fstype, dax, persistent, note = locate(backend.mem_path, pid)
    mappable = kind in ("file", "block-device", "dax-device")
    if mappable and backend.discard_data:
        mappable = False
        note += "; discard-data=on makes QEMU drop the contents when it exits"
    return MemoryBackend(backend.id, backend.type, backend.size, backend.share, backend.mem_path, kind, fstype, dax,
                         mappable, persistent, note)
