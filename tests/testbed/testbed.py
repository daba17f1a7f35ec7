"""Real QEMU test VMs for hypervisor.cpr (TCG, small initramfs guest).

Each VM runs the guest built by build-guest.sh: a random marker in
/run/marker/marker, a counter in /run/marker/counter that grows every 0.1 s,
and qemu-ga on the org.qemu.guest_agent.0 port. QEMU is started detached with
an argv of absolute paths only, so another program (cpr_restore) can re-run
the exact argv from /proc/<pid>/cmdline with ``-incoming defer`` appended.

Library (stdlib and qemu.qmp only)::

    vms = boot_vms(workdir, count=2)
    vms[0].marker(); vms[0].suspend(); vms[0].wakeup(); kill_all(workdir)

CLI::

    testbed.py up --workdir DIR [--count N] [--prefix vm] [--ram shared-file]
                  [--machine q35] [--mem 256] [--transfer]
    testbed.py list --workdir DIR
    testbed.py down --workdir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-guest.sh"
QEMU = os.environ.get("HYPERVISOR_CPR_QEMU", "qemu-system-x86_64")
RAM_KINDS = ("shared-file", "shm", "memfd", "private", "block:/absolute/path")
MACHINES = ("q35", "pc")
AGENT_PORT = "org.qemu.guest_agent.0"
COMMAND_TIMEOUT = 30.0
# Commands after which qemu-ga sends no reply when they succeed.
_NO_REPLY = frozenset({"guest-suspend-ram", "guest-suspend-disk",
                       "guest-suspend-hybrid", "guest-shutdown"})
# How long agent() waits for an error reply to one of those.
_NO_REPLY_GRACE = 1.0
_S3_GLOBAL = {"q35": "ICH9-LPC.disable_s3=0", "pc": "PIIX4_PM.disable_s3=0"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1

# QEMU processes this Python process started, so kill() can reap them.
_children: dict[int, subprocess.Popen[bytes]] = {}


class TestbedError(RuntimeError):
    """Anything that keeps the test bed from doing what was asked."""


class GuestNotBuilt(TestbedError):
    """The guest kernel and initramfs are missing."""


# --- the guest ---------------------------------------------------------------

def guest_dir() -> Path:
    """Where build-guest.sh puts the guest by default."""
    cache = os.environ.get("HYPERVISOR_CPR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "hypervisor-cpr")
    return Path(cache, "guest").resolve()


def build_guest(outdir: Path | None = None) -> Path:
    """Run build-guest.sh (a no-op when the guest is up to date); return its dir."""
    outdir = Path(outdir or guest_dir()).resolve()
    run = subprocess.run([str(BUILD_SCRIPT), str(outdir)], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise TestbedError(f"{BUILD_SCRIPT} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    return outdir


def guest_artifacts(outdir: Path | None = None) -> tuple[Path, Path, str]:
    """(vmlinuz, initrd.img, kernel command line) of a built guest."""
    # Not the faster uncompressed vmlinux via PVH: QEMU re-copies an ELF
    # kernel into guest RAM at every reset, so S3 resume crashed the guest.
    outdir = Path(outdir or guest_dir()).resolve()
    kernel, initrd, cmdline = outdir / "vmlinuz", outdir / "initrd.img", outdir / "cmdline"
    if not (kernel.is_file() and initrd.is_file() and cmdline.is_file()):
        raise GuestNotBuilt(f"guest not built in {outdir}: run {BUILD_SCRIPT}")
    return kernel, initrd, cmdline.read_text().strip()


# --- QMP and QGA, one short session per call ----------------------------------

@contextlib.asynccontextmanager
async def _session(path: Path, agent: bool, timeout: float) -> AsyncIterator[QMPClient]:
    client = QMPClient(path.name)
    if agent:
        # The guest agent speaks QMP without greeting or capabilities.
        client.await_greeting = False
        client.negotiate = False
    try:
        await asyncio.wait_for(client.connect(str(path)), timeout)
        if agent:
            await _agent_resync(client, timeout)
        yield client
    except asyncio.TimeoutError as err:
        why = "is the guest suspended, or qemu-ga not running?" if agent else "is another client connected?"
        raise TestbedError(f"{path}: no answer within {timeout} s ({why})") from err
    finally:
        # The reply is in hand by now; a peer that hung up (after "quit",
        # say) makes disconnect() re-raise that, which changes nothing.
        with contextlib.suppress(QMPError, OSError, EOFError):
            await client.disconnect()


async def _agent_resync(client: QMPClient, timeout: float) -> None:
    # guest-sync-delimited would be the textbook resync, but its reply starts
    # with a 0xFF byte that qemu.qmp cannot parse. guest-sync with a fresh
    # token works too: replies left over from an earlier client (with ids this
    # client may reuse) arrive first and never carry the token.
    for _attempt in range(8):
        token = secrets.randbelow(2**31)
        if await asyncio.wait_for(_run(client, "guest-sync", {"id": token}), timeout) == token:
            return
    raise TestbedError("guest agent does not resync: its replies never carry our token")


async def _call(path: Path, agent: bool, cmd: str, args: Mapping[str, Any],
                timeout: float = COMMAND_TIMEOUT) -> Any:
    async with _session(path, agent, timeout) as client:
        if agent and cmd in _NO_REPLY:
            return await _no_reply(client, cmd, args, _NO_REPLY_GRACE)
        return await asyncio.wait_for(_run(client, cmd, args), timeout)


async def _no_reply(client: QMPClient, cmd: str, args: Mapping[str, Any], grace: float) -> None:
    # Success is silence; an error reply, if any, comes within the grace time.
    task = asyncio.ensure_future(_run(client, cmd, args))
    done = (await asyncio.wait({task}, timeout=grace))[0]
    if task in done:
        task.result()
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _guest_exec(qga: Path, argv: list[str], timeout: float, who: str) -> str:
    async with _session(qga, True, timeout) as client:
        started = await _run(client, "guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
        deadline = time.monotonic() + timeout
        while not (status := await _run(client, "guest-exec-status", {"pid": started["pid"]}))["exited"]:
            if time.monotonic() > deadline:
                raise TestbedError(f"{who}: {argv} still running after {timeout} s")
            await asyncio.sleep(0.02)
    if status.get("exitcode", 0) != 0 or "signal" in status:
        err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
        raise TestbedError(f"{who}: {argv} failed: exit code {status.get('exitcode')}, "
                           f"signal {status.get('signal')}: {err.strip()}")
    return base64.b64decode(status.get("out-data", "")).decode(errors="replace")


async def _run(client: QMPClient, cmd: str, args: Mapping[str, Any] | None = None) -> Any:
    # qemu.qmp types replies as object; the commands used here return dicts.
    return await client.execute(cmd, dict(args or {}))


def _args(arguments: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    # Many QMP argument names contain dashes: pass those in the mapping.
    return {**(arguments or {}), **kwargs}


# --- processes ---------------------------------------------------------------

def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def _qemu_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every live qemu-system-* process."""
    for pid, child in list(_children.items()):  # reap ours that ended (quit, crash)
        if child.poll() is not None:
            del _children[pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if argv and os.path.basename(argv[0]).startswith("qemu-system-"):
                yield int(entry.name), argv


def _serves(argv: Sequence[str], path: Path) -> bool:
    # Socket paths appear as comma-separated fields: unix:P or path=P.
    wanted = {f"unix:{path}", f"path={path}"}
    return any(not wanted.isdisjoint(arg.split(",")) for arg in argv)


def find_qemu_pid(qmp_socket: Path) -> int | None:
    """The pid of the QEMU serving this QMP socket (pids change on restart)."""
    return next(iter(qemu_pids(qmp_socket)), None)


def qemu_pids(qmp_socket: Path) -> list[int]:
    """Every QEMU whose command line serves this QMP socket (during a cpr-transfer, the old and the new one)."""
    return [pid for pid, argv in _qemu_processes() if _serves(argv, Path(qmp_socket))]


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _kill_and_wait(pids: Sequence[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        child = _children.pop(pid, None)
        if child is not None:
            child.wait(timeout)
            continue
        while _alive(pid):  # not our child: its parent reaps it
            if time.monotonic() > deadline:
                raise TestbedError(f"QEMU pid {pid} survived SIGKILL")
            time.sleep(0.05)


def in_realtime(target: Any, *args: Any) -> Any:
    """Call target(*args) in a thread of real-time priority (SCHED_FIFO), for a test's fault injector.

    An injector that polls for an event (the state file appears, the new QEMU listens) and must act before
    QEMU's next step would, on a loaded machine, often be scheduled too late: QEMU writes a state file in
    a fraction of a second. At real-time priority it runs the moment its poll finds the event.

    What the injector starts (a daemon started again, a QEMU) runs at normal priority: a TCG guest or a
    libvirtd that inherited SCHED_FIFO would starve the machine, and its QEMUs with it.
    """
    with contextlib.suppress(OSError):
        # 0: the calling thread, on Linux
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    return target(*args)


def start_qemu(argv: Sequence[str], log: Path) -> int:
    """Start QEMU detached (own session, output appended to log); return its pid."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _children[proc.pid] = proc
    return proc.pid


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


# --- VMs ---------------------------------------------------------------------

@dataclasses.dataclass
class TestVM:
    """One test VM. Paths are absolute; argv is exactly what QEMU was run with."""

    __test__ = False  # not a pytest test class

    name: str
    pid: int
    workdir: Path
    qmp_socket: Path
    qga_socket: Path
    serial_log: Path
    log: Path
    argv: list[str]
    ram: str
    machine: str
    mem_mib: int

    @property
    def ram_path(self) -> Path | None:
        """The file or device holding guest RAM, if it is not anonymous."""
        if self.ram.startswith("block:"):
            return Path(self.ram[len("block:"):])
        if self.ram in ("shared-file", "shm"):
            return Path(_mem_path(self.argv))
        return None

    def qmp(self, cmd: str, arguments: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
        """Run one QMP command and return its "return" value."""
        return asyncio.run(_call(self.qmp_socket, False, cmd, _args(arguments, kwargs)))

    def agent(self, cmd: str, arguments: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
        """Run one guest agent command and return its "return" value.

        guest-suspend-* and guest-shutdown reply only on failure: for those
        it waits 1 s for an error, then returns None (suspend() is quicker).
        """
        return asyncio.run(_call(self.qga_socket, True, cmd, _args(arguments, kwargs)))

    def agent_answers(self, timeout: float = 0.5) -> bool:
        """Whether the guest agent answers a guest-ping within timeout (False: stopped, gone, or not yet up)."""
        try:
            return asyncio.run(_call(self.qga_socket, True, "guest-ping", {}, timeout)) == {}
        except (QMPError, OSError, TestbedError):
            return False

    def agent_exits(self) -> int:
        """How often qemu-ga exited in this guest: its init says so on the serial console, and starts it again."""
        return self.serial_log.read_text(errors="replace").count("init: qemu-ga exited")

    def guest_exec(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
        """Run argv in the guest (no shell) and return its stdout."""
        return asyncio.run(_guest_exec(self.qga_socket, list(argv), timeout, self.name))

    def marker(self) -> str:
        """The random marker the guest made at boot (32 hex chars)."""
        return self.guest_exec(["cat", "/run/marker/marker"]).strip()

    def counter(self) -> int:
        """The guest's counter, +1 every 0.1 s of guest run time."""
        return int(self.guest_exec(["cat", "/run/marker/counter"]))

    def runstate(self) -> str:
        """QEMU's runstate: running, paused, suspended, inmigrate, postmigrate..."""
        return str(self.qmp("query-status")["status"])

    def wait_runstate(self, state: str, timeout: float = COMMAND_TIMEOUT) -> None:
        """Poll until QEMU reports this runstate."""
        deadline = time.monotonic() + timeout
        while (current := self.runstate()) != state:
            if time.monotonic() > deadline:
                raise TestbedError(f"{self.name}: runstate is {current!r}, "
                                   f"not {state!r} after {timeout} s")
            time.sleep(0.05)

    def suspend(self, timeout: float = COMMAND_TIMEOUT) -> None:
        """Suspend the guest to RAM through the agent; return once QEMU says suspended."""
        asyncio.run(self._suspend(timeout))

    async def _suspend(self, timeout: float) -> None:
        # The agent replies only on failure, so watch QMP meanwhile rather
        # than wait out a grace period.
        async with _session(self.qga_socket, True, timeout) as agent, \
                _session(self.qmp_socket, False, timeout) as qmp:
            request = asyncio.ensure_future(_run(agent, "guest-suspend-ram"))
            try:
                deadline = time.monotonic() + timeout
                while (await _run(qmp, "query-status"))["status"] != "suspended":
                    if request.done():
                        request.result()  # raises the agent's error
                    if time.monotonic() > deadline:
                        raise TestbedError(f"{self.name}: not suspended after {timeout} s")
                    await asyncio.sleep(0.02)
            finally:
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await request

    def wakeup(self, timeout: float = COMMAND_TIMEOUT) -> None:
        """system_wakeup, then wait until the guest runs."""
        self.qmp("system_wakeup")
        self.wait_runstate("running", timeout)

    def refresh_pid(self) -> int | None:
        """Re-find this VM's QEMU by its QMP socket; update and return pid."""
        pid = find_qemu_pid(self.qmp_socket)
        if pid is not None:
            self.pid = pid
        return pid

    def alive(self) -> bool:
        """Whether a QEMU serves this VM's QMP socket (whatever its pid now)."""
        return self.refresh_pid() is not None

    def kill(self) -> None:
        """SIGKILL the VM's QEMU, wait for it, remove its sockets and RAM file."""
        pid = self.refresh_pid()
        if pid is not None:
            _kill_and_wait([pid])
        paths = [self.qmp_socket, self.qga_socket]
        if self.ram in ("shared-file", "shm"):
            paths.append(Path(_mem_path(self.argv)))
        for path in paths:
            path.unlink(missing_ok=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (as in testbed.json)."""
        return {k: (str(v) if isinstance(v, Path) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TestVM:
        """Inverse of to_dict."""
        paths = {"workdir", "qmp_socket", "qga_socket", "serial_log", "log"}
        fields: dict[str, Any] = {k: Path(v) if k in paths else v for k, v in data.items()}
        return cls(**fields)


def _mem_path(argv: Sequence[str]) -> str:
    for arg in argv:
        for field in arg.split(","):
            if field.startswith("mem-path="):
                return field[len("mem-path="):]
    raise TestbedError("no mem-path in the QEMU command line")


def _workdir_tag(workdir: Path) -> str:
    # Keeps /dev/shm files of different workdirs (parallel test runs) apart.
    return hashlib.sha256(str(workdir).encode()).hexdigest()[:8]


def qemu_argv(name: str, workdir: Path, *, ram: str = "shared-file", machine: str = "q35",
              mem_mib: int = 256, extra_args: Sequence[str] = (),
              guest: Path | None = None, transfer: bool = False, binary: str | None = None) -> list[str]:
    """The full QEMU command line of a test VM (every path absolute).

    binary: the QEMU binary to run (default: qemu-system-x86_64 from PATH), for tests that replace it on disk.

    transfer: ready for cpr-transfer, -machine aux-ram-share=on (ROMs and video RAM in shared memory too); with
    shared RAM (memfd, the usual choice, or a shared file).
    """
    if not _NAME_RE.match(name):
        raise TestbedError(f"bad VM name {name!r}: use letters, digits, '_', '.', '-'")
    if machine not in MACHINES:
        raise TestbedError(f"machine {machine!r} is not one of {', '.join(MACHINES)}")
    workdir = Path(workdir).resolve()
    kernel, initrd, cmdline = guest_artifacts(guest)
    qemu = binary or shutil.which(QEMU)
    if qemu is None:
        raise TestbedError(f"{QEMU} not found: run scripts/install-host-deps.sh")
    qmp, qga = workdir / f"{name}.qmp", workdir / f"{name}.qga"
    if len(str(qmp)) > _SUN_PATH_MAX:
        raise TestbedError(f"socket path too long for a unix socket: {qmp}")

    size = f"size={mem_mib}M"
    if ram == "shared-file":
        backend = f"memory-backend-file,id=ram0,{size},mem-path={workdir / (name + '.ram')},share=on"
    elif ram == "shm":
        shm = Path(f"/dev/shm/hypervisor-cpr-{_workdir_tag(workdir)}-{name}.ram")
        backend = f"memory-backend-file,id=ram0,{size},mem-path={shm},share=on"
    elif ram == "memfd":
        backend = f"memory-backend-memfd,id=ram0,{size},share=on"
    elif ram.startswith("block:") and Path(ram[len("block:"):]).is_absolute():
        backend = f"memory-backend-file,id=ram0,{size},mem-path={ram[len('block:'):]},share=on"
    elif ram == "private" and not transfer:
        backend = ""
    else:
        raise TestbedError(f"ram {ram!r}: use one of shared-file, shm, memfd, private, block:/absolute/path")

    argv = [qemu, "-name", f"guest={name},debug-threads=on",
            "-machine", (f"{machine},memory-backend=ram0" if backend else machine)
            + (",aux-ram-share=on" if transfer else ""),
            "-accel", "tcg",
            # RDRAND seeds the guest's RNG at once; else reading /dev/urandom
            # for the marker waits about 1 s for jitter entropy under TCG.
            "-cpu", "qemu64,+rdrand",
            "-m", str(mem_mib)]
    if backend:
        argv += ["-object", backend]
    argv += [
        "-nodefaults", "-display", "none",
        # A guest panic (panic=-1) then ends QEMU instead of rebooting forever.
        "-no-reboot",
        # append=on: a QEMU re-run from this argv keeps the boot log.
        "-chardev", f"file,id=serial0,path={workdir / (name + '.serial')},append=on",
        "-serial", "chardev:serial0",
        "-qmp", f"unix:{qmp},server=on,wait=off",
        "-chardev", f"socket,id=qga0,path={qga},server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", f"virtserialport,bus=vser0.0,chardev=qga0,name={AGENT_PORT}",
        "-global", _S3_GLOBAL[machine],
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        *extra_args,
    ]
    return argv


async def _wait_ready(vm: TestVM, deadline: float, wait_agent: bool) -> None:
    def check() -> None:
        if not _alive(vm.pid):
            raise TestbedError(f"{vm.name}: QEMU exited during boot.\n--- {vm.log}:\n"
                               f"{_tail(vm.log)}\n--- {vm.serial_log}:\n{_tail(vm.serial_log)}")
        if time.monotonic() > deadline:
            raise TestbedError(f"{vm.name}: not ready in time (QMP or guest agent).\n"
                               f"--- {vm.serial_log}:\n{_tail(vm.serial_log)}")

    for path, agent, cmd in [(vm.qmp_socket, False, "query-status")] + (
            [(vm.qga_socket, True, "guest-ping")] if wait_agent else []):
        while True:
            check()
            if path.exists():  # connecting earlier only makes qemu.qmp log errors
                try:
                    # Short tries: a request sent before qemu-ga runs is never answered.
                    await _call(path, agent, cmd, {}, timeout=0.5)
                    break
                except (QMPError, OSError, TestbedError):
                    pass
            await asyncio.sleep(0.1)
    if wait_agent:
        # The marker is written before qemu-ga starts; this proves guest-exec too.
        await _guest_exec(vm.qga_socket, ["cat", "/run/marker/marker"],
                          max(deadline - time.monotonic(), 1.0), vm.name)


def boot_vms(workdir: Path, count: int = 1, *, names: Sequence[str] | None = None,
             ram: str = "shared-file", machine: str = "q35", mem_mib: int = 256,
             wait_agent: bool = True, extra_args: Sequence[str] = (),
             timeout: float = 120.0, guest: Path | None = None, transfer: bool = False,
             binary: str | None = None) -> list[TestVM]:
    """Boot VMs concurrently; return once each answers QMP (and its agent).

    names defaults to vm0..vm<count-1>. On failure every VM started here is
    killed before the error is raised.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else [f"vm{i}" for i in range(count)]
    if len(set(names)) != len(names):
        raise TestbedError(f"duplicate VM names: {names}")
    argvs = [qemu_argv(n, workdir, ram=ram, machine=machine, mem_mib=mem_mib,
                       extra_args=extra_args, guest=guest, transfer=transfer, binary=binary) for n in names]
    for name in names:
        if find_qemu_pid(workdir / f"{name}.qmp") is not None:
            raise TestbedError(f"{name}: a QEMU already serves {workdir / (name + '.qmp')}")
    vms: list[TestVM] = []
    try:
        for name, argv in zip(names, argvs, strict=True):
            qmp, log = workdir / f"{name}.qmp", workdir / f"{name}.log"
            vms.append(TestVM(name=name, pid=start_qemu(argv, log), workdir=workdir,
                              qmp_socket=qmp, qga_socket=workdir / f"{name}.qga",
                              serial_log=workdir / f"{name}.serial", log=log, argv=argv,
                              ram=ram, machine=machine, mem_mib=mem_mib))
        deadline = time.monotonic() + timeout

        async def wait_all() -> None:
            await asyncio.gather(*(_wait_ready(vm, deadline, wait_agent) for vm in vms))

        asyncio.run(wait_all())
    except BaseException:
        for vm in vms:
            vm.kill()
        raise
    return vms


def memory_snapshot(vms: Sequence[TestVM]) -> dict[str, tuple[str, int]]:
    """Each guest's marker and counter, to compare after a save and restore."""
    return {vm.name: (vm.marker(), vm.counter()) for vm in vms}


def survival_problems(vms: Sequence[TestVM], snapshot: Mapping[str, tuple[str, int]]) -> list[str]:
    """What is wrong with each guest compared with its snapshot; [] when all survived.

    Finds each QEMU again by its QMP socket, since a restore starts a new one.
    """
    problems = []
    for vm in vms:
        if vm.refresh_pid() is None:
            problems.append(f"{vm.name}: no QEMU serves {vm.qmp_socket}")
            continue
        marker, counter = snapshot[vm.name]
        if vm.marker() != marker:
            problems.append(f"{vm.name}: the marker in guest RAM changed")
        if vm.counter() < counter:
            problems.append(f"{vm.name}: the counter went back from {counter}")
    return problems


def kill_all(workdir: Path) -> list[int]:
    """Kill every QEMU whose argv mentions workdir; remove sockets and RAM files."""
    workdir = Path(workdir).resolve()
    prefix = f"{workdir}/"
    pids = [pid for pid, argv in _qemu_processes() if any(prefix in arg for arg in argv)]
    _kill_and_wait(pids)
    for pattern in ("*.qmp", "*.qga", "*.ram"):
        for path in workdir.glob(pattern):
            path.unlink(missing_ok=True)
    for path in Path("/dev/shm").glob(f"hypervisor-cpr-{_workdir_tag(workdir)}-*.ram"):
        path.unlink(missing_ok=True)
    return pids


# --- CLI -----------------------------------------------------------------------

def _state_file(workdir: Path) -> Path:
    return Path(workdir).resolve() / "testbed.json"


def _load(workdir: Path) -> list[TestVM]:
    try:
        return [TestVM.from_dict(d) for d in json.loads(_state_file(workdir).read_text())]
    except FileNotFoundError:
        return []


def _summary(vm: TestVM) -> dict[str, Any]:
    alive = vm.alive()
    runstate = None
    if alive:
        with contextlib.suppress(QMPError, OSError, TestbedError):
            runstate = asyncio.run(_call(vm.qmp_socket, False, "query-status", {}, 5.0))["status"]
    return {"name": vm.name, "pid": vm.pid if alive else None, "runstate": runstate,
            "qmp_socket": str(vm.qmp_socket), "qga_socket": str(vm.qga_socket),
            "serial_log": str(vm.serial_log), "ram": vm.ram, "machine": vm.machine}


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit status."""
    parser = argparse.ArgumentParser(description="Boot, list and kill hypervisor.cpr test VMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the guest if needed and boot VMs")
    up.add_argument("--count", type=int, default=1)
    up.add_argument("--prefix", default="vm", help="VM names are PREFIX0, PREFIX1...")
    up.add_argument("--ram", default="shared-file", help=" | ".join(RAM_KINDS))
    up.add_argument("--machine", default="q35", choices=MACHINES)
    up.add_argument("--mem", type=int, default=256, help="guest RAM in MiB")
    up.add_argument("--timeout", type=float, default=120.0)
    up.add_argument("--no-agent", action="store_true", help="do not wait for the guest agent")
    up.add_argument("--transfer", action="store_true",
                    help="ready for cpr-transfer: -machine aux-ram-share=on (use with --ram memfd)")
    for name in ("up", "list", "down"):
        cmd = up if name == "up" else sub.add_parser(
            name, help="list VMs of testbed.json" if name == "list" else "kill all VMs of a workdir")
        cmd.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            build_guest()
            vms = boot_vms(args.workdir, names=[f"{args.prefix}{i}" for i in range(args.count)],
                           ram=args.ram, machine=args.machine, mem_mib=args.mem,
                           wait_agent=not args.no_agent, timeout=args.timeout, transfer=args.transfer)
            known = [vm for vm in _load(args.workdir)
                     if vm.name not in {v.name for v in vms} and vm.alive()]
            _state_file(args.workdir).write_text(
                json.dumps([vm.to_dict() for vm in known + vms], indent=2) + "\n")
            print(json.dumps([_summary(vm) for vm in vms], indent=2))
        elif args.command == "list":
            print(json.dumps([_summary(vm) for vm in _load(args.workdir)], indent=2))
        else:
            pids = kill_all(args.workdir)
            _state_file(args.workdir).unlink(missing_ok=True)
            print(json.dumps({"killed": pids}))
    except TestbedError as err:
        print(f"testbed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
