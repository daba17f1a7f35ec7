"""The command lines a restore and a fresh start give QEMU, from the one recorded."""

from ansible_collections.hypervisor.cpr.plugins.module_utils.cpr import fresh_argv, restore_argv
from ansible_collections.hypervisor.cpr.plugins.module_utils.manifest import Manifest

RECORDED = ["qemu-system-x86_64", "-name", "guest=vm1", "-S", "-machine", "q35", "-m", "256"]
# What a QEMU restored once runs with: the machine pinned and -incoming defer.
RESTORED_ONCE = RECORDED[:3] + RECORDED[4:] + ["-machine", "pc-q35-10.0", "-incoming", "defer"]


def _manifest(argv):
    return Manifest(name="vm1", argv=argv, cwd="/", qmp_socket="/run/vm1.qmp", qga_socket=None,
                    machine_type="pc-q35-10.0", qemu_version="10.0.2", runstate_before="running",
                    suspended_by_us=False, agent_answered=True, ram_in_place=True, memory_backends=[],
                    capabilities={}, parameters={}, state_file="/var/lib/qemu-cpr/vm1.state", reboot="kexec",
                    paused_at=0.0, boot_id="b", kernel="6.1.0")


def test_fresh_start_drops_incoming_and_start_paused():
    assert fresh_argv(RECORDED) == ["qemu-system-x86_64", "-name", "guest=vm1", "-machine", "q35", "-m", "256"]
    assert fresh_argv(RESTORED_ONCE) == RESTORED_ONCE[:-2]


def test_restore_pins_the_machine_once_and_waits_for_the_state():
    expected = ["qemu-system-x86_64", "-name", "guest=vm1", "-machine", "q35", "-m", "256",
                "-machine", "pc-q35-10.0", "-incoming", "defer"]
    assert restore_argv(_manifest(RECORDED)) == expected
    assert restore_argv(_manifest(RESTORED_ONCE)) == expected
