"""2. Whole-host blackout with 1, 4 and 8 VMs: all in one call against one after another.

Ours: one cpr.save of every VM, then one cpr.restore of every VM (what the
role does). Baseline: what libvirt-guests does with its default sequential
managedsave: save each VM in turn, then (after the reboot) restore each VM in
turn; here with the hand-typed reference steps, the fastest way to do one VM
(no discovery, manifest, checksum or agent check), so the comparison is
conservative. Also measured for the largest count: the engine called once
per VM, in turn. The whole-host blackout runs from the first VM paused to the
last VM running again. The VMs are small shared-file guests (RAM stays in
place), the pool's other VMs keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Dict, List, Sequence, Tuple

from benchmarks import reference
from benchmarks.blackout import ours_cycle
from benchmarks.harness import (
    Context,
    Event,
    Row,
    first,
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

GOAL_GROWTH = 1.5
GOAL_SEQUENTIAL = 4.0


def host_phases(events: Sequence[Event], cycle: Dict[str, Any]) -> Dict[str, float]:
    """When the last VM got through each step, from the first VM paused."""
    start = min(cycle["paused"].values())
    names = list(cycle["paused"])

    def last(what: str, detail: Any = None, after_key: str = "", use_end: bool = True) -> Any:
        times = []
        for name in names:
            after = cycle["paused"][name]
            if after_key == "launch":
                launch = first(events, name, "launch", after)
                after = launch.end if launch else after
            elif after_key == "incoming":
                incoming = first(events, name, "migrate-incoming", after)
                after = incoming.end if incoming else after
            event = first(events, name, what, after, detail)
            if event is None:
                return None
            times.append(event.end if use_end else event.start)
        return max(times) - start

    phases = {
        "all QEMUs wrote their state": last("query-migrate", "completed"),
        "all quit sent": last("quit", use_end=False),
        "save() returned": cycle["save_returned"] - start,
        "all new QEMUs launched": last("launch"),
        "all new QEMUs answer QMP": last("migrate-set-parameters", after_key="launch", use_end=False),
        "all loaded": last("query-migrate", "completed", after_key="incoming"),
        "all running (blackout)": max(cycle["running"].values()) - start,
        "restore() returned": cycle["restore_returned"] - start,
    }
    return {k: round(v, 4) for k, v in phases.items() if v is not None}


def engine_one_at_a_time(vms: Sequence[Any], state_dir: str, trace: Any) -> float:
    """The engine called once per VM, in turn: save each, then restore each."""
    reset_state_dir(state_dir)
    trace.take()
    paused = []
    for vm in vms:
        paused.append(engine.save([vm.name], state_dir, 120)["vms"][0]["paused_at"])
    for vm in vms:
        engine.restore([vm.name], state_dir, 120)
    events = trace.take()
    running = [running_at(events, vm.name, at) for vm, at in zip(vms, paused)]
    for vm in vms:
        vm.refresh_pid()
    return max(r for r in running if r is not None) - min(paused)


def run(ctx: Context) -> Tuple[List[Row], Dict[str, Any]]:
    counts = ctx.counts()
    runs = ctx.runs
    state_dir = os.path.join(ctx.base, "state-2")
    details: Dict[str, Any] = {"runs": runs, "counts": counts, "vm_mem_mib": ctx.pool.mem_mib, "per_count": {}}
    ours_median: Dict[int, float] = {}
    seq_median: Dict[int, float] = {}
    par_median: Dict[int, float] = {}
    children: List[Any] = []
    with traced() as trace:
        for position, count in enumerate(counts):
            vms = ctx.pool.get(count)
            names = [vm.name for vm in vms]
            snapshot = testbed.memory_snapshot(vms)
            ours: List[float] = []
            per_vm_max: List[float] = []
            seq: List[float] = []
            par: List[float] = []
            phases: List[Dict[str, float]] = []
            # One unmeasured cycle before the first count (first-use costs).
            for index in range(0 if position else -1, runs):
                order = ("ours", "seq", "par") if index % 2 == 0 else ("par", "seq", "ours")
                for variant in order:
                    time.sleep(0.5)
                    if variant == "ours":
                        cycle = ours_cycle(trace, names, state_dir)
                        if index >= 0:
                            ours.append(max(cycle["running"].values()) - min(cycle["paused"].values()))
                            per_vm_max.append(max(cycle["running"][n] - cycle["paused"][n] for n in names))
                            phases.append(host_phases(cycle["events"], cycle))
                    else:
                        reset_state_dir(state_dir)
                        steps = reference.sequential if variant == "seq" else reference.parallel
                        results, started = asyncio.run(steps(vms, state_dir))
                        children += started
                        if index >= 0:
                            (seq if variant == "seq" else par).append(
                                max(r["running"] for r in results) - min(r["paused"] for r in results))
                    for vm in vms:
                        vm.refresh_pid()
                if index >= 0:
                    ctx.log(f"  {count} VM(s) run {index + 1}: ours {ours[-1]:.3f} s, one after another {seq[-1]:.3f} s, "
                            f"reference all at once {par[-1]:.3f} s")
            entry = {"ours": summary(ours), "one_after_another_reference": summary(seq),
                     "all_at_once_reference": summary(par),
                     "ours_worst_single_vm": summary(per_vm_max), "ours_phases_median": median_phases(phases)}
            if count == counts[-1]:
                one_by_one = []
                for index in range(runs):
                    time.sleep(0.5)
                    one_by_one.append(engine_one_at_a_time(vms, state_dir, trace))
                    ctx.log(f"  {count} VMs, engine once per VM, run {index + 1}: {one_by_one[-1]:.3f} s")
                entry["one_after_another_engine"] = summary(one_by_one)
            ctx.pool.check(vms, snapshot)
            details["per_count"][str(count)] = entry
            ours_median[count] = median(ours)
            seq_median[count] = median(seq)
            par_median[count] = median(par)
    for child in children:
        child.poll()

    rows = [Row("2", f"whole-host blackout, {n} VM{'s' if n > 1 else ''} (ours / one after another)", ours_median[n],
                seq_median[n], "s", seq_median[n] and ours_median[n] / seq_median[n]) for n in counts]
    top = counts[-1]
    growth = ours_median[top] / ours_median[1] if ours_median[1] else None
    speedup = seq_median[top] / ours_median[top] if ours_median[top] else None
    rows.append(Row("2", f"blackout({top}) / blackout(1), ours", growth, None, "x", growth, f"<= {GOAL_GROWTH}",
                    goal_check(growth, "<=", GOAL_GROWTH)))
    rows.append(Row("2", f"one after another({top}) / ours({top})", speedup, None, "x", speedup,
                    f">= {GOAL_SEQUENTIAL:g}", goal_check(speedup, ">=", GOAL_SEQUENTIAL)))
    par_growth = par_median[top] / par_median[1] if par_median[1] else None
    rows.append(Row("2", f"  floor: hand-typed QMP, all at once: blackout({top}) / blackout(1)", par_growth, None, "x",
                    par_growth, note=f"the reference doing every VM at once: {par_median[1]:.3f} s for 1 VM, "
                    f"{par_median[top]:.3f} s for {top}; what this machine allows any tool"))
    engine_seq = details["per_count"][str(top)].get("one_after_another_engine", {}).get("median")
    if engine_seq:
        rows.append(Row("2", f"  same, baseline = the engine called once per VM({top})", engine_seq / ours_median[top],
                        None, "x", engine_seq / ours_median[top], note="libvirt-guests-like use of cpr_save/cpr_restore"))
    return rows, details
