"""6. libvirt domains: the collection's concurrent managed saves against libvirt-guests' serial way.

A real libvirt daemon (tests/libvirt/libvirtlab.py: libvirtd in a mount namespace of its own) runs N TCG domains of
the test bed's guest. Each run, in the same daemon and on the same domains:

- ours: hypervisor.cpr's libvirt_save of every domain at once, then libvirt_restore of every domain at once (reboot
  method none, so that only the host reboot is left out of both);
- the reference, libvirt-guests' way (ON_SHUTDOWN=suspend with PARALLEL_SHUTDOWN=0, then ON_BOOT=start): one
  ``virDomainManagedSave`` after another, then one ``virDomainCreate`` after another.

The random marker in each guest's RAM is checked after every cycle. The image each save wrote is set against the
domain's RAM (the lab's daemon writes the sparse format).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from benchmarks.harness import REPO_ROOT, BenchError, Context, Row, goal_check, workdir

sys.path.insert(0, str(REPO_ROOT / "tests" / "libvirt"))

import libvirtlab  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_restore import restore  # noqa: E402
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_save import LibvirtSaveOptions, save  # noqa: E402

MEM_MIB = 192


def _markers(lab: libvirtlab.LibvirtLab, names: List[str]) -> Dict[str, str]:
    return {name: lab.marker(name) for name in names}


def _check(lab: libvirtlab.LibvirtLab, names: List[str], before: Dict[str, str], what: str) -> None:
    after = _markers(lab, names)
    changed = [name for name in names if after[name] != before[name]]
    if changed:
        raise BenchError(f"{what}: guest RAM changed in {', '.join(changed)}")


def _ours(lab: libvirtlab.LibvirtLab, names: List[str], state_dir: str) -> Tuple[float, List[Dict[str, Any]]]:
    started = time.monotonic()
    saved = save(names, state_dir, LibvirtSaveOptions(uri=lab.uri, reboot="none", timeout=300))
    restore(state_dir, lab.uri, names, timeout=300)
    return time.monotonic() - started, saved["vms"]


def _serial(lab: libvirtlab.LibvirtLab, names: List[str]) -> float:
    started = time.monotonic()
    for name in names:
        lab.domain(name).managedSave(0)
    for name in names:
        lab.domain(name).create()
    for name in names:
        lab.wait_agent(name, 300)
    return time.monotonic() - started


def run(ctx: Context) -> Tuple[List[Row], Dict[str, Any]]:
    why = libvirtlab.available()
    if why:
        raise BenchError(f"no libvirt lab here: {why}")
    count = 2 if ctx.quick else 3
    with workdir("libvirt") as base:
        # QEMU runs as libvirt-qemu and must reach the guest's kernel in the lab below.
        os.chmod(base, 0o711)
        lab = libvirtlab.LibvirtLab.start(Path(base) / "lab")
        try:
            names = [lab.define_domain(f"b{i}", wait_agent=False, mem_mib=MEM_MIB).name() for i in range(count)]
            for name in names:
                lab.wait_agent(name)
            before = _markers(lab, names)
            ours, serial, images = [], [], []
            for run_index in range(ctx.runs):
                seconds, records = _ours(lab, names, str(Path(base) / f"state{run_index}"))
                _check(lab, names, before, "collection")
                ours.append(seconds)
                images += [r["image_allocated"] / r["memory_bytes"] for r in records]
                serial.append(_serial(lab, names))
                _check(lab, names, before, "libvirt-guests' way")
                ctx.log(f"  {count} domains: collection {seconds:.2f} s, one after another {serial[-1]:.2f} s")
        finally:
            lab.stop()
    ours_s, serial_s, image = statistics.median(ours), statistics.median(serial), statistics.median(images)
    ratio = ours_s / serial_s
    rows = [
        Row("6", f"save + restore of {count} libvirt domains, collection / libvirt-guests' serial way", ours_s,
            serial_s, ratio=ratio, goal="<= 1.0", met=goal_check(ratio, "<=", 1.0),
            note="managed saves and restores all at once vs one after another, in the same daemon; RAM markers "
                 "identical after each"),
        Row("6", f"managed save image on disk / guest RAM ({MEM_MIB} MiB, sparse format)", image, unit="x",
            note="bytes the image takes on disk over the domain's RAM; the idle guest touches little of it"),
    ]
    return rows, {"domains": count, "mem_mib": MEM_MIB, "ours_seconds": ours, "serial_seconds": serial,
                  "image_over_ram": images}
