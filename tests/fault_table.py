"""The fault campaign's table: one row per injected fault, printed and written to tests/output/faults.json.

Tests add rows through the ``campaign`` fixture (tests/conftest.py); each pytest run prints its rows and
writes them as JSON (to $HYPERVISOR_CPR_CAMPAIGN_OUT, default tests/output/faults.json). scripts/test.sh
runs the kexec-lab rows in a pytest of their own, beside the others, and joins the two parts here:

    python tests/fault_table.py PART.json... --out tests/output/faults.json

prints the whole table (the parts in the order given) and writes it. Stdlib only.
"""

import argparse
import json
import os
import sys

COLUMNS = ("fault", "injected at", "outcome", "VMs lost", "state files lost", "re-run finished")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output", "faults.json")


def row(fault, injected_at, outcome, vms_lost, files_lost, rerun_finished):
    """One row; rerun_finished is True (a real re-run finished the job), False (it could not) or None (n/a)."""
    rerun = {True: "yes", False: "no", None: "n/a"}[rerun_finished]
    return dict(zip(COLUMNS, (fault, injected_at, outcome, vms_lost, files_lost, rerun)))


def lines(rows):
    """The table as text lines, header first, columns padded."""
    header = dict(zip(COLUMNS, COLUMNS))
    widths = [max(len(str(r[c])) for r in rows + [header]) for c in COLUMNS]
    return [" | ".join(str(r[c]).ljust(w) for c, w in zip(COLUMNS, widths)) for r in [header] + rows]


def write(rows, path=None):
    path = path or os.environ.get("HYPERVISOR_CPR_CAMPAIGN_OUT") or DEFAULT_OUT
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=2)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Join parts of the fault campaign's table and print it.")
    parser.add_argument("parts", nargs="+", help="JSON files written by pytest runs")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = []
    for part in args.parts:
        with open(part, encoding="utf-8") as handle:
            rows += json.load(handle)
    if not rows:
        print("fault_table.py: no rows in " + ", ".join(args.parts), file=sys.stderr)
        return 1
    print("\n".join(lines(rows)))
    print(f"{len(rows)} rows, written to {write(rows, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
