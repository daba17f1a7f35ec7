"""python -m benchmarks [--quick] [--runs N] [--json PATH] [--only 1,2,3,4,5,6,7,8]

Runs the benchmarks against real QEMU VMs (TCG), prints one table and
writes it, with every measurement and the machine it came from, as JSON.
Run it as root from the repository root with the venv's Python, on a machine
set up by scripts/install-host-deps.sh (or scripts/quickstart.sh).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

from benchmarks import harness
from benchmarks.harness import Context, LoadMeter, Row, SmallPool, testbed

BENCHMARKS = {
    "1": ("blackout", "blackout of one VM against the hand-typed reference"),
    "2": ("scaling", "whole-host blackout with 1, 4 and 8 VMs, at once and one after another"),
    "3": ("ramcopy", "RAM-copy throughput against dd, with and without mapped-ram + multifd"),
    "4": ("role", "the kernel_update role's own overhead for 1 and 8 VMs"),
    "5": ("memory", "peak memory of the module processes"),
    "6": ("libvirt", "libvirt domains: concurrent managed saves against libvirt-guests' serial way, image size"),
    "7": ("transfer", "QEMU-only update: cpr-transfer via the role against the hand-typed transfer and the relaunch"),
    "8": ("kexec", "a host's blackout across a real kexec, without and with the boot restore (kexec lab, minutes)"),
}
# Not in the default set: 8 boots a kexec lab and kexecs it twice.
DEFAULT_ONLY = "1,2,3,4,5,6,7"
DEFAULT_JSON = "reports/benchmarks.json"
SMALL_MEM_MIB = 128


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smallest configuration (CI): 1 run, 1 and 2 VMs, a small RAM copy")
    parser.add_argument("--runs", type=int, default=None, help="measured runs per figure (default 5, --quick 1)")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"where to write the JSON (default {DEFAULT_JSON})")
    parser.add_argument("--only", default=DEFAULT_ONLY, help=f"which benchmarks, e.g. 1,2 (default {DEFAULT_ONLY})")
    parser.add_argument("--ram-copy-mib", type=int, default=None,
                        help="incompressible guest memory for benchmark 3 (default 1024, --quick 32)")
    args = parser.parse_args(argv)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in args.only if x not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _fmt(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "MB/s" or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if unit == "s" else f"{value:.2f}"


def format_table(rows: List[Dict[str, Any]]) -> str:
    header = ["#", "figure", "ours", "baseline", "unit", "ratio", "goal", "met"]
    lines = [[r["item"], r["figure"], _fmt(r["ours"], r["unit"]), _fmt(r["baseline"], r["unit"]), r["unit"],
              _fmt(r["ratio"]), r["goal"], {True: "yes", False: "NO", None: ""}[r["met"]]] for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    out = []
    for index, line in enumerate([header] + lines):
        cells = [str(c).ljust(w) if i in (1, 6) else str(c).rjust(w) if i not in (0, 4, 7) else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [f"  {r['item']}. {r['figure'].strip()}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out + (["", "notes:"] + notes if notes else []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks: run as root (drop_caches, state directories like the modules' own)", file=sys.stderr)
        return 2
    harness.install_signal_handlers()
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    testbed.build_guest()
    data: Dict[str, Any] = {
        "schema": 1,
        "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick, "runs": args.runs, "only": args.only, "pid": os.getpid(),
        "engine": harness.ENGINE_FILE,
        "machine": harness.machine_facts(), "load": {}, "sections": {}, "errors": {}, "table": [],
    }
    overall = LoadMeter()
    rows: List[Row] = []
    with harness.workdir("pool") as pool_dir:
        ctx = Context(quick=args.quick, runs=args.runs, base=pool_dir, pool=SmallPool(pool_dir, SMALL_MEM_MIB),
                      log=log, shared={"ram_copy_mib": args.ram_copy_mib, "measure_rss": "5" in args.only})
        # The RAM copy (3) first, before the pool of small VMs grows to 8 guests that take CPU time; the
        # memory benchmark (5) last, as it reuses what the others booted.
        for item in sorted(args.only, key=lambda x: {"3": 0, "5": 9}.get(x, int(x))):
            name, title = BENCHMARKS[item]
            log(f"{item}. {title}")
            meter = LoadMeter()
            try:
                module = importlib.import_module(f"benchmarks.{name}")
                section_rows, details = module.run(ctx)
                rows += section_rows
                data["sections"][item] = details
            except Exception as exc:  # pylint: disable=broad-except
                # One benchmark failing still leaves the others' figures; the run fails at the end.
                log(f"{item}. FAILED: {exc}")
                data["errors"][item] = "".join(traceback.format_exception(exc))[-4000:]
                rows.append(Row(item, f"FAILED: {title}", None, unit="", note=f"{type(exc).__name__}: {exc}"))
            data["load"][item] = meter.stop()
            log(f"{item}. done in {data['load'][item]['seconds']} s, machine busy "
                f"{data['load'][item]['cpu_busy_percent']} %, loadavg {data['load'][item]['loadavg_end']}")
        data["vm_pool"] = {"mem_mib": SMALL_MEM_MIB, "vms": len(ctx.pool.vms), "boot_seconds": ctx.pool.boot_seconds}
    harness.cleanup_all()
    data["workdirs"] = list(harness.ALL_WORKDIRS)
    data["load"]["all"] = overall.stop()
    data["duration_seconds"] = round(time.time() - started, 1)
    data["table"] = [r.to_dict() for r in rows]
    table = format_table(data["table"])
    data["table_text"] = table
    harness.write_json(args.json, data)
    machine = data["machine"]
    load = data["load"]["all"]
    print(f"hypervisor.cpr benchmarks{' (--quick)' if args.quick else ''}: {machine['cpu']}, {machine['cores']} cores, "
          f"{machine['memory_mib']} MiB, {machine['os']}, kernel {machine['kernel']}, {machine['qemu']} (TCG)")
    print(f"machine load during the run: {load['cpu_busy_percent']} % CPU busy (all processes), loadavg "
          f"{load['loadavg_start'][0]} -> {load['loadavg_end'][0]}; {data['duration_seconds']} s; runs per figure "
          f"{args.runs}; medians\n")
    print(table)
    print(f"\nJSON: {args.json}")
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        harness.cleanup_all()
