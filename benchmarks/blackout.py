"""1. Blackout of one VM: cpr.save + cpr.restore (reboot none) against the minimal reference.

The blackout runs from paused_at (the engine's own time stamp, taken just
before QEMU is told to migrate) to the moment the VM runs again: the first
query-status after the load that says ``running``, seen in a trace of the
engine's QMP commands. The reference is timed the same way (its own poll).
The engine goes on to wait for the guest agent to answer (its verification,
while the guest already runs): that is reported as "verified", and is what
the engine's downtime_seconds measures.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Dict, List, Tuple

from benchmarks import reference
from benchmarks.harness import (
    BenchError,
    Context,
    Row,
    engine_phases,
    goal_check,
    median,
    median_phases,
    reset_state_dir,
    running_at,
    summary,
    testbed,
    traced,
)
from benchmarks import harness as engine

GOAL = 1.15


def ours_cycle(trace: Any, names: List[str], state_dir: str, timeout: float = 120.0) -> Dict[str, Any]:
    """One cpr.save + cpr.restore of these VMs; per-VM paused/running times and the engine's figures."""
    reset_state_dir(state_dir)
    trace.take()
    saved = engine.save(names, state_dir, timeout)
    save_returned = time.time()
    restored = engine.restore(names, state_dir, timeout)
    restore_returned = time.time()
    events = trace.take()
    paused = {vm["name"]: vm["paused_at"] for vm in saved["vms"]}
    running = {}
    for name, paused_at in paused.items():
        at = running_at(events, name, paused_at)
        if at is None:
            raise BenchError(f"{name}: the trace shows no running state after the restore")
        running[name] = at
    return {
        "paused": paused, "running": running, "save_returned": save_returned, "restore_returned": restore_returned,
        "events": events, "save": saved["vms"], "restore": restored["vms"],
        "verified": {vm["name"]: vm["downtime_seconds"] for vm in restored["vms"]},
    }


def reference_cycle(vm: Any, state_dir: str, children: List[Any]) -> Dict[str, float]:
    reset_state_dir(state_dir)
    times, child = asyncio.run(reference.cycle(vm, os.path.join(state_dir, f"{vm.name}.ref")))
    children.append(child)
    vm.refresh_pid()
    return times


def reference_phases(times: Dict[str, float]) -> Dict[str, float]:
    return {k: round(v, 4) for k, v in {
        "save: QEMU writes the state": times["migrated"] - times["paused"],
        "save: quit, until the process ended": times["exited"] - times["migrated"],
        "restore: QEMU starts, QMP answers": times["qmp"] - times["launch"],
        "restore: set mode, migrate-incoming": times["incoming"] - times["qmp"],
        "restore: load, until running": times["running"] - times["incoming"],
        "blackout (to running)": times["running"] - times["paused"],
    }.items()}


def run(ctx: Context) -> Tuple[List[Row], Dict[str, Any]]:
    runs = ctx.runs
    vm = ctx.pool.get(1)[0]
    state_dir = os.path.join(ctx.base, "state-1")
    snapshot = testbed.memory_snapshot([vm])
    ours: List[float] = []
    verified: List[float] = []
    ref: List[float] = []
    ours_phases: List[Dict[str, float]] = []
    ref_phases: List[Dict[str, float]] = []
    children: List[Any] = []
    with traced() as trace:
        # One unmeasured cycle of each first (caches, first-use costs), then alternate which goes first.
        for index in range(runs + 1):
            order = ("ours", "ref") if index % 2 == 0 else ("ref", "ours")
            for variant in order:
                time.sleep(0.5)
                if variant == "ours":
                    cycle = ours_cycle(trace, [vm.name], state_dir)
                    vm.refresh_pid()
                    paused, running = cycle["paused"][vm.name], cycle["running"][vm.name]
                    if index:
                        ours.append(running - paused)
                        verified.append(cycle["verified"][vm.name])
                        ours_phases.append(engine_phases(cycle["events"], vm.name, paused, cycle["save_returned"],
                                                         cycle["restore_returned"]))
                else:
                    times = reference_cycle(vm, state_dir, children)
                    if index:
                        ref.append(times["running"] - times["paused"])
                        ref_phases.append(reference_phases(times))
            if index:
                ctx.log(f"  run {index}: ours {ours[-1]:.3f} s, reference {ref[-1]:.3f} s")
            else:
                ctx.log("  run 0: warm-up cycle of each, not measured")
    ctx.pool.check([vm], snapshot)
    for child in children:
        child.poll()
    value = median(ours)
    base = median(ref)
    blackout_ratio = value / base if value and base else None
    rows = [
        Row("1", "blackout of 1 VM, to running (ours / hand-typed QMP)", value, base, "s", blackout_ratio,
            f"<= {GOAL}", goal_check(blackout_ratio, "<=", GOAL)),
        Row("1", "  same, to guest agent answering (engine's downtime_seconds)", median(verified), base, "s",
            (median(verified) or 0) / base if base else None, note="verification while the guest runs"),
    ]
    details = {
        "runs": runs, "vm_mem_mib": vm.mem_mib, "ram": vm.ram,
        "ours_to_running": summary(ours), "ours_verified": summary(verified), "reference": summary(ref),
        "ours_phases_median": median_phases(ours_phases), "reference_phases_median": median_phases(ref_phases),
    }
    return rows, details
