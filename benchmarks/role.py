"""4. The kernel_update role's own overhead, for 1 and 8 VMs on one host.

ansible-playbook runs a one-play playbook with hypervisor.cpr.kernel_update on
one inventory host that is this machine (local connection), reboot method
none and kernel_update_force (so every named VM is saved and restored). A
callback of ours (benchmarks/callback_plugins/bench_timer.py) records when
each task started and ended, whether it ran a module on the host (a round
trip: over SSH it would be one), and the results of cpr_save and cpr_restore.

- role wall time: first task start to the end of the play;
- blackout: first paused_at (cpr_save's result) to the last VM restored and
  its guest agent answering (paused_at + downtime_seconds of cpr_restore);
- overhead: role wall time minus blackout;
- round trips: tasks (and loop items) that ran a module on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.harness import (
    REPO_ROOT,
    BenchError,
    Context,
    Row,
    collections_path,
    goal_check,
    median,
    median_phases,
    summary,
    testbed,
)

GOAL = 1.2
# Reboot method none with cpr_save and cpr_restore as separate tasks, as the other reboot methods run them.
SEPARATE = {"kernel_update_qemu_update": "separate"}
PLAYBOOK = """---
- name: One hypervisor, updated by the role
  hosts: hv
  gather_facts: false
  roles:
    - hypervisor.cpr.kernel_update
"""
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
CALLBACKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callback_plugins")


def role_missing() -> Optional[str]:
    """Why the role cannot be measured here, or None."""
    for path in ("roles/kernel_update/tasks/main.yml", "roles/kernel_update/tasks/cycle.yml"):
        if not (REPO_ROOT / path).is_file():
            return f"{path} does not exist"
    if not os.path.exists(ANSIBLE_PLAYBOOK):
        return f"no {ANSIBLE_PLAYBOOK}"
    return None


def ansible_env(workdir: str, timer_out: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path()),
        "ANSIBLE_CALLBACK_PLUGINS": CALLBACKS,
        "ANSIBLE_CALLBACKS_ENABLED": "bench_timer",
        "BENCH_TIMER_OUT": timer_out,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_LOCAL_TEMP": os.path.join(workdir, "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": os.path.join(workdir, "ansible-remote"),
        "USER": env.get("USER", "benchmarks"),
    })
    return env


def play_role(workdir: str, names: List[str], run_id: str, interpreter: str = sys.executable,
              extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run the role once for these VMs (extra: more host vars); return the callback's record and the wall time."""
    inventory = os.path.join(workdir, f"inventory-{run_id}.json")
    playbook = os.path.join(workdir, "role.yml")
    timer_out = os.path.join(workdir, f"timer-{run_id}.json")
    log = os.path.join(workdir, f"ansible-{run_id}.log")
    with open(playbook, "w", encoding="utf-8") as handle:
        handle.write(PLAYBOOK)
    with open(inventory, "w", encoding="utf-8") as handle:
        json.dump({"all": {"hosts": {"hv": {
            "ansible_connection": "local", "ansible_python_interpreter": interpreter,
            "kernel_update_vms": names, "kernel_update_state_dir": os.path.join(workdir, "state"),
            "kernel_update_reboot_method": "none", "kernel_update_force": True, "kernel_update_timeout": 300,
            "kernel_update_run_id": run_id, **(extra or {}),
        }}}}, handle)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run([ANSIBLE_PLAYBOOK, "-i", inventory, playbook], stdout=out, stderr=subprocess.STDOUT,
                              env=ansible_env(workdir, timer_out), cwd=workdir, check=False, timeout=1800)
    wall = time.monotonic() - started
    if done.returncode != 0:
        with open(log, encoding="utf-8", errors="replace") as handle:
            raise BenchError(f"the role failed (exit {done.returncode}): {handle.read()[-1500:]}")
    with open(timer_out, encoding="utf-8") as handle:
        record = json.load(handle)
    record["process_wall"] = wall
    return record


