# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""A saved libvirt domain: its record in the state directory, and how it comes back from its image.

The record (``<state_dir>/<name>.libvirt``, 0600) is written before libvirt is
asked to save the domain and removed only once the domain runs again in its old
state: a run that dies anywhere is finished by the next one. ``bring_back()``
is the one way a saved domain comes back, for the restore and for a save's
undo: the image must be complete and match its checksum, then libvirt starts
the domain from it (never cold), and the domain must be in its old state with
its guest agent answering.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

from ansible_collections.hypervisor.cpr.plugins.module_utils import _checksum as checksum
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    ManifestError,
    NotAnsweringError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt import (
    STATES,
    Libvirt,
    Record,
    image_digests,
    image_sha256,
    read_image,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import check_name
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import (
    LIBVIRT_SUFFIX,
    StateDir,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._wait import poll

T = TypeVar("T")
_KEPT = "its image and record are kept"


def records(state_dir: StateDir, names: Optional[Sequence[str]] = None) -> List[Record]:
    """The records of saved domains (of these names, if given), sorted by name."""
    return [read_record(state_dir, n) for n in state_dir.entries(LIBVIRT_SUFFIX) if names is None or n in names]


def read_record(state_dir: StateDir, name: str) -> Record:
    data, error = state_dir.read_json(name + LIBVIRT_SUFFIX)
    if data is None or not isinstance(data, dict) or data.get("name") != name:
        raise ManifestError(f"the record {state_dir.path}/{name}{LIBVIRT_SUFFIX} cannot be used: "
                            f"{error or 'it does not name this domain'}", name,
                            hint="inspect it; the domain's managed save image is untouched")
    return Record.from_dict(data)


def write_record(state_dir: StateDir, record: Record) -> None:
    check_name(record.name)
    state_dir.write_json(record.name + LIBVIRT_SUFFIX, record.to_dict())


def remove_record(state_dir: StateDir, name: str) -> None:
    state_dir.unlink(name + LIBVIRT_SUFFIX)


def seal(record: Record, local_image: str) -> None:
    """Note what the complete image of a save is: format, size, checksum; the record is then saved.

    local_image is the image's path as this process reaches it (Libvirt.local).
    """
    image = read_image(local_image)
    if not image.complete:
        raise ManifestError(f"libvirt reported the save done, but its image {record.image} is not complete",
                            record.name, hint=f"the domain was not started from it; {_KEPT}")
    record.image_format, record.image_bytes, record.image_allocated = image.image_format, image.size, image.allocated
    record.image_checksum, record.image_chunk_bytes = checksum.PREFERRED, checksum.chunk_bytes(image.size)
    record.image_chunks = image_digests(local_image, record.image_chunk_bytes, record.image_checksum)
    record.stage = "saved"


def check_image(record: Record, local_image: str) -> None:
    """Refuse an image that is gone, incomplete or not the one the save wrote: libvirt would boot the domain cold
    from an incomplete one (deleting it), and load damaged memory from a changed one."""
    image = read_image(local_image)
    what = f"its managed save image {record.image}"
    if not image.exists:
        raise ManifestError(f"{what} is gone, so it cannot come back as it was", record.name,
                            hint="it was not started, since it would boot cold; start it with virsh start once its "
                            f"saved state is known to be lost, and remove {record.name}{LIBVIRT_SUFFIX}")
    hint = (f"it was not started: libvirt would load damaged memory, or boot it cold; {_KEPT}. Put the image back "
            "from a copy, or start it cold with virsh start --force-boot once its saved state is known to be lost")
    if not image.complete:
        raise ManifestError(f"{what} is incomplete or damaged (its header is not a complete libvirt save)",
                            record.name, hint=hint)
    if image.size != record.image_bytes:
        raise ManifestError(f"{what} has {image.size} bytes, the save wrote {record.image_bytes}", record.name, hint=hint)
    if record.image_checksum:
        title = checksum.title(record.image_checksum, f"the record of {what}", record.name,
                               f"restore it with the version of hypervisor.cpr that saved it; {_KEPT}")
        digests = image_digests(local_image, record.image_chunk_bytes, record.image_checksum)
        damaged = checksum.damaged_chunk(record.image_chunks, digests, record.image_chunk_bytes)
        if damaged:
            raise ManifestError(f"{what} does not match the {title} its save recorded ({damaged})", record.name,
                                hint=hint)
    elif image_sha256(local_image) != record.image_sha256:
        raise ManifestError(f"{what} does not match the SHA-256 its save recorded", record.name, hint=hint)


async def bring_back(lv: Libvirt, record: Record, timeout: float) -> Dict[str, Any]:
    """Start a saved domain from its checked image, in its old state, with its guest agent answering; what it took."""
    check_image(record, lv.local(record.image))
    started = time.time()
    dom = lv.domain(record.name)
    await asyncio.to_thread(lv.call, record.name, "start the domain from its managed save image",
                            lambda: dom.createWithFlags(0))
    restore_seconds = time.time() - started
    await settle(lv, record, timeout)
    return {"restore_seconds": round(restore_seconds, 3), "restored_by": "libvirt_restore"}


async def settle(lv: Libvirt, record: Record, timeout: float) -> None:
    """Check that a domain back from its image is in its old state and its agent answers (if it did before); put
    its autostart flag back."""
    dom = lv.domain(record.name)
    state, _reason = dom.state()
    if STATES.get(state) != record.runstate_before:
        raise ManifestError(f"it came back {STATES.get(state, state)}, not {record.runstate_before}", record.name,
                            hint="inspect it with virsh domstate --reason")
    if record.agent_before and record.runstate_before == "running":
        why: List[Optional[str]] = [None]

        async def answers() -> Optional[bool]:
            why[0] = await asyncio.to_thread(lv.agent_answers, record.name, 2)
            return True if why[0] is None else None

        await poll(answers, timeout, lambda: NotAnsweringError(
            f"it runs again, but its guest agent does not answer through libvirt within {timeout} s ({why[0]})",
            record.name, hint="the domain is back; look at the guest"))
    if record.autostart_before and not dom.autostart():
        lv.call(record.name, "turn its autostart on again", lambda: dom.setAutostart(1))


def came_back_from_image(lv: Libvirt, record: Record) -> bool:
    """Whether a domain that runs although saved was started from its image by someone else (libvirt's autostart,
    an operator's virsh start): libvirt says restored, and the image is gone. A cold boot is not."""
    dom = lv.domain(record.name)
    state, reason = dom.state()
    running_restored = STATES.get(state) == "running" and reason == lv.module.VIR_DOMAIN_RUNNING_RESTORED
    # A paused domain libvirt restored has no reason of its own; its image is gone and it is paused as saved.
    paused_restored = STATES.get(state) == "paused" and record.runstate_before == "paused"
    return (running_restored or paused_restored) and not read_image(lv.local(record.image)).exists


async def concurrently(action: Callable[[T], Any], items: Sequence[T]) -> List[Any]:
    """action(item) for every item at once, each in a thread (libvirt's calls block); results or exceptions."""
    return list(await asyncio.gather(*(asyncio.to_thread(action, item) for item in items), return_exceptions=True))
