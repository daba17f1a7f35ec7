"""The minimal reference: the cpr-reboot steps typed by hand with qemu.qmp, in one Python process.

No discovery, no manifest, no fsync, no checksum, no guest agent: set
mode cpr-reboot and x-ignore-shared, migrate to a file, poll until completed,
quit, wait for the process to end, start a new QEMU with the same argv and
``-incoming defer``, set the same, migrate-incoming, poll until running.
It polls every millisecond (connect, query-migrate, query-status, /proc for
the exit): about as fast as a script without QMP events gets, so it is a
demanding reference.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from qemu.qmp import QMPClient

POLL = 0.001


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


async def _configure(client: QMPClient, in_place: bool, mapped_ram: Optional[bool]) -> None:
    """cpr-reboot; a copy of RAM without QEMU's 128 MiB/s cap, plain or mapped-ram with as many channels as the engine."""
    parameters: Dict[str, Any] = {"mode": "cpr-reboot"}
    capabilities = {"x-ignore-shared": in_place}
    if mapped_ram is not None:
        parameters["max-bandwidth"] = 1 << 40
        capabilities.update({"mapped-ram": mapped_ram, "multifd": mapped_ram})
        if mapped_ram:
            parameters["multifd-channels"] = 4
    await client.execute("migrate-set-parameters", parameters)
    await client.execute("migrate-set-capabilities", {
        "capabilities": [{"capability": name, "state": state} for name, state in capabilities.items()]})


