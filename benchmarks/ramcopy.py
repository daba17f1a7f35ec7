"""3. RAM-copy mode: save and restore throughput against dd on the same filesystem.

One VM with private (anonymous) RAM, so the engine copies its RAM into the
state file. Inside the guest a tmpfs is filled from /dev/urandom, so the RAM
holds that much incompressible data (the rest of guest RAM is mostly zero
pages, which QEMU does not write). Bytes are the state file's allocated bytes
(st_blocks; mapped-ram files are sparse).

- save: from paused_at to QEMU told to quit, i.e. the state file written,
  fsync'd, checksummed and its manifest written (the engine's save_seconds
  stops before the fsync, so it is not used); dd writes as many bytes from
  /dev/zero with conv=fdatasync.
- restore: from the cpr.restore call to the VM running again, after
  `echo 3 > /proc/sys/vm/drop_caches` (the QEMU binary, its libraries and
  firmware, and the guest kernel are read back into the cache, so only the
  state file is cold); dd reads the file it wrote after the same drop.

Both with and without mapped-ram + multifd. Buffered I/O on both sides (the
engine does not ask QEMU for direct-io).

QEMU's own save and load of the same RAM, typed by hand (reference.save and
reference.restore with the same migration settings: no checksum, no manifest,
the file fdatasync'ed after QEMU wrote it), run after each cycle too, is the
floor of any tool: what QEMU itself takes to write and to load that state.

dd runs right after each cycle, on as many bytes: a ratio is the median of each
cycle's rate over the rate of the dd beside it, so that a shared disk whose speed
drifts during the run moves both sides of each pair (the medians of the rates on
their own are in the table's columns and the JSON).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.harness import (
    BenchError,
    Context,
    Row,
    drop_caches,
    first,
    goal_check,
    median,
    qemu_files,
    reset_state_dir,
    summary,
    testbed,
    traced,
    vm_prefix,
    warm,
    workdir,
)
from benchmarks import harness as engine
from benchmarks import reference

GOAL = 0.8
MB = 1e6


def dd(argv: List[str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return seconds


def fill_guest(vm: Any, mib: int) -> float:
    """Fill a tmpfs in the guest with mib MiB from /dev/urandom; return the seconds it took."""
    started = time.monotonic()
    vm.guest_exec(["mkdir", "-p", "/bench"])
    vm.guest_exec(["mount", "-t", "tmpfs", "-o", f"size={mib + 16}m", "tmpfs", "/bench"])
    left, chunk = mib, 256
    while left > 0:
        count = min(chunk, left)
        vm.guest_exec(["dd", "if=/dev/urandom", "of=/bench/noise", "bs=1M", f"count={count}", f"seek={mib - left}",
                       "conv=notrunc"], timeout=900)
        left -= count
    return time.monotonic() - started


def noise_digest(vm: Any, mib: int) -> str:
    """MD5 of three 1 MiB samples of the guest's noise (all of it takes minutes under TCG)."""
    return vm.guest_exec(["sh", "-c", "; ".join(
        f"dd if=/bench/noise bs=1M count=1 skip={skip} 2>/dev/null | md5sum" for skip in sorted({0, mib // 2, mib - 1}))])


def one_cycle(vm: Any, state_dir: str, mode: bool, trace: Any, warm_files: List[str]) -> Dict[str, Any]:
    reset_state_dir(state_dir)
    os.sync()
    trace.take()
    saved = engine.save([vm.name], state_dir, 900, mapped_ram=mode)["vms"][0]
    with open(os.path.join(state_dir, f"{vm.name}.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    stat = os.stat(saved["state_file"])
    drop_caches()
    warm(warm_files)
    restore_called = time.time()
    restored = engine.restore([vm.name], state_dir, 900)["vms"][0]
    events = trace.take()
    vm.refresh_pid()
    incoming = first(events, vm.name, "migrate-incoming", saved["paused_at"])
    loaded = first(events, vm.name, "query-migrate", incoming.end if incoming else 0, "completed")
    running = first(events, vm.name, "query-status", incoming.end if incoming else 0, "running")
    migrated = first(events, vm.name, "query-migrate", saved["paused_at"], "completed")
    seal = first(events, vm.name, "seal", saved["paused_at"])
    verify = first(events, vm.name, "verify", saved["paused_at"])
    quit_cmd = first(events, vm.name, "quit", saved["paused_at"])
    if not (incoming and loaded and running and migrated and quit_cmd):
        raise BenchError(f"{vm.name}: the trace of the RAM-copy cycle is incomplete")
    return {
        "capabilities": manifest.get("capabilities", {}), "parameters": manifest.get("parameters", {}),
        "checksum": manifest.get("state_checksum", "sha256"),
        "file_bytes": stat.st_size, "allocated_bytes": stat.st_blocks * 512,
        "save_seconds": quit_cmd.start - saved["paused_at"], "engine_save_seconds": saved["save_seconds"],
        "restore_seconds": running.end - restore_called,
        "engine_restore_seconds": restored["restore_seconds"],
        "phases": {
            "save: QEMU writes": round(migrated.end - saved["paused_at"], 3),
            "save: fsync + checksum": round(seal.end - seal.start, 3) if seal else None,
            "restore: checksum (cold)": round(verify.end - verify.start, 3) if verify else None,
            "restore: QEMU loads": round(loaded.end - incoming.start, 3),
            "restore: call to running": round(running.end - restore_called, 3),
        },
    }


def vs_dd(cycle: Dict[str, Any], what: str) -> float:
    """A cycle's save or restore rate over the rate of the dd run beside it (write for a save, read for a restore)."""
    ours = cycle["allocated_bytes"] / cycle[f"{what}_seconds"]
    theirs = cycle["dd"]["bytes"] / cycle["dd"]["write_seconds" if what == "save" else "read_seconds"]
    return ours / theirs


def reference_cycle(vm: Any, state_dir: str, mapped_ram: bool, warm_files: List[str],
                    children: List[Any]) -> Dict[str, float]:
    """QEMU's own save (written and fdatasync'ed) and load (from the cold file, until running) of the VM, by hand."""
    path = os.path.join(state_dir, f"{vm.name}.ref")
    pid = vm.refresh_pid()
    if pid is None:
        raise BenchError(f"{vm.name}: no QEMU before the hand-typed cycle")
    saved = asyncio.run(reference.save(str(vm.qmp_socket), pid, path, in_place=False, mapped_ram=mapped_ram))
    descriptor = os.open(path, os.O_RDONLY)
    try:
        started = time.monotonic()
        os.fdatasync(descriptor)
        synced = time.monotonic() - started
    finally:
        os.close(descriptor)
    drop_caches()
    warm(warm_files)
    restored, child = asyncio.run(reference.restore(vm.argv, str(vm.qmp_socket), path, str(vm.log), in_place=False,
                                                    timeout=900, mapped_ram=mapped_ram))
    children.append(child)
    vm.refresh_pid()
    os.unlink(path)
    return {"save_seconds": saved["migrated"] - saved["paused"] + synced, "restore_seconds":
            restored["running"] - restored["launch"]}


def dd_cycle(state_dir: str, nbytes: int) -> Dict[str, float]:
    path = os.path.join(state_dir, "dd.bin")
    count = max(1, -(-nbytes // (1 << 20)))
    os.sync()
    write = dd(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={count}", "conv=fdatasync"])
    drop_caches()
    read = dd(["dd", f"if={path}", "of=/dev/null", "bs=1M"])
    os.unlink(path)
    return {"bytes": count << 20, "write_seconds": write, "read_seconds": read}


def run(ctx: Context) -> Tuple[List[Row], Dict[str, Any]]:
    noise_mib = ctx.shared.get("ram_copy_mib") or (32 if ctx.quick else 1024)
    mem_mib = max(160, noise_mib + 384) if not ctx.quick else max(160, noise_mib + 128)
    runs = ctx.runs
    warm_files = qemu_files()
    details: Dict[str, Any] = {"noise_mib": noise_mib, "vm_mem_mib": mem_mib, "runs": runs, "modes": {}}
    with workdir("ram") as base:
        state_dir = os.path.join(base, "state")
        details["filesystem"] = os.popen(f"findmnt -n -o SOURCE,FSTYPE --target {base}").read().strip()
        started = time.monotonic()
        vm = testbed.boot_vms(base, names=[f"{vm_prefix()}r"], ram="private", mem_mib=mem_mib, timeout=300)[0]
        details["boot_seconds"] = round(time.monotonic() - started, 1)
        details["fill_seconds"] = round(fill_guest(vm, noise_mib), 1)
        ctx.log(f"  guest of {mem_mib} MiB holds {noise_mib} MiB from /dev/urandom "
                f"(boot {details['boot_seconds']} s, fill {details['fill_seconds']} s)")
        snapshot = testbed.memory_snapshot([vm])
        digest_before = noise_digest(vm, noise_mib)
        cycles: Dict[str, List[Dict[str, Any]]] = {"mapped-ram + multifd": [], "plain stream": []}
        dds: List[Dict[str, float]] = []
        checksums = set()
        children: List[Any] = []
        with traced() as trace:
            # Plain stream first: a QEMU restored from a mapped-ram save keeps mapped-ram and multifd on,
            # and the engine sets only the capabilities it wants on, so a plain save after it would
            # write a mapped-ram file its manifest calls plain (see docs/benchmarks.md).
            for mode, index in [(m, i) for m in (False, True) for i in range(runs)]:
                cycle = one_cycle(vm, state_dir, mode, trace, warm_files)
                key = "mapped-ram + multifd" if mode else "plain stream"
                if bool(cycle["capabilities"].get("mapped-ram")) != mode:
                    raise BenchError(f"asked for mapped-ram={mode}, the engine used {cycle['capabilities']}")
                checksums.add(cycle.pop("checksum"))
                cycle["hand_typed"] = reference_cycle(vm, state_dir, mode, warm_files, children)
                cycle["dd"] = dd_cycle(state_dir, cycle["allocated_bytes"])
                cycles[key].append(cycle)
                dds.append(cycle["dd"])
                ctx.log(f"  run {index + 1} {key}: {cycle['allocated_bytes'] / MB:.0f} MB, save "
                        f"{cycle['save_seconds']:.2f} s, restore {cycle['restore_seconds']:.2f} s; hand-typed "
                        f"{cycle['hand_typed']['save_seconds']:.2f} s, {cycle['hand_typed']['restore_seconds']:.2f} s; dd write "
                        f"{dds[-1]['write_seconds']:.2f} s, read {dds[-1]['read_seconds']:.2f} s")
        if ctx.shared.get("measure_rss"):
            # For benchmark 5: the module processes while they copy this much RAM.
            from benchmarks.memory import module_rss  # pylint: disable=import-outside-toplevel
            peaks = module_rss(os.path.join(base, "memory"), [vm.name], "ramcopy")
            vm.refresh_pid()
            ctx.shared["rss_ram_copy"] = {"allocated_MB": median([c["allocated_bytes"] for c in cycles["plain stream"]])
                                          / MB, "noise_mib": noise_mib, "peaks": peaks}
        for child in children:
            child.poll()
        testbed_problems = testbed.survival_problems([vm], snapshot)
        if testbed_problems:
            raise BenchError("the RAM-copy VM did not survive: " + "; ".join(testbed_problems))
        if noise_digest(vm, noise_mib) != digest_before:
            raise BenchError("the incompressible data in guest RAM changed across the cycles")

    dd_write = median([d["bytes"] / MB / d["write_seconds"] for d in dds])
    dd_read = median([d["bytes"] / MB / d["read_seconds"] for d in dds])
    details["dd"] = {"write_MBps": summary([d["bytes"] / MB / d["write_seconds"] for d in dds]),
                     "read_MBps": summary([d["bytes"] / MB / d["read_seconds"] for d in dds])}
    details["checksum"] = sorted(checksums)
    rows: List[Row] = []
    for key, items in cycles.items():
        save_rate = median([c["allocated_bytes"] / MB / c["save_seconds"] for c in items])
        restore_rate = median([c["allocated_bytes"] / MB / c["restore_seconds"] for c in items])
        phases: Dict[str, Optional[float]] = {}
        for name in items[0]["phases"]:
            values = [c["phases"][name] for c in items if c["phases"][name] is not None]
            phases[name] = median(values)
        details["modes"][key] = {
            "allocated_MB": round(median([c["allocated_bytes"] for c in items]) / MB, 1),
            "file_MB": round(median([c["file_bytes"] for c in items]) / MB, 1),
            "capabilities": items[0]["capabilities"], "parameters": items[0]["parameters"],
            "save_MBps": summary([c["allocated_bytes"] / MB / c["save_seconds"] for c in items]),
            "restore_MBps": summary([c["allocated_bytes"] / MB / c["restore_seconds"] for c in items]),
            "save_seconds": summary([c["save_seconds"] for c in items]),
            "restore_seconds": summary([c["restore_seconds"] for c in items]),
            "save_vs_dd": summary([vs_dd(c, "save") for c in items]),
            "restore_vs_dd": summary([vs_dd(c, "restore") for c in items]),
            "hand_typed_save_seconds": summary([c["hand_typed"]["save_seconds"] for c in items]),
            "hand_typed_restore_seconds": summary([c["hand_typed"]["restore_seconds"] for c in items]),
            "phases_median": phases,
        }
        size = f"{details['modes'][key]['allocated_MB']:.0f} MB"
        for what, ours, base in (("save", save_rate, dd_write), ("restore", restore_rate, dd_read)):
            value = median([vs_dd(c, what) for c in items])
            rows.append(Row("3", f"RAM copy {what}, {key} ({size}) vs dd {'write' if what == 'save' else 'read'}",
                            ours, base, "MB/s", value, f">= {GOAL}", goal_check(value, ">=", GOAL),
                            note="" if rows else "ratio: median over the runs of each one's rate / that of the dd "
                            "run right after it (the columns: medians of the rates)"))
            floor = median([c["hand_typed"][f"{what}_seconds"] / c[f"{what}_seconds"] for c in items])
            rows.append(Row("3", f"  same, seconds, vs QEMU's own {what} typed by hand",
                            median([c[f"{what}_seconds"] for c in items]),
                            median([c["hand_typed"][f"{what}_seconds"] for c in items]), "s", floor,
                            note="" if len(rows) > 2 else "the hand-typed cycle: same settings, no checksum, "
                            "the file fdatasync'ed (save) and loaded cold until running (restore); ratio: "
                            "median of its seconds / ours, per run"))
    return rows, details
