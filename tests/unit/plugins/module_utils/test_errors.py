"""One error for a concurrent call that failed for some VMs, carrying what it did for the others."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CprError,
    NotReadyError,
    RolledBackError,
    raise_failures,
)


def test_an_error_names_the_vm_and_says_what_to_do():
    assert str(CprError("it broke", "web1", hint="fix it")) == "VM web1: it broke. Fix it"
    assert str(CprError("it broke")) == "it broke"
    assert str(RolledBackError("web1")) == (
        "VM web1: rolled back and resumed, because another VM of this call failed to save")


@pytest.mark.parametrize("results, done, message", [
    # One VM failed and none is done: its own error, with the detail attached.
    ([NotReadyError("not ready", "a")], [], "VM a: not ready"),
    # One failed, one done: the failure and who was done.
    ([NotReadyError("not ready", "a"), "ok"], ["b"], "VM a: not ready. Restored: b. Fix and run again"),
    # Two failed.
    ([CprError("x", "a"), CprError("y", "b")], [], "VM a: x; VM b: y. Fix and run again"),
    # A failure that is not ours (a bug) is still named by its VM.
    ([ValueError("boom")], [], "boom. Fix and run again"),
])
def test_raise_failures(results, done, message):
    names = ["a", "b"][:len(results)]
    detail = {"changed": bool(done), "vms": [{"name": n} for n in done]}
    with pytest.raises(CprError) as failure:
        raise_failures(names, results, detail, "Restored", "fix and run again")
    assert str(failure.value) == message
    failed = [n for n, r in zip(names, results) if isinstance(r, BaseException)]
    assert [e["name"] for e in failure.value.result["errors"]] == failed
    assert failure.value.result["vms"] == detail["vms"]


def test_no_failure_raises_nothing():
    raise_failures(["a"], ["ok"], {"vms": [{"name": "a"}]}, "Done", "")
