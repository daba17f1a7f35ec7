"""Print, as JSON, every test-bed guest of a work directory: marker, counter, pid, runstate.

Used by the molecule scenario's create and verify playbooks:

    guests.py WORKDIR
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "tests", "testbed"))

import testbed  # noqa: E402  pylint: disable=wrong-import-position


def main(workdir: str) -> None:
    guests = {}
    for vm in testbed._load(workdir):  # pylint: disable=protected-access
        pid = vm.refresh_pid()
        if pid is None:
            continue
        guests[vm.name] = {
            "marker": vm.marker(),
            "counter": vm.counter(),
            "pid": pid,
            "runstate": vm.runstate(),
            "exe_deleted": os.readlink(f"/proc/{pid}/exe").endswith(" (deleted)"),
        }
    print(json.dumps(guests, indent=2, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
