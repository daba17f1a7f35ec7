"""5. Peak memory (max RSS) of the module processes, as Ansible runs them.

A playbook runs ansible.builtin.ping (Ansible's own floor), vm_status,
cpr_save and cpr_restore against this machine (local connection) with an
interpreter of ours as ansible_python_interpreter: it runs the real Python
as its child and logs the child's ru_maxrss (wait4) per module. That is the
AnsiballZ process on the host, module and engine included (QEMUs started by
cpr_restore outlive it and are not counted). Measured for 1 and 8 small VMs,
and for the RAM-copy VM of benchmark 3 when it ran in the same invocation.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.harness import BenchError, Context, Row, testbed
from benchmarks.role import ANSIBLE_PLAYBOOK, ansible_env

PLAYBOOK = """---
- name: The modules, one after another
  hosts: hv
  gather_facts: false
  tasks:
    - name: Ansible's own floor
      ansible.builtin.ping:
    - name: Status
      hypervisor.cpr.vm_status:
        names: "{{ bench_names }}"
        reboot: none
    - name: Save
      hypervisor.cpr.cpr_save:
        names: "{{ bench_names }}"
        state_dir: "{{ bench_state_dir }}"
        reboot: none
        timeout: 900
    - name: Restore
      hypervisor.cpr.cpr_restore:
        names: "{{ bench_names }}"
        state_dir: "{{ bench_state_dir }}"
        timeout: 900
"""
WRAPPER = """#!{python}
# Runs the real Python as a child and logs its peak RSS (written by benchmarks/memory.py).
import json, os, sys
argv = [{python!r}] + sys.argv[1:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open({log!r}, "a", encoding="utf-8") as handle:
    handle.write(json.dumps({{"argv": sys.argv[1:], "maxrss_kib": usage.ru_maxrss}}) + "\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""
MODULES = ("ping", "vm_status", "cpr_save", "cpr_restore")


def module_rss(workdir: str, names: List[str], tag: str) -> Dict[str, float]:
    """Run the playbook for these VMs; return each module's peak RSS in MiB."""
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    log = os.path.join(workdir, f"rss-{tag}.jsonl")
    wrapper = os.path.join(workdir, "python-rss")
    with open(wrapper, "w", encoding="utf-8") as handle:
        handle.write(WRAPPER.format(python=sys.executable, log=log))
    os.chmod(wrapper, stat.S_IRWXU)
    playbook = os.path.join(workdir, "modules.yml")
    with open(playbook, "w", encoding="utf-8") as handle:
        handle.write(PLAYBOOK)
    inventory = os.path.join(workdir, f"inventory-{tag}.json")
    with open(inventory, "w", encoding="utf-8") as handle:
        json.dump({"all": {"hosts": {"hv": {
            "ansible_connection": "local", "ansible_python_interpreter": wrapper, "bench_names": names,
            "bench_state_dir": os.path.join(workdir, f"state-{tag}")}}}}, handle)
    out_path = os.path.join(workdir, f"ansible-{tag}.log")
    with open(out_path, "w", encoding="utf-8") as out:
        done = subprocess.run([ANSIBLE_PLAYBOOK, "-i", inventory, playbook], stdout=out, stderr=subprocess.STDOUT,
                              env=ansible_env(workdir, os.path.join(workdir, f"timer-{tag}.json")), cwd=workdir,
                              check=False, timeout=1800)
    if done.returncode != 0:
        with open(out_path, encoding="utf-8", errors="replace") as handle:
            raise BenchError(f"the module playbook failed (exit {done.returncode}): {handle.read()[-1500:]}")
    peaks: Dict[str, float] = {}
    with open(log, encoding="utf-8") as handle:
        for line in handle:
            entry = json.loads(line)
            script = os.path.basename(entry["argv"][-1]) if entry["argv"] else ""
            module = next((m for m in MODULES if script == f"AnsiballZ_{m}.py"), None)
            if module:
                peaks[module] = max(peaks.get(module, 0.0), entry["maxrss_kib"] / 1024)
    missing = [m for m in MODULES if m not in peaks]
    if missing:
        raise BenchError(f"no peak RSS logged for {', '.join(missing)} (is ANSIBLE_PIPELINING on?)")
    return {m: round(peaks[m], 1) for m in MODULES}


def run(ctx: Context) -> Tuple[List[Row], Dict[str, Any]]:
    counts = [1, ctx.counts()[-1]]
    workdir = os.path.join(ctx.base, "memory")
    peaks: Dict[int, Dict[str, float]] = {}
    for count in counts:
        vms = ctx.pool.get(count)
        snapshot = testbed.memory_snapshot(vms)
        peaks[count] = module_rss(workdir, [vm.name for vm in vms], f"n{count}")
        for vm in vms:
            vm.refresh_pid()
        ctx.pool.check(vms, snapshot)
        ctx.log(f"  {count} VM(s): " + ", ".join(f"{m} {v:.1f} MiB" for m, v in peaks[count].items()))
    low, top = counts
    ram_copy: Optional[Dict[str, Any]] = ctx.shared.get("rss_ram_copy")
    rows = []
    for module in MODULES:
        rows.append(Row("5", f"peak RSS of the {module} process, {top} VMs / 1 VM", peaks[top][module],
                        peaks[low][module], "MiB", peaks[top][module] / peaks[low][module]))
    if ram_copy:
        for module in ("cpr_save", "cpr_restore"):
            rows.append(Row("5", f"peak RSS of the {module} process, RAM copy of {ram_copy['allocated_MB']:.0f} MB / 1 "
                            "small VM", ram_copy["peaks"][module], peaks[low][module], "MiB",
                            ram_copy["peaks"][module] / peaks[low][module]))
    return rows, {"counts": counts, "peak_rss_mib": {str(n): p for n, p in peaks.items()}, "ram_copy": ram_copy}