def analyse(record: Dict[str, Any]) -> Dict[str, Any]:
    tasks = record["tasks"]
    save = next((t for t in tasks if t["action"].endswith("cpr_save") and "result" in t), None)
    restore = next((t for t in tasks if t["action"].endswith("cpr_restore") and "result" in t), None)
    if not (save and restore and save["result"]["vms"] and restore["result"]["vms"]):
        raise BenchError("the role ran no cpr_save and cpr_restore")
    paused = {vm["name"]: vm["paused_at"] for vm in save["result"]["vms"]}
    back = {vm["name"]: paused[vm["name"]] + vm["downtime_seconds"] for vm in restore["result"]["vms"]}
    blackout = max(back.values()) - min(paused.values())
    wall = record["ended"] - tasks[0]["start"]
    executed = [t for t in tasks if any(s != "skipped" for s in t["hosts"].values())]
    return {
        "role_wall": wall, "process_wall": record["process_wall"], "blackout": blackout, "overhead": wall - blackout,
        "tasks": len(tasks), "tasks_executed": len(executed), "round_trips": sum(t["round_trips"] for t in tasks),
        "modules": [t["action"] for t in tasks if t["round_trips"]],
        "task_seconds": {f"{i:02d} {t['name'].split(' : ')[-1]}": round(t["end"] - t["start"], 3)
                         for i, t in enumerate(tasks) if any(s != "skipped" for s in t["hosts"].values())},
        "save_module_seconds": save["end"] - save["start"], "restore_module_seconds": restore["end"] - restore["start"],
        "between_save_and_restore_modules": restore["start"] - save["end"],
        "save_task_start_to_first_paused": min(paused.values()) - save["start"],
        "first_paused_to_save_task_end": save["end"] - min(paused.values()),
        "restore_task_start_to_last_back": max(back.values()) - restore["start"],
    }


def run(ctx: Context) -> Tuple[List[Row], Dict[str, Any]]:
    missing = role_missing()
    if missing:
        return [Row("4", "role overhead: NOT MEASURED", None, unit="", note=missing)], {"missing": missing}
    counts = [1, ctx.counts()[-1]]
    workdir = os.path.join(ctx.base, "role")
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    details: Dict[str, Any] = {"runs": ctx.runs, "counts": counts, "per_count": {}}
    results: Dict[int, List[Dict[str, Any]]] = {}
    for count in counts:
        vms = ctx.pool.get(count)
        names = [vm.name for vm in vms]
        snapshot = testbed.memory_snapshot(vms)
        results[count] = []
        for index in range(ctx.runs):
            # cpr_save and cpr_restore as tasks of their own (benchmark 6 measures the one-call qemu_update).
            record = play_role(workdir, names, f"bench{os.getpid()}n{count}r{index}", extra=SEPARATE)
            for vm in vms:
                vm.refresh_pid()
            results[count].append(analyse(record))
            last = results[count][-1]
            ctx.log(f"  {count} VM(s) run {index + 1}: role {last['role_wall']:.2f} s, blackout {last['blackout']:.2f} s, "
                    f"overhead {last['overhead']:.2f} s, {last['round_trips']} round trips")
        ctx.pool.check(vms, snapshot)
        items = results[count]
        details["per_count"][str(count)] = {
            key: summary([r[key] for r in items]) for key in (
                "role_wall", "process_wall", "blackout", "overhead", "save_module_seconds", "restore_module_seconds",
                "between_save_and_restore_modules", "save_task_start_to_first_paused", "first_paused_to_save_task_end",
                "restore_task_start_to_last_back")}
        details["per_count"][str(count)].update({
            "round_trips": sorted({r["round_trips"] for r in items}), "tasks": items[0]["tasks"],
            "tasks_executed": sorted({r["tasks_executed"] for r in items}), "modules": items[0]["modules"],
            "task_seconds_median": median_phases([r["task_seconds"] for r in items])})

    low, top = counts
    over = {n: median([r["overhead"] for r in results[n]]) for n in counts}
    trips = {n: median([r["round_trips"] for r in results[n]]) for n in counts}
    rows = []
    for n in counts:
        rows.append(Row("4", f"role wall time, {n} VM{'s' if n > 1 else ''}", median([r["role_wall"] for r in results[n]])))
        parts = [median([r[k] for r in results[n]]) for k in (
            "first_paused_to_save_task_end", "between_save_and_restore_modules", "restore_task_start_to_last_back")]
        rows.append(Row("4", f"  blackout inside it (first paused to last agent answering), {n} VM{'s' if n > 1 else ''}",
                        median([r["blackout"] for r in results[n]]),
                        note=f"{parts[0]:.2f} s of cpr_save after the first pause, {parts[1]:.2f} s between the tasks, "
                        f"{parts[2]:.2f} s of cpr_restore (module start-up included)"))
        rows.append(Row("4", f"  role overhead (wall - blackout), {n} VM{'s' if n > 1 else ''}", over[n]))
    growth = over[top] / over[low] if over[low] else None
    rows.append(Row("4", f"overhead({top}) / overhead(1)", growth, None, "x", growth, f"<= {GOAL}",
                    goal_check(growth, "<=", GOAL)))
    same = trips[top] == trips[low]
    rows.append(Row("4", f"module round trips, {top} VMs vs 1", trips[top], trips[low], "", trips[top] / trips[low],
                    "no growth", same))
    return rows, details
