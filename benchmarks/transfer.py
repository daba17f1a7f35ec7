"""7. QEMU-only updates: cpr-transfer through the role against the hand-typed transfer and today's relaunch.

All in one run, on small VMs ready for cpr-transfer (RAM in a shared memfd, ``-machine aux-ram-share=on``):

- hand-typed transfer: the steps of QEMU's CPR.rst with qemu.qmp in one Python process (reference.transfer);
- role, transfer: the kernel_update role with reboot method none (one hypervisor.cpr.qemu_update call, method auto);
- role, cpr-reboot relaunch through the modules: the same role with kernel_update_qemu_update=separate (cpr_save,
  then cpr_restore, as tasks of their own) on a VM of the shared pool (RAM in a shared file, kept in place: the
  fastest relaunch there is);
- role, transfer, 8 VMs (2 with --quick) against 1.

The blackout of a VM runs from its paused_at (taken just before ``migrate``) to its back_at (the new QEMU reports it
running); the hand-typed transfer is timed the same way. A transfer pauses each guest on its own, so over several VMs
the figure is the longest pause any of them saw (the span from the first pause to the last VM back is in the JSON).
The guest agent's answer afterwards is a check while the guest runs, not part of it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from benchmarks import reference
from benchmarks.harness import BenchError, Context, Row, goal_check, median, summary, testbed, vm_prefix
from benchmarks.role import SEPARATE, play_role, role_missing

GOAL_HAND = 1.2
GOAL_RELAUNCH = 10.0
GOAL_SCALING = 2.0
MEM_MIB = 128


def _update_task(record: Dict[str, Any]) -> Dict[str, Any]:
    task = next((t for t in record["tasks"] if t["action"].endswith("qemu_update") and "result" in t), None)
    if not (task and task["result"]["vms"]):
        raise BenchError("the role ran no qemu_update")
    return task


def blackout(vms: List[Dict[str, Any]]) -> float:
    """The longest pause of one guest."""
    return max(vm["back_at"] - vm["paused_at"] for vm in vms)


def span(vms: List[Dict[str, Any]]) -> float:
    return max(vm["back_at"] for vm in vms) - min(vm["paused_at"] for vm in vms)


def relaunch_blackout(record: Dict[str, Any]) -> float:
    """First paused (cpr_save's result) to last back (cpr_restore's)."""
    results = {}
    for module in ("cpr_save", "cpr_restore"):
        task = next((t for t in record["tasks"] if t["action"].endswith(module) and "result" in t), None)
        if not (task and task["result"]["vms"]):
            raise BenchError(f"the role ran no {module}")
        results[module] = task["result"]["vms"]
    return max(vm["back_at"] for vm in results["cpr_restore"]) - min(vm["paused_at"] for vm in results["cpr_save"])


def run(ctx: Context) -> Tuple[List[Row], Dict[str, Any]]:
    missing = role_missing()
    if missing:
        return [Row("7", "QEMU update by transfer: NOT MEASURED", None, unit="", note=missing)], {"missing": missing}
    top = ctx.counts()[-1]
    workdir = os.path.join(ctx.base, "transfer")
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    vms = testbed.boot_vms(Path(workdir), names=[f"{vm_prefix()}t{i}" for i in range(top)], ram="memfd",
                           transfer=True, mem_mib=MEM_MIB, timeout=300.0)
    snapshot = testbed.memory_snapshot(vms)
    one = [vms[0].name]
    hand: List[float] = []
    role_one: List[Dict[str, Any]] = []
    role_top: List[Dict[str, Any]] = []
    relaunch: List[float] = []
    plain = ctx.pool.get(1)
    plain_snapshot = testbed.memory_snapshot(plain)
    socket_dir = os.path.join(workdir, "sockets")
    os.makedirs(socket_dir, mode=0o700, exist_ok=True)
    for index in range(ctx.runs):
        times, _child = asyncio.run(reference.transfer(vms[0], socket_dir))
        vms[0].refresh_pid()
        hand.append(times["running"] - times["paused"])
        record = play_role(workdir, one, f"bench{os.getpid()}x1r{index}")
        role_one.append(_update_task(record)["result"])
        record = play_role(workdir, [vm.name for vm in vms], f"bench{os.getpid()}x{top}r{index}")
        role_top.append(_update_task(record)["result"])
        record = play_role(workdir, [plain[0].name], f"bench{os.getpid()}p1r{index}", extra=SEPARATE)
        relaunch.append(relaunch_blackout(record))
        for vm in vms + plain:
            vm.refresh_pid()
        ctx.log(f"  run {index + 1}: hand-typed {hand[-1] * 1000:.1f} ms, role 1 VM {blackout(role_one[-1]['vms']) * 1000:.1f}"
                f" ms, role {top} VMs {blackout(role_top[-1]['vms']) * 1000:.1f} ms, relaunch {relaunch[-1] * 1000:.0f} ms")
    ctx.pool.check(vms, snapshot)
    ctx.pool.check(plain, plain_snapshot)
    methods = sorted({vm["method"] for result in role_one + role_top for vm in result["vms"]})
    if methods != ["transfer"]:
        raise BenchError(f"the role did not transfer every VM: {methods}")

    ms = 1000.0
    hand_ms = median([h * ms for h in hand])
    one_ms = median([blackout(r["vms"]) * ms for r in role_one])
    top_ms = median([blackout(r["vms"]) * ms for r in role_top])
    relaunch_ms = median([r * ms for r in relaunch])
    qemu_ms = median([vm["qemu_downtime_ms"] for r in role_one for vm in r["vms"]])
    vs_hand = one_ms / hand_ms if hand_ms else None
    vs_relaunch = relaunch_ms / one_ms if one_ms else None
    growth = top_ms / one_ms if one_ms else None
    rows = [
        Row("7", "transfer blackout via role none, 1 VM, vs hand-typed transfer", one_ms, hand_ms, "ms", vs_hand,
            f"<= {GOAL_HAND}", goal_check(vs_hand, "<=", GOAL_HAND),
            note=f"QEMU's own downtime figure {qemu_ms} ms; paused_at (before migrate) to the new QEMU running"),
        Row("7", "cpr-reboot relaunch via cpr_save + cpr_restore tasks / transfer via role none", relaunch_ms, one_ms,
            "ms", vs_relaunch, f">= {GOAL_RELAUNCH:g}", goal_check(vs_relaunch, ">=", GOAL_RELAUNCH),
            note="the relaunch on a pool VM with its RAM in a shared file kept in place (the fastest relaunch)"),
        Row("7", f"transfer blackout via role none, {top} VMs vs 1", top_ms, one_ms, "ms", growth,
            f"<= {GOAL_SCALING:g}", goal_check(growth, "<=", GOAL_SCALING),
            note="the longest pause of one guest, every VM of the host in one qemu_update call"),
    ]
    details = {"runs": ctx.runs, "vms": top, "mem_mib": MEM_MIB,
               "hand_typed_ms": summary([h * ms for h in hand]),
               "role_one_ms": summary([blackout(r["vms"]) * ms for r in role_one]),
               "role_top_ms": summary([blackout(r["vms"]) * ms for r in role_top]),
               "role_top_span_ms": summary([span(r["vms"]) * ms for r in role_top]),
               "relaunch_ms": summary([r * ms for r in relaunch]),
               "qemu_downtime_ms": [vm["qemu_downtime_ms"] for r in role_one + role_top for vm in r["vms"]],
               "versions": sorted({(vm["qemu_version_before"], vm["qemu_version_after"], vm["binary_after"])
                                   for r in role_one for vm in r["vms"]})}
    testbed.kill_all(Path(workdir))
    return rows, details
