"""The capabilities and parameters a save asks QEMU for, and that a restore sets again."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._migration import MAX_BANDWIDTH, migration_settings
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import NotReadyError
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import CprVerdict, VmFacts

QEMU_10 = ["x-ignore-shared", "mapped-ram", "multifd", "postcopy-ram"]
QEMU_8 = ["x-ignore-shared", "multifd", "postcopy-ram"]


def _facts(copy_bytes, version="10.0.2"):
    return VmFacts("vm1", "/run/vm1.qmp", None, source="discovered", qemu_version=version,
                   cpr=CprVerdict(True, "kexec", copy_bytes == 0, copy_bytes))


def test_ram_in_place_turns_every_copy_capability_off():
    capabilities, parameters = migration_settings(_facts(0), QEMU_10)
    # Off explicitly: a QEMU restored from a mapped-ram save still has them on, and a
    # plain save would then write a mapped-ram file its manifest calls plain.
    assert capabilities == {"x-ignore-shared": True, "mapped-ram": False, "multifd": False}
    assert parameters == {"mode": "cpr-reboot"}


def test_a_large_copy_uses_mapped_ram_and_lifts_the_bandwidth_cap():
    capabilities, parameters = migration_settings(_facts(1 << 30), QEMU_10)
    assert capabilities == {"x-ignore-shared": False, "mapped-ram": True, "multifd": True}
    assert parameters["max-bandwidth"] == MAX_BANDWIDTH and parameters["multifd-channels"] >= 1


def test_a_small_copy_is_one_stream_unless_asked():
    assert migration_settings(_facts(16 << 20), QEMU_10)[0]["mapped-ram"] is False
    assert migration_settings(_facts(16 << 20), QEMU_10, mapped_ram=True)[0]["mapped-ram"] is True
    assert migration_settings(_facts(1 << 30), QEMU_10, mapped_ram=False)[0]["mapped-ram"] is False


def test_mapped_ram_asked_of_a_qemu_without_it_is_refused():
    with pytest.raises(NotReadyError, match="VM vm1: mapped_ram is true, but QEMU 8.2.0 lacks"):
        migration_settings(_facts(1 << 30, "8.2.0"), QEMU_8, mapped_ram=True)
    # auto quietly writes one stream there.
    assert migration_settings(_facts(1 << 30, "8.2.0"), QEMU_8)[0] == {"x-ignore-shared": False}
