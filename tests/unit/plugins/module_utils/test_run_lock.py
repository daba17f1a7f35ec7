"""The run lock's transitions: who may take it, take it again, take it over and give it back."""

import json
import os
import subprocess

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import LockedError, RunLockedError
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import process_identity
from ansible_collections.hypervisor.cpr.plugins.module_utils._run_lock import acquire, check_run, read_lock, release
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir


def _holder(path):
    with StateDir.open(path) as state_dir:
        return read_lock(state_dir)


# (held by, action, run id, force, check mode) -> (changed, held by afterwards) or the error it raises
@pytest.mark.parametrize("held_by, action, run_id, force, check_mode, outcome", [
    (None, "acquire", "r1", False, False, (True, "r1")),
    (None, "acquire", "r1", False, True, (True, None)),
    ("r1", "acquire", "r1", False, False, (False, "r1")),
    ("r1", "acquire", "r2", False, False, "the host is locked by run 'r1'"),
    ("r1", "acquire", "r2", True, False, (True, "r2")),
    ("r1", "acquire", "r2", True, True, (True, "r1")),
    ("r1", "release", "r1", False, False, (True, None)),
    ("r1", "release", "r1", False, True, (True, "r1")),
    ("r1", "release", "r2", False, False, "held by run 'r1' of alice@ctl since .*, not by run 'r2'"),
    ("r1", "release", "r2", True, False, (True, None)),
    (None, "release", "r1", False, False, (False, None)),
])
def test_transitions(tmp_path, held_by, action, run_id, force, check_mode, outcome):
    path = str(tmp_path / "state")
    if held_by:
        acquire(path, held_by, owner="alice@ctl")
    call = {"acquire": acquire, "release": release}[action]
    if isinstance(outcome, str):
        with pytest.raises(RunLockedError, match=outcome) as failure:
            call(path, run_id, force=force, check_mode=check_mode)
        assert failure.value.holder["run_id"] == held_by
        assert failure.value.result == {"holder": failure.value.holder}
        assert (_holder(path) or {}).get("run_id") == held_by
        return
    result = call(path, run_id, force=force, check_mode=check_mode)
    changed, held_after = outcome
    assert result["changed"] is changed
    assert (_holder(path) or {}).get("run_id") == held_after
    if held_by and held_by != run_id and force:
        assert result["previous"]["run_id"] == held_by


def test_the_lock_records_who_took_it(tmp_path):
    path = str(tmp_path / "state")
    lock = acquire(path, "r1", owner="alice@ctl", details={"role": "kernel_update"})["lock"]
    assert (lock["run_id"], lock["owner"], lock["process"]) == ("r1", "alice@ctl", process_identity(os.getpid()))
    assert lock["details"] == {"role": "kernel_update"}
    assert os.stat(os.path.join(path, ".hypervisor-cpr.run")).st_mode & 0o777 == 0o600


def test_a_run_id_is_needed(tmp_path):
    with pytest.raises(LockedError, match="a run id is needed"):
        acquire(str(tmp_path), "")


@pytest.mark.parametrize("content, described", [
    ("not json", "a run that cannot be identified (unreadable lock: Expecting value"),
    ("[1]", "a run that cannot be identified (unreadable lock: not a JSON object)"),
])
def test_an_unreadable_lock_is_held_by_nobody_known(tmp_path, content, described):
    path = str(tmp_path / "state")
    acquire(path, "r0")
    with open(os.open(os.path.join(path, ".hypervisor-cpr.run"), os.O_WRONLY | os.O_TRUNC), "w",
              encoding="utf-8") as handle:
        handle.write(content)
    with pytest.raises(RunLockedError) as failure:
        acquire(path, "r1")
    assert described in str(failure.value)
    assert acquire(path, "r1", force=True)["changed"]
    with open(os.path.join(path, ".hypervisor-cpr.run"), encoding="utf-8") as handle:
        assert json.load(handle)["run_id"] == "r1"


@pytest.fixture
def working_holder(tmp_path):
    """A run lock whose holder's process still works on the host (a real process, not this one)."""
    path = str(tmp_path / "state")
    acquire(path, "r1", owner="alice@ctl")
    with subprocess.Popen(["sleep", "60"]) as worker:
        with StateDir.open(path) as state_dir:
            state_dir.write_run_lock(dict(read_lock(state_dir), process=process_identity(worker.pid)))
        yield path, worker
        worker.kill()


@pytest.mark.parametrize("run_id, force", [("r1", False), ("r2", True)])
def test_nobody_enters_while_the_holders_process_works(working_holder, run_id, force):
    path, worker = working_holder
    with pytest.raises(RunLockedError, match=rf"run 'r1' of alice@ctl .* still works on the host: its process {worker.pid}"):
        acquire(path, run_id, force=force)


def test_a_dead_holders_process_lets_its_run_id_and_force_in(working_holder):
    path, worker = working_holder
    worker.kill()
    worker.wait()
    assert not acquire(path, "r1")["changed"]
    assert acquire(path, "r2", force=True)["previous"]["run_id"] == "r1"


@pytest.mark.parametrize("held_by, run_id, allowed", [
    (None, None, True),
    (None, "r1", True),
    ("r1", "r1", True),
    ("r1", None, False),
    ("r1", "r2", False),
])
def test_modules_act_only_for_the_run_that_holds_the_host(tmp_path, held_by, run_id, allowed):
    path = str(tmp_path / "state")
    if held_by:
        acquire(path, held_by)
    with StateDir.open(path) as state_dir:
        state_dir.create()
        if allowed:
            check_run(state_dir, run_id)
            if held_by:
                assert read_lock(state_dir)["process"] == process_identity(os.getpid())
        else:
            with pytest.raises(RunLockedError, match=f"the host is held by run 'r1'.* and this call has "
                                                     f"{'no run id' if run_id is None else 'run id .r2.'}"):
                check_run(state_dir, run_id)
