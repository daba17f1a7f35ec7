# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""QEMU's migration settings for a cpr-reboot save and its restore, and the wait for a migration to end.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CommandFailedError,
    CprError,
    NotAnsweringError,
    NotReadyError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import VmFacts, version_tuple
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import QmpSession
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import poll

# Below this much RAM to copy, mapped-ram's fixed layout gains nothing.
MAPPED_RAM_MIN_BYTES = 256 << 20
MULTIFD_CHANNELS = 4
# QEMU caps every migration at max-bandwidth, 128 MiB/s unless set, even one to a file of a stopped VM: a RAM copy
# would run at that speed instead of the disk's.
MAX_BANDWIDTH = 1 << 40
MIN_QEMU_MAPPED_RAM = (9, 0, 0)
FINAL_STATES = ("completed", "failed", "cancelled")

Settings = Tuple[Dict[str, bool], Dict[str, Any]]


def migration_settings(facts: VmFacts, available: List[str], mapped_ram: Optional[bool] = None) -> Settings:
    """The capabilities and parameters a save uses; a restore sets the same.

    mapped_ram None decides by the amount of RAM copied; True or False forces it.
    """
    ram_in_place = bool(facts.cpr and facts.cpr.ram_in_place)
    copy_bytes = facts.cpr.ram_copy_bytes if facts.cpr else 0
    capabilities = {"x-ignore-shared": ram_in_place}
    parameters: Dict[str, Any] = {"mode": "cpr-reboot"}
    if copy_bytes:
        parameters["max-bandwidth"] = MAX_BANDWIDTH
    supported = "mapped-ram" in available and version_tuple(facts.qemu_version) >= MIN_QEMU_MAPPED_RAM
    wanted = copy_bytes >= MAPPED_RAM_MIN_BYTES if mapped_ram is None else mapped_ram
    if mapped_ram and copy_bytes and not supported:
        raise NotReadyError(f"mapped_ram is true, but QEMU {facts.qemu_version} lacks the mapped-ram capability",
                            facts.name, hint="use QEMU 9.0 or later, or mapped_ram auto or false")
    # mapped-ram writes RAM at fixed offsets with several threads: faster for big copies.
    if supported and wanted and copy_bytes:
        capabilities.update({"mapped-ram": True, "multifd": True})
        parameters["multifd-channels"] = MULTIFD_CHANNELS
    elif supported:
        # Set off explicitly: a QEMU restored from a mapped-ram save still has them on.
        capabilities.update({"mapped-ram": False, "multifd": False})
    return capabilities, parameters


async def available_capabilities(session: QmpSession) -> List[str]:
    return [c["capability"] for c in await session.execute("query-migrate-capabilities")]


async def apply(session: QmpSession, settings: Settings) -> None:
    """Set migration capabilities and parameters (those of a save, or the ones they replaced)."""
    capabilities, parameters = settings
    if parameters:
        await session.execute("migrate-set-parameters", parameters)
    if capabilities:
        await session.execute("migrate-set-capabilities", {
            "capabilities": [{"capability": name, "state": state} for name, state in capabilities.items()]})


async def current(session: QmpSession, settings: Settings) -> Settings:
    """The values the settings would replace, so that an undo can set them back."""
    capabilities, parameters = settings
    caps = {c["capability"]: c["state"] for c in await session.execute("query-migrate-capabilities")}
    params = await session.execute("query-migrate-parameters")
    return ({name: caps.get(name, False) for name in capabilities},
            {name: params[name] for name in parameters if name in params})


async def migration_info(session: QmpSession, what: str, timeout: Optional[float] = None) -> Dict[str, Any]:
    """query-migrate; a failed or cancelled migration raises, with QEMU's reason."""
    info = await session.execute("query-migrate", timeout=timeout)
    status = info.get("status", "none")
    if status in ("failed", "cancelled"):
        raise CommandFailedError(f"{what} {status}: {info.get('error-desc', 'QEMU gave no reason')}", session.vm)
    return info


async def wait_migration(session: QmpSession, timeout: float, what: str) -> Dict[str, Any]:
    """Wait until the migration ends; a failure carries QEMU's reason."""
    deadline = time.monotonic() + timeout
    last = ["none"]

    async def ended() -> Optional[Dict[str, Any]]:
        # QEMU's monitor does not answer while a mapped-ram load or the end of a save holds its main loop
        # (seconds for a few GiB): the whole timeout is the bound, not the session's per-command one.
        info = await migration_info(session, what, max(deadline - time.monotonic(), 1.0))
        last[0] = info.get("status", "none")
        return info if last[0] == "completed" else None

    return await poll(ended, timeout, lambda: NotAnsweringError(
        f"{what} did not complete within {timeout:g} s (status {last[0]})", session.vm,
        hint="raise timeout if the state is large and the disk slow"))


async def hand_over(session: QmpSession, descriptor: int) -> str:
    """Give QEMU an open state file (add-fd) and return the URI it migrates to or from; ours is closed.

    QEMU never opens a path of the state directory itself, so nothing can swap the file under it, and a QEMU
    that runs as another user needs no access to the directory.
    """
    try:
        session.client.send_fd_scm(descriptor)
        fdset = (await session.execute("add-fd"))["fdset-id"]
    finally:
        os.close(descriptor)
    return f"file:/dev/fdset/{fdset}"


async def release(session: QmpSession, uri: str) -> None:
    """Let QEMU close a state file it was handed, once the migration is over."""
    with contextlib.suppress(CprError):
        await session.execute("remove-fd", {"fdset-id": int(uri.rsplit("/", 1)[1])})


async def load(session: QmpSession, settings: Settings, descriptor: int, timeout: float) -> None:
    """Load a state file into a QEMU started with -incoming defer, with the settings it was saved with."""
    await apply(session, settings)
    uri = await hand_over(session, descriptor)
    await session.execute("migrate-incoming", {"uri": uri})
    await wait_migration(session, timeout, "the restore")
    await release(session, uri)
