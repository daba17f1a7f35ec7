"""The command lines a restore and a fresh start give QEMU, from the one recorded."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._process import fresh_argv, restore_argv

QEMU = "qemu-system-x86_64"
RECORDED = [QEMU, "-name", "guest=vm1", "-S", "-machine", "q35", "-m", "256"]
# What a QEMU restored once runs with: the machine pinned and -incoming defer.
RESTORED_ONCE = RECORDED[:3] + RECORDED[4:] + ["-machine", "pc-q35-10.0", "-incoming", "defer"]
PINNED = [QEMU, "-name", "guest=vm1", "-machine", "q35", "-m", "256", "-machine", "pc-q35-10.0", "-incoming", "defer"]


@pytest.mark.parametrize("recorded, fresh", [
    (RECORDED, [QEMU, "-name", "guest=vm1", "-machine", "q35", "-m", "256"]),
    (RESTORED_ONCE, RESTORED_ONCE[:-2]),
    # Every spelling of the options, and -incoming with a URI.
    ([QEMU, "--S", "--incoming", "tcp:0:4444", "-m", "64"], [QEMU, "-m", "64"]),
    ([QEMU, "-incoming", "defer", "-S"], [QEMU]),
    # A value that looks like an option's name is not one.
    ([QEMU, "-name", "S", "-device", "incoming"], [QEMU, "-name", "S", "-device", "incoming"]),
    ([QEMU], [QEMU]),
])
def test_fresh_start_drops_incoming_and_start_paused(recorded, fresh):
    assert fresh_argv(recorded) == fresh


@pytest.mark.parametrize("recorded, machine_type, restored", [
    (RECORDED, "pc-q35-10.0", PINNED),
    # A VM restored before already carries the pin: it is not stacked.
    (RESTORED_ONCE, "pc-q35-10.0", PINNED),
    # Restored before under an older QEMU: the old pin stays, the recorded type is pinned after it and wins.
    (RESTORED_ONCE, "pc-q35-9.2", PINNED[:-2] + ["-machine", "pc-q35-9.2", "-incoming", "defer"]),
    ([QEMU, "-M", "pc-i440fx-10.0", "-m", "64"], "pc-i440fx-10.0",
     [QEMU, "-m", "64", "-machine", "pc-i440fx-10.0", "-incoming", "defer"]),
])
def test_restore_pins_the_machine_once_and_waits_for_the_state(recorded, machine_type, restored):
    assert restore_argv(recorded, machine_type) == restored
