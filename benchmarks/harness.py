"""What every benchmark shares: import paths, work directories and their
cleanup, a pool of small test VMs, a trace of the engine's QMP commands,
statistics, machine facts and load.

Every QEMU a benchmark starts runs with a command line that mentions its work
directory (/tmp/bench-*), and the work directory's cleanup kills exactly the
QEMUs whose command line mentions it (testbed.kill_all): QEMUs of anyone else
are never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO_ROOT / ".cache" / "collections"
TESTBED_DIR = REPO_ROOT / "tests" / "testbed"


def collections_path() -> Path:
    """Where ansible_collections/hypervisor/cpr is found: this checkout, or the engine under test.

    HYPERVISOR_CPR_BENCH_COLLECTIONS=DIR measures another copy of the engine (DIR
    holds ansible_collections/hypervisor/cpr), e.g. a prototype of a change.
    """
    override = os.environ.get("HYPERVISOR_CPR_BENCH_COLLECTIONS")
    return Path(override).resolve() if override else COLLECTIONS


def setup_paths() -> None:
    """Make this checkout importable as ansible_collections.hypervisor.cpr, and the test bed importable."""
    link = COLLECTIONS / "ansible_collections" / "hypervisor" / "cpr"
    if not link.is_symlink() and not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO_ROOT)
    for path in (str(collections_path()), str(TESTBED_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    # qemu.qmp logs every refused connection while a new QEMU starts; the benchmarks expect those.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


setup_paths()

import testbed  # noqa: E402  pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from ansible_collections.hypervisor.cpr.plugins.module_utils import _qmp as qmp  # noqa: E402
from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveOptions  # noqa: E402
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import Launcher  # noqa: E402
from ansible_collections.hypervisor.cpr.plugins.module_utils._restore import RestoreOptions  # noqa: E402
from ansible_collections.hypervisor.cpr.plugins.module_utils._restore import restore as _restore  # noqa: E402
from ansible_collections.hypervisor.cpr.plugins.module_utils._save import save as _save  # noqa: E402
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection  # noqa: E402
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir  # noqa: E402

# pylint: enable=wrong-import-position
ENGINE_FILE = _save.__code__.co_filename


def save(names: List[str], state_dir: str, timeout: float, mapped_ram: Optional[bool] = None) -> Dict[str, Any]:
    """The engine's save of these VMs for a QEMU restart (reboot none), as cpr_save runs it."""
    return _save(Selection(names=names), state_dir, SaveOptions(reboot="none", timeout=timeout, mapped_ram=mapped_ram))


def restore(names: List[str], state_dir: str, timeout: float) -> Dict[str, Any]:
    """The engine's restore of these VMs, as cpr_restore runs it."""
    return _restore(state_dir, names, RestoreOptions(timeout=timeout))