async def save(qmp_socket: str, pid: int, state_file: str, in_place: bool = True,
               mapped_ram: Optional[bool] = None) -> Dict[str, float]:
    """Save one VM and quit its QEMU; return the wall-clock time of each step.

    mapped_ram None: the settings of the blackout benchmarks; True or False: a copy of RAM set up as an expert
    would (benchmark 3).
    """
    client = QMPClient("reference")
    await client.connect(qmp_socket)
    try:
        await _configure(client, in_place, mapped_ram)
        times = {"paused": time.time()}
        await client.execute("migrate", {"uri": f"file:{state_file}"})
        while True:
            info = await client.execute("query-migrate")
            if info["status"] == "completed":
                break
            if info["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"reference save {info['status']}: {info.get('error-desc')}")
            await asyncio.sleep(POLL)
        times["migrated"] = time.time()
        await client.execute("quit")
    finally:
        try:
            await client.disconnect()
        except Exception:  # pylint: disable=broad-except
            pass  # QEMU hung up after quit
    while not _gone(pid):
        await asyncio.sleep(POLL)
    times["exited"] = time.time()
    return times


async def restore(argv: Sequence[str], qmp_socket: str, state_file: str, log: str, in_place: bool = True,
                  timeout: float = 120.0, mapped_ram: Optional[bool] = None) -> Tuple[Dict[str, float], subprocess.Popen]:
    """Start a new QEMU with -incoming defer and load the state; return the step times and the process."""
    times = {"launch": time.time()}
    with open(log, "ab") as out:
        child = subprocess.Popen([*argv, "-incoming", "defer"], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    client: Optional[QMPClient] = None
    while client is None:
        candidate = QMPClient("reference")
        try:
            await candidate.connect(qmp_socket)
            client = candidate
        except Exception:  # pylint: disable=broad-except
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the reference's new QEMU did not answer (exit {child.poll()}), see {log}") from None
            await asyncio.sleep(POLL)
    try:
        times["qmp"] = time.time()
        await _configure(client, in_place, mapped_ram)
        await client.execute("migrate-incoming", {"uri": f"file:{state_file}"})
        times["incoming"] = time.time()
        times["running"] = await _until_running(client, deadline, "restored")
    finally:
        await client.disconnect()
    return times, child


async def _until_running(client: QMPClient, deadline: float, what: str) -> float:
    """Poll query-status every millisecond until the VM runs; when it did."""
    while (await client.execute("query-status"))["status"] != "running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"the reference's {what} VM did not run in time")
        await asyncio.sleep(POLL)
    return time.time()


async def cycle(vm: Any, state_file: str, in_place: bool = True) -> Tuple[Dict[str, float], subprocess.Popen]:
    """Save, quit and restore one test VM; return the merged step times."""
    pid = vm.refresh_pid()
    if pid is None:
        raise RuntimeError(f"{vm.name}: no QEMU")
    saved = await save(str(vm.qmp_socket), pid, state_file, in_place)
    restored, child = await restore(vm.argv, str(vm.qmp_socket), state_file, str(vm.log), in_place)
    return {**saved, **restored}, child


async def sequential(vms: Sequence[Any], state_dir: str, in_place: bool = True,
                     ) -> Tuple[List[Dict[str, float]], List[subprocess.Popen]]:
    """What libvirt-guests does: save every VM in turn (before the reboot), then restore every VM in turn."""
    saves = []
    for vm in vms:
        pid = vm.refresh_pid()
        if pid is None:
            raise RuntimeError(f"{vm.name}: no QEMU")
        saves.append(await save(str(vm.qmp_socket), pid, os.path.join(state_dir, f"{vm.name}.ref"), in_place))
    results, children = [], []
    for vm, saved in zip(vms, saves):
        restored, child = await restore(vm.argv, str(vm.qmp_socket), os.path.join(state_dir, f"{vm.name}.ref"),
                                        str(vm.log), in_place)
        results.append({**saved, **restored})
        children.append(child)
    return results, children


async def parallel(vms: Sequence[Any], state_dir: str, in_place: bool = True,
                   ) -> Tuple[List[Dict[str, float]], List[subprocess.Popen]]:
    """The same steps for every VM at once (asyncio): the floor for any tool on this machine."""
    pids = []
    for vm in vms:
        pid = vm.refresh_pid()
        if pid is None:
            raise RuntimeError(f"{vm.name}: no QEMU")
        pids.append(pid)
    files = [os.path.join(state_dir, f"{vm.name}.ref") for vm in vms]
    saves = await asyncio.gather(*(save(str(vm.qmp_socket), pid, path, in_place)
                                   for vm, pid, path in zip(vms, pids, files)))
    restores = await asyncio.gather(*(restore(vm.argv, str(vm.qmp_socket), path, str(vm.log), in_place)
                                      for vm, path in zip(vms, files)))
    return [{**s, **r[0]} for s, r in zip(saves, restores)], [r[1] for r in restores]


async def transfer(vm: Any, socket_dir: str, timeout: float = 120.0) -> Tuple[Dict[str, float], subprocess.Popen]:
    """cpr-transfer typed by hand: the new QEMU beside the old one, migrate, the new one running, the old one killed.

    The steps of QEMU's docs/devel/migration/CPR.rst: the new QEMU gets the old one's argv and two -incoming
    channels (main and cpr, unix sockets); once its cpr socket exists, the old QEMU migrates with mode cpr-transfer;
    the new QEMU opens its monitor (at the same QMP path) only once it has the descriptors, so the QMP path is polled
    until it is a new socket, then query-status until ``running``. "paused" is when ``migrate`` is sent.
    """
    pid = vm.refresh_pid()
    if pid is None:
        raise RuntimeError(f"{vm.name}: no QEMU")
    qmp = str(vm.qmp_socket)
    main, cpr = os.path.join(socket_dir, "main"), os.path.join(socket_dir, "cpr")
    for path in (main, cpr):
        if os.path.exists(path):
            os.unlink(path)
    channels = [{"channel-type": kind, "addr": {"transport": "socket", "type": "unix", "path": path}}
                for kind, path in (("main", main), ("cpr", cpr))]
    incoming = [word for channel in channels for word in ("-incoming", json.dumps(channel))]
    inode = os.stat(qmp).st_ino
    times = {"launch": time.time()}
    with open(str(vm.log), "ab") as out:
        child = subprocess.Popen([*vm.argv, *incoming], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(cpr):
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the reference's new QEMU did not listen (exit {child.poll()}), see {vm.log}")
        await asyncio.sleep(POLL)
    times["listening"] = time.time()
    old = QMPClient("reference")
    await old.connect(qmp)
    try:
        await old.execute("migrate-set-parameters", {"mode": "cpr-transfer"})
        times["paused"] = time.time()
        await old.execute("migrate", {"channels": channels})
        new: Optional[QMPClient] = None
        while new is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the reference's new QEMU did not answer after the transfer")
            try:
                replaced = os.stat(qmp).st_ino != inode
            except FileNotFoundError:
                replaced = False  # the new QEMU removes the old path before it binds its own socket there
            if replaced:
                candidate = QMPClient("reference")
                try:
                    await candidate.connect(qmp)
                    new = candidate
                    continue
                except Exception:  # pylint: disable=broad-except
                    pass  # not listening yet
            await asyncio.sleep(POLL)
        try:
            times["running"] = await _until_running(new, deadline, "transferred")
        finally:
            await new.disconnect()
    finally:
        await old.disconnect()
    # Not quit: the old QEMU's exit would unlink the sockets the new one serves at the same paths.
    os.kill(pid, 9)
    while not _gone(pid):
        await asyncio.sleep(POLL)
    return times, child
