"""A round of saves: nobody stops before all are ready, and all keep their save or none does."""

import asyncio

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveRound


async def _vm(vm_round, name, script, log):
    """One VM's part: ('ready'), then ('saved' | 'failed'), then, if saved, ask whether to keep it."""
    try:
        for step in script:
            if step == "ready":
                await vm_round.ready_to_stop(name)
                log.append(f"{name} stops")
            elif step == "fail early":
                raise RuntimeError("failed before it was ready")
            elif step == "failed":
                vm_round.report(name, saved=False)
                return f"{name} undone"
            elif step == "saved":
                vm_round.report(name, saved=True)
                return f"{name} kept" if await vm_round.keep() else f"{name} rolled back"
        return f"{name} ?"
    finally:
        vm_round.report(name, saved=False)


@pytest.mark.parametrize("all_or_nothing, scripts, outcome", [
    (True, {"a": ["ready", "saved"], "b": ["ready", "saved"]}, ["a kept", "b kept"]),
    (True, {"a": ["ready", "saved"], "b": ["ready", "failed"]}, ["a rolled back", "b undone"]),
    (False, {"a": ["ready", "saved"], "b": ["ready", "failed"]}, ["a kept", "b undone"]),
    # A VM that fails before it is ready does not hold the others at the start line.
    (True, {"a": ["ready", "saved"], "b": ["fail early"]}, ["a rolled back", "b error"]),
    (False, {"a": ["ready", "saved"], "b": ["fail early"]}, ["a kept", "b error"]),
    (True, {"a": ["ready", "saved"]}, ["a kept"]),
])
def test_outcomes(all_or_nothing, scripts, outcome):
    async def run():
        vm_round = SaveRound(list(scripts), all_or_nothing)
        log = []
        results = await asyncio.wait_for(asyncio.gather(
            *(_vm(vm_round, name, script, log) for name, script in scripts.items()), return_exceptions=True), 5)
        return [f"{name} error" if isinstance(r, BaseException) else r for name, r in zip(scripts, results)], log

    results, _log = asyncio.run(run())
    assert results == outcome


def test_no_vm_stops_before_every_vm_is_ready():
    async def run():
        vm_round = SaveRound(["a", "b"], True)
        log = []

        async def slow_b():
            await asyncio.sleep(0.05)
            log.append("b ready")
            return await _vm(vm_round, "b", ["ready", "saved"], log)

        await asyncio.gather(_vm(vm_round, "a", ["ready", "saved"], log), slow_b())
        return log

    log = asyncio.run(run())
    assert log.index("b ready") < log.index("a stops")