class BenchError(RuntimeError):
    """A benchmark could not run (not a slow result: those are figures)."""


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def summary(values: Sequence[float]) -> Dict[str, Any]:
    """Median, min, max and every value, rounded for the JSON."""
    values = list(values)
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "values": []}
    return {"n": len(values), "median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "values": [round(v, 4) for v in values]}


def ratio(ours: Optional[float], baseline: Optional[float]) -> Optional[float]:
    if ours is None or baseline in (None, 0):
        return None
    return ours / baseline


def median_phases(samples: List[Dict[str, float]]) -> Dict[str, float]:
    """The median of each phase over runs (phases missing in some runs use the runs that have them)."""
    keys: List[str] = []
    for sample in samples:
        keys += [k for k in sample if k not in keys]
    return {k: round(statistics.median([s[k] for s in samples if k in s]), 4) for k in keys}


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    """One line of the table: a figure, what it is compared with, and the goal."""

    item: str
    figure: str
    ours: Optional[float]
    baseline: Optional[float] = None
    unit: str = "s"
    ratio: Optional[float] = None
    goal: str = ""
    met: Optional[bool] = None
    note: str = ""

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        for key in ("ours", "baseline", "ratio"):
            if data[key] is not None:
                data[key] = round(data[key], 4)
        return data


def goal_check(value: Optional[float], op: str, limit: float) -> Optional[bool]:
    if value is None:
        return None
    return value <= limit if op == "<=" else value >= limit


# --------------------------------------------------------------------------- machine and load


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def loadavg() -> List[float]:
    return [float(x) for x in _read("/proc/loadavg").split()[:3]] or [0.0, 0.0, 0.0]


def _cpu_ticks() -> List[int]:
    fields = _read("/proc/stat").splitlines()[0].split()[1:]
    return [int(x) for x in fields]


class LoadMeter:
    """How busy the whole machine was while a section ran (everyone's processes, not only ours)."""

    def __init__(self) -> None:
        self.start_ticks = _cpu_ticks()
        self.start_load = loadavg()
        self.started = time.monotonic()

    def stop(self) -> Dict[str, Any]:
        ticks = _cpu_ticks()
        delta = [b - a for a, b in zip(self.start_ticks, ticks)]
        total = sum(delta) or 1
        idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
        return {"seconds": round(time.monotonic() - self.started, 1), "loadavg_start": self.start_load,
                "loadavg_end": loadavg(), "cpu_busy_percent": round(100.0 * (total - idle) / total, 1)}


def qemu_version() -> str:
    try:
        out = subprocess.run([testbed.QEMU, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "missing"
    return out.splitlines()[0] if out else "unknown"


def filesystem_of(path: str) -> str:
    try:
        out = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", path], capture_output=True,
                             text=True, check=False).stdout.strip()
    except OSError:
        out = ""
    return out or "unknown"


def machine_facts() -> Dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {
        "hostname": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "memory_mib": mem_kib >> 10,
        "kernel": platform.release(), "os": _os_release(), "qemu": qemu_version(), "accel": "tcg",
        "python": platform.python_version(), "tmp_filesystem": filesystem_of("/tmp"),
    }


def _os_release() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.platform()


def drop_caches() -> None:
    """Write dirty pages back and drop the page cache (the whole machine's)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as handle:
        handle.write("3\n")


def warm(paths: Sequence[str]) -> None:
    """Read files into the page cache, so a cold read is only of what is measured."""
    for path in paths:
        with contextlib.suppress(OSError), open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass


def qemu_files() -> List[str]:
    """The QEMU binary, its libraries, its firmware and the test guest: what a restore reads besides the state."""
    binary = shutil.which(testbed.QEMU)
    if binary is None:
        return []
    files = [binary]
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    for line in ldd.splitlines():
        parts = line.split("=>")
        candidate = (parts[1] if len(parts) > 1 else parts[0]).split("(")[0].strip()
        if candidate.startswith("/"):
            files.append(candidate)
    for directory in ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu"):
        for root, _dirs, names in os.walk(directory):
            files += [os.path.join(root, n) for n in names]
    with contextlib.suppress(testbed.GuestNotBuilt):
        files += [str(p) for p in testbed.guest_artifacts()[:2]]
    return files


# --------------------------------------------------------------------------- work directories and VMs


_LIVE_WORKDIRS: List[str] = []
ALL_WORKDIRS: List[str] = []


def cleanup_workdir(workdir: str) -> None:
    """Kill every QEMU whose command line mentions workdir (only ours), then remove it."""
    with contextlib.suppress(Exception):
        testbed.kill_all(Path(workdir))
    shutil.rmtree(workdir, ignore_errors=True)
    if workdir in _LIVE_WORKDIRS:
        _LIVE_WORKDIRS.remove(workdir)


def cleanup_all() -> None:
    for workdir in list(_LIVE_WORKDIRS):
        cleanup_workdir(workdir)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the run through the normal cleanup (SIGINT already does)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)


@contextlib.contextmanager
def workdir(tag: str) -> Iterator[str]:
    """A fresh /tmp/bench-<tag>-XXXX (short: unix socket paths are limited); everything in it dies afterwards."""
    path = tempfile.mkdtemp(prefix=f"bench-{tag}-", dir="/tmp")
    os.chmod(path, 0o700)
    _LIVE_WORKDIRS.append(path)
    ALL_WORKDIRS.append(path)
    try:
        yield path
    finally:
        cleanup_workdir(path)


def vm_prefix() -> str:
    """VM names are host-wide (discovery reads every QEMU of the machine): make ours unique."""
    return f"bn{os.getpid()}"


class SmallPool:
    """Small shared-file test VMs, booted when first needed and reused by several benchmarks."""

    def __init__(self, base: str, mem_mib: int) -> None:
        self.base = base
        self.mem_mib = mem_mib
        self.vms: List[Any] = []
        self.boot_seconds: List[float] = []

    def get(self, count: int) -> List[Any]:
        missing = count - len(self.vms)
        if missing > 0:
            names = [f"{vm_prefix()}s{i}" for i in range(len(self.vms), count)]
            started = time.monotonic()
            self.vms += testbed.boot_vms(Path(self.base), names=names, ram="shared-file", mem_mib=self.mem_mib,
                                         timeout=300.0)
            self.boot_seconds.append(round(time.monotonic() - started, 1))
        return self.vms[:count]

    def check(self, vms: Sequence[Any], snapshot: Dict[str, Any]) -> None:
        """Every guest came back with its RAM: the benchmark measured real restores."""
        problems = testbed.survival_problems(list(vms), snapshot)
        if problems:
            raise BenchError("a VM did not survive: " + "; ".join(problems))


def reset_state_dir(state_dir: str) -> None:
    """An empty state directory (mode 0700) for the next cycle."""
    shutil.rmtree(state_dir, ignore_errors=True)
    os.makedirs(state_dir, mode=0o700)


# --------------------------------------------------------------------------- tracing the engine


@dataclass
class Event:
    vm: str
    what: str
    start: float
    end: float
    detail: Optional[str] = None


@dataclass
class Trace:
    """Wall-clock times of the engine's QMP/agent commands, launches and checksums, for phase breakdowns.

    It wraps functions of the engine in this process only; it adds a clock read per command.
    """

    events: List[Event] = field(default_factory=list)
    _undo: List[Callable[[], None]] = field(default_factory=list)

    def install(self) -> None:
        trace = self
        original_execute = qmp._Session.execute  # pylint: disable=protected-access

        async def execute(session: Any, command: str, arguments: Optional[Dict[str, Any]] = None,
                          timeout: Optional[float] = None) -> Any:
            start = time.time()
            result = await original_execute(session, command, arguments, timeout)
            detail = result.get("status") if isinstance(result, dict) else None
            what = command if session.what == "QMP" else f"agent:{command}"
            trace.events.append(Event(session.vm, what, start, time.time(), detail))
            return result

        qmp._Session.execute = execute  # pylint: disable=protected-access
        self._undo.append(lambda: setattr(qmp._Session, "execute", original_execute))  # pylint: disable=protected-access

        # (owner, method, label, where the manifest is among the call's arguments)
        for owner, name, label, manifest_at in ((Launcher, "start", "launch", 1), (StateDir, "seal", "seal", 1),
                                                (StateDir, "verify_state", "verify", 1)):
            self._wrap(owner, name, label, manifest_at)

    def _wrap(self, owner: Any, name: str, label: str, manifest_at: int) -> None:
        original = owner.__dict__[name]
        function = original.__func__ if isinstance(original, staticmethod) else original
        trace = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                trace.events.append(Event(args[manifest_at].name, label, start, time.time()))

        setattr(owner, name, staticmethod(wrapper) if isinstance(original, staticmethod) else wrapper)
        self._undo.append(lambda: setattr(owner, name, original))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def take(self) -> List[Event]:
        events, self.events = self.events, []
        return events


@contextlib.contextmanager
def traced() -> Iterator[Trace]:
    trace = Trace()
    trace.install()
    try:
        yield trace
    finally:
        trace.uninstall()


def first(events: Sequence[Event], vm: str, what: str, after: float = 0.0, detail: Optional[str] = None,
          ) -> Optional[Event]:
    for event in events:
        if event.vm == vm and event.what == what and event.start >= after and (detail is None or event.detail == detail):
            return event
    return None


def engine_phases(events: Sequence[Event], vm: str, paused_at: float, save_returned: float,
                  restore_returned: float) -> Dict[str, float]:
    """Where one VM's blackout went in a cpr.save + cpr.restore cycle, from the trace.

    Times are seconds; 'running' is paused_at to the first query-status that
    said running after the load, 'verified' adds the guest agent's answer.
    """
    phases: Dict[str, float] = {}
    migrated = first(events, vm, "query-migrate", paused_at, "completed")
    quit_cmd = first(events, vm, "quit", paused_at)
    seal = first(events, vm, "seal", paused_at)
    verify = first(events, vm, "verify", paused_at)
    launch = first(events, vm, "launch", paused_at)
    incoming = first(events, vm, "migrate-incoming", paused_at)
    if not (migrated and quit_cmd and launch and incoming):
        return phases
    set_params = first(events, vm, "migrate-set-parameters", launch.end)
    loaded = first(events, vm, "query-migrate", incoming.end, "completed")
    running = first(events, vm, "query-status", incoming.end, "running")
    ping = first(events, vm, "agent:guest-ping", incoming.end)
    phases["save: QEMU writes the state"] = migrated.end - paused_at
    if seal:
        phases["save: fsync + SHA-256 + manifest"] = quit_cmd.start - migrated.end
        phases["  of which fsync + SHA-256"] = seal.end - seal.start
    phases["save: quit, until save() returns"] = save_returned - quit_cmd.start
    phases["restore: until QEMU is launched"] = launch.start - save_returned
    if verify:
        phases["  of which SHA-256 check"] = verify.end - verify.start
    if set_params:
        phases["restore: QEMU starts, QMP answers"] = set_params.start - launch.start
        phases["restore: migrate-incoming"] = incoming.start - set_params.start
    if loaded and running:
        phases["restore: QEMU loads the state"] = loaded.end - incoming.start
        phases["restore: until running"] = running.end - loaded.end
    if running:
        phases["blackout (to running)"] = running.end - paused_at
    if ping and running:
        phases["after running: guest agent answers"] = ping.end - running.end
    phases["until restore() returns"] = restore_returned - paused_at
    return {k: round(v, 4) for k, v in phases.items()}


def running_at(events: Sequence[Event], vm: str, after: float) -> Optional[float]:
    """When the engine first saw the VM running after its load (a restore after `after`)."""
    incoming = first(events, vm, "migrate-incoming", after)
    if incoming is None:
        return None
    running = first(events, vm, "query-status", incoming.end, "running")
    return running.end if running else None


def write_json(path: str, data: Dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the run


@dataclass
class Context:
    """What one `python -m benchmarks` run shares between its benchmarks."""

    quick: bool
    runs: int
    base: str
    pool: SmallPool
    log: Callable[[str], None]
    shared: Dict[str, Any] = field(default_factory=dict)

    def counts(self) -> List[int]:
        """VMs per host for the scaling and role benchmarks."""
        return [1, 2] if self.quick else [1, 4, 8]
