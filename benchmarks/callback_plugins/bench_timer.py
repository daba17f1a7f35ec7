# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark callback: when each task started and ended, what it did, and the save/restore/update results.

Enabled only by the benchmarks (ANSIBLE_CALLBACKS_ENABLED=bench_timer); writes
JSON to $BENCH_TIMER_OUT at the end of the playbook.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: bench_timer
type: aggregate
short_description: Task timings for the hypervisor.cpr benchmarks
description:
  - Records the start and end of every task, its status per host, whether it ran a module on the host, and the
    results of cpr_save, cpr_restore and qemu_update, and writes them as JSON to the file named by E(BENCH_TIMER_OUT).
requirements:
  - enabled in the configuration (the benchmarks set ANSIBLE_CALLBACKS_ENABLED)
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase

# Actions that run on the controller only: no round trip to the host.
CONTROLLER_ACTIONS = frozenset(
    f"{prefix}{name}" for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for name in ("set_fact", "assert", "debug", "fail", "include_tasks", "import_tasks", "include_role",
                 "import_role", "meta", "add_host", "group_by", "pause", "include_vars", "set_stats",
                 "validate_argument_spec"))
KEPT_RESULTS = ("cpr_save", "cpr_restore", "qemu_update")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = time.time()
        self.tasks = []
        self.current = None

    def _task_start(self, task):
        self._task_end()
        self.current = {"name": task.get_name(), "action": task.action, "start": time.time(), "end": None,
                        "hosts": {}, "round_trips": 0}
        self.tasks.append(self.current)

    def _task_end(self):
        if self.current is not None and self.current["end"] is None:
            self.current["end"] = time.time()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_start(task)

    def _result(self, result, status, item=False):
        if self.current is None:
            return
        self.current["end"] = time.time()
        host = result._host.get_name()  # pylint: disable=protected-access
        data = result._result  # pylint: disable=protected-access
        remote = self.current["action"] not in CONTROLLER_ACTIONS and status != "skipped"
        if item or "results" not in data:
            self.current["round_trips"] += 1 if remote else 0
        if not item:
            self.current["hosts"][host] = status
            if self.current["action"].split(".")[-1] in KEPT_RESULTS and status != "skipped":
                self.current["result"] = {"vms": data.get("vms", []), "msg": data.get("msg")}

    def v2_runner_on_ok(self, result):
        self._result(result, "changed" if result._result.get("changed") else "ok")  # pylint: disable=protected-access

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "unreachable")

    def v2_runner_item_on_ok(self, result):
        self._result(result, "ok", item=True)

    def v2_runner_item_on_failed(self, result):
        self._result(result, "failed", item=True)

    def v2_runner_item_on_skipped(self, result):
        self._result(result, "skipped", item=True)

    def v2_playbook_on_stats(self, stats):
        self._task_end()
        path = os.environ.get("BENCH_TIMER_OUT")
        if not path:
            return
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"started": self.started, "ended": time.time(), "tasks": self.tasks}, handle, indent=1)
