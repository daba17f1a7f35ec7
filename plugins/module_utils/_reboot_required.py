# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""Whether the host's distribution says it needs a reboot: /var/run/reboot-required on the Debian family (written by
update-notifier-common's and the kernel packages' hooks), `needs-restarting -r` on the RHEL family (dnf-utils,
yum-utils; `dnf needs-restarting -r` where only dnf has it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Sequence

SENTINEL = "/var/run/reboot-required"
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
DEBIAN_FAMILY = {"debian", "ubuntu"}
RHEL_FAMILY = {"rhel", "fedora", "centos"}
# Where needs-restarting and dnf live when a module's PATH lacks the sbin directories.
SEARCH_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"
TIMEOUT = 120


def os_family(os_release: str) -> Optional[str]:
    """debian, rhel or None, from the text of os-release (ID and ID_LIKE)."""
    ids = set()
    for line in os_release.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ID", "ID_LIKE"):
            ids.update(value.strip().strip("\"'").lower().split())
    if ids & DEBIAN_FAMILY:
        return "debian"
    if ids & RHEL_FAMILY:
        return "rhel"
    return None


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _result(required: Optional[bool], source: Optional[str], detail: str, packages: Sequence[str] = ()) -> Dict[str, Any]:
    return {"required": required, "source": source, "detail": detail, "packages": list(packages)}


def from_sentinel(root: str = "/") -> Dict[str, Any]:
    """The Debian family's answer: the sentinel file, and the packages that asked for the reboot (its .pkgs)."""
    path = os.path.join(root, SENTINEL.lstrip("/"))
    text = _read(path)
    if text is None:
        return _result(False, SENTINEL, f"{SENTINEL} does not exist")
    packages = []
    for line in (_read(path + ".pkgs") or "").splitlines():
        if line.strip() and line.strip() not in packages:
            packages.append(line.strip())
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    detail = f"{SENTINEL} exists" + (f" ({first.strip('* ')})" if first else "")
    return _result(True, SENTINEL, detail + (f", asked for by {', '.join(packages)}" if packages else ""), packages)


def needs_restarting_command(search_path: Optional[str] = None) -> Optional[List[str]]:
    """needs-restarting -r, or dnf needs-restarting -r where only dnf has it; None when neither is installed."""
    path = search_path or f"{os.environ.get('PATH', '')}:{SEARCH_PATH}"
    tool = shutil.which("needs-restarting", path=path)
    if tool:
        return [tool, "-r"]
    dnf = shutil.which("dnf", path=path)
    return [dnf, "needs-restarting", "-r"] if dnf else None


def from_needs_restarting(command: Optional[Sequence[str]]) -> Dict[str, Any]:
    """The RHEL family's answer: needs-restarting -r exits 1 when a reboot is needed, 0 when not."""
    if not command:
        return _result(None, "needs-restarting -r", "needs-restarting is not installed (dnf-utils or yum-utils has it)")
    shown = " ".join(os.path.basename(part) if i == 0 else part for i, part in enumerate(command))
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=TIMEOUT, check=False,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError) as exc:
        return _result(None, shown, f"{shown} could not run: {exc}")
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode not in (0, 1):
        return _result(None, shown, f"{shown} exited {done.returncode}" + (f": {lines[-1]}" if lines else ""))
    # "Core libraries or services have been updated since boot-up:", "  * kernel", ..., then the verdict
    # ("Reboot is required to fully utilize these updates." or "Reboot should not be necessary.") and a link.
    packages = [line.lstrip("* ").strip() for line in lines if line.startswith("*")]
    verdict = next((line for line in lines if line.lower().startswith("reboot")), lines[-1] if lines else "")
    return _result(done.returncode == 1, shown, f"{shown}: {verdict}" if verdict else f"{shown} exited {done.returncode}",
                   packages)


def reboot_required(root: str = "/", search_path: Optional[str] = None) -> Dict[str, Any]:
    """What the distribution says: required (true, false, or null when it cannot be told), source, detail, packages."""
    text = next((t for t in (_read(os.path.join(root, p.lstrip("/"))) for p in OS_RELEASE) if t is not None), "")
    family = os_family(text)
    if family == "rhel":
        return from_needs_restarting(needs_restarting_command(search_path))
    sentinel = from_sentinel(root)
    if family == "debian" or sentinel["required"]:
        return sentinel
    return _result(None, None, "the distribution has no known way to say (neither the Debian nor the RHEL family)")
