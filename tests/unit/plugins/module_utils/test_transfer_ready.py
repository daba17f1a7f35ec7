"""The cpr-transfer verdict, the channels' sockets and the new QEMU's command line (pure logic, table-driven)."""

import hashlib
import json

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import AgentFacts, VmFacts
from ansible_collections.hypervisor.cpr.plugins.module_utils._memory import MemoryBackend
from ansible_collections.hypervisor.cpr.plugins.module_utils._transfer_ready import (
    SUN_PATH_MAX,
    Channels,
    transfer_argv,
    transfer_verdict,
)

ARGV = ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm1", "-machine", "q35,memory-backend=ram0,aux-ram-share=on",
        "-object", "memory-backend-memfd,id=ram0,size=256M,share=on", "-qmp", "unix:/run/vm1.qmp,server=on,wait=off"]
VFIO = [{"id": "hostdev0", "type": "vfio-pci", "path": "/machine/peripheral/hostdev0"}]


def _memfd(share=True, backend_id="ram0"):
    return MemoryBackend(backend_id, "memory-backend-memfd", 256 << 20, share, None, "anonymous", None, False, False,
                         False, "a note")


def _facts(**changes):
    facts = VmFacts("vm1", "/run/vm1.qmp", "/run/vm1.qga", source="discovered", pid=1, argv=list(ARGV),
                    runstate="running", qemu_version="10.0.2", machine_type="pc-q35-10.0",
                    memory_backends=[_memfd()], aux_ram_share=True,
                    migration={"mode": "normal", "status": "none", "blocked_reasons": [], "capabilities": []},
                    agent=AgentFacts(socket="/run/vm1.qga", answering=True))
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


@pytest.mark.parametrize("changes, expected", [
    ({}, []),
    # A VM QMP does not answer: its problem is the one reason.
    ({"error": "VM vm1: QMP socket /run/vm1.qmp does not exist"}, ["VM vm1: QMP socket /run/vm1.qmp does not exist"]),
    ({"qemu_version": "9.2.0"}, ["QEMU 9.2.0 has no cpr-transfer (it needs 10.0 or newer)"]),
    ({"runstate": "paused"}, ["its runstate is paused: only a running VM is transferred"]),
    ({"aux_ram_share": None}, ["it was started without -machine aux-ram-share=on"]),
    ({"memory_backends": [_memfd(), _memfd(False, "extra")]},
     ["the RAM of memory backend extra (memory-backend-memfd) is not shared: give it share=on"]),
    ({"migration": {"status": "active", "blocked_reasons": ["a device blocks it"], "capabilities": ["postcopy-ram"]}},
     ["a migration is already active", "QEMU blocks migration: a device blocks it",
      "migration capability postcopy-ram is on, which cpr-transfer cannot use"]),
    ({"vfio": VFIO}, ["it has VFIO devices (hostdev0), which QEMU preserves across cpr-transfer only from 10.1 on"]),
    ({"vfio": VFIO, "qemu_version": "10.1.0"}, []),
    ({"argv": ARGV + ["-daemonize", "-pidfile", "/run/vm1.pid"]},
     ["it runs with -daemonize", "it writes a -pidfile"]),
    ({"unit": "qemu@vm1.service"}, ["its QEMU runs in systemd service qemu@vm1.service"]),
    # Our own transient units, and scopes, are no operator's service.
    ({"unit": "hypervisor-cpr-vm1-1700000000.service"}, []),
    ({"unit": "session-4.scope"}, []),
    # Every reason at once, in order.
    ({"qemu_version": "9.2.0", "aux_ram_share": False, "memory_backends": [_memfd(False)]},
     ["QEMU 9.2.0 has no cpr-transfer", "it was started without -machine aux-ram-share=on",
      "the RAM of memory backend ram0 (memory-backend-memfd) is not shared"]),
])
def test_transfer_verdict(changes, expected):
    result = transfer_verdict(_facts(**changes))
    assert result.ready == (expected == [])
    assert len(result.reasons) == len(expected)
    for reason, start in zip(result.reasons, expected):
        assert reason.startswith(start), reason


@pytest.mark.parametrize("name, directory", [
    ("vm1", "/run/hypervisor-cpr/vm1"),
    # A name that would make the socket paths too long for a unix socket: the first 16 hex digits of its SHA-256.
    ("v" * 120, "/run/hypervisor-cpr/" + hashlib.sha256(b"v" * 120).hexdigest()[:16]),
])
def test_channels_live_in_the_vms_directory(name, directory):
    channels = Channels.for_vm(name)
    assert channels.directory == directory
    assert channels.paths == (f"{channels.directory}/main", f"{channels.directory}/cpr")
    assert all(len(path) <= SUN_PATH_MAX for path in channels.paths)
    assert channels.migrate_arguments() == {"channels": [
        {"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": channels.main}},
        {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": channels.cpr}}]}


@pytest.mark.parametrize("argv", [
    ARGV,
    # A VM transferred before: its old -incoming channels and machine pin go, and are not stacked.
    transfer_argv(ARGV, "pc-q35-10.0", Channels.for_vm("vm1")),
])
def test_transfer_argv_pins_the_machine_and_adds_both_channels(argv):
    channels = Channels.for_vm("vm1")
    result = transfer_argv(argv, "pc-q35-10.0", channels)
    assert result[:len(ARGV)] == ARGV
    assert result[len(ARGV):len(ARGV) + 2] == ["-machine", "pc-q35-10.0"]
    incoming = result[len(ARGV) + 2:]
    assert incoming[0::2] == ["-incoming", "-incoming"]
    assert [json.loads(word) for word in incoming[1::2]] == channels.migrate_arguments()["channels"]
