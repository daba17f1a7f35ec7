# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The boot entry's directory, ``<state_dir>/.boot-restore``: the one owner of its files and their names.

It holds ``engine.zip`` (these module_utils, for the host's Python), ``boot.py`` (what that Python runs at boot),
``config.json`` (the run, the boot its VMs were saved in, the restore's options: the entry is armed while it
exists), ``run`` (the script an init that is not systemd runs), ``reboot-started`` (touched by the reboot
command: its time starts the host's blackout) and, once the boot restore ran, ``result.json``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Optional

from ansible_collections.hypervisor.cpr.plugins.module_utils._directory import Directory
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import boot_id

BOOT_DIR_NAME = ".boot-restore"
ENGINE = "engine.zip"
LAUNCHER = "boot.py"
CONFIG = "config.json"
RUN_SCRIPT = "run"
REBOOT_MARK = "reboot-started"
RESULT = "result.json"
ENTRY_FILES = (CONFIG, ENGINE, LAUNCHER, RUN_SCRIPT, REBOOT_MARK)


def boot_dir_path(state_dir_path: str) -> str:
    return os.path.join(state_dir_path.rstrip("/"), BOOT_DIR_NAME)


class BootDir(Directory):
    """``<state_dir>/.boot-restore`` by descriptor (BootDir.open(boot_dir_path(state_dir)))."""

    def file(self, entry: str) -> str:
        return os.path.join(self.path, entry)

    def read_bytes(self, entry: str) -> Optional[bytes]:
        """An entry's content, or None when it does not exist."""
        if not self.exists:
            return None
        try:
            with os.fdopen(self.open_file(entry, os.O_RDONLY), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def mtime(self, entry: str) -> Optional[float]:
        if not self.exists:
            return None
        try:
            return os.stat(entry, dir_fd=self.fd, follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return None

    def read_object(self, entry: str) -> Optional[Dict[str, Any]]:
        """A JSON object we wrote, or None when it is missing or cannot be trusted (read_json's checks)."""
        data, _error = self.read_json(entry)
        return data if isinstance(data, dict) else None

    def remove(self, *entries: str) -> bool:
        """Remove these entries; whether any was there."""
        present = [e for e in entries if self.has(e)]
        if present:
            self.unlink(*present)
        return bool(present)

    def remove_dir(self) -> None:
        """Remove the directory once it is empty (an entry of someone else's keeps it)."""
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def boot_result(state_dir_path: str) -> Optional[Dict[str, Any]]:
    """What the boot restore did on this boot (result.json), or None when it did not run on this boot."""
    with BootDir.open(boot_dir_path(state_dir_path)) as boot:
        result = boot.read_object(RESULT)
    return result if result and result.get("boot_id") == boot_id() else None
