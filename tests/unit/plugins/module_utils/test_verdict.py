"""The readiness verdict, for cases QEMU under TCG cannot produce (VFIO) and the RAM plan."""

from ansible_collections.hypervisor.cpr.plugins.module_utils._memory import MemoryBackend
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import S3_BLOCKED, AgentFacts, VmFacts, ram_plan, verdict


def _backend(backend_id="ram0", share=True, mappable=True, persistent=True, size=256 << 20):
    return MemoryBackend(backend_id, "memory-backend-file", size, share, "/var/lib/vm.ram", "file", "ext4", False,
                         mappable, persistent, "a note")


def _facts(**changes):
    facts = VmFacts("vm1", "/run/vm1.qmp", "/run/vm1.qga", source="discovered", pid=1, runstate="running",
                    qemu_version="10.0.2", machine_type="pc-q35-10.0", memory_backends=[_backend()],
                    migration={"mode": "normal", "status": "none", "blocked_reasons": [], "capabilities": []},
                    agent=AgentFacts(socket="/run/vm1.qga", answering=True))
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def test_ready_with_shared_file_ram_in_place():
    result = verdict(_facts())
    assert result.ready and result.ram_in_place and result.ram_copy_bytes == 0


def test_vfio_needs_an_answering_agent():
    vfio = [{"id": "hostdev0", "type": "vfio-pci", "path": "/machine/peripheral/hostdev0"}]
    assert verdict(_facts(vfio=vfio)).ready
    silent = verdict(_facts(vfio=vfio, agent=AgentFacts(socket="/run/vm1.qga", answering=False, error="timeout")))
    assert not silent.ready and "guest agent does not answer: timeout" in silent.reasons[0]
    no_socket = verdict(_facts(vfio=vfio, qga_socket=None))
    assert "no guest agent socket" in no_socket.reasons[0]
    # Already suspended: nothing more to ask of the agent.
    assert verdict(_facts(vfio=vfio, runstate="suspended", qga_socket=None)).ready
    # A q35 guest whose SeaBIOS left the ACPI PM block unmapped after a resume cannot suspend again.
    blocked = verdict(_facts(vfio=vfio, s3_blocked=True))
    assert blocked.reasons == [f"VFIO devices (hostdev0) require the guest to be suspended to RAM first, and {S3_BLOCKED}"]
    assert verdict(_facts(s3_blocked=True)).ready, "a guest that need not suspend is not held back"


def test_vfio_needs_qemu_9():
    vfio = [{"id": "hostdev0", "type": "vfio-pci", "path": "/machine/peripheral/hostdev0"}]
    result = verdict(_facts(vfio=vfio, qemu_version="8.2.0"))
    assert result.reasons == ["VFIO devices (hostdev0) need QEMU 9.0 or newer for cpr-reboot; this VM runs QEMU 8.2.0: "
                              "upgrade QEMU and restart the VM cold once"]


def test_unreachable_vm_is_not_ready():
    result = verdict(_facts(error="VM vm1: QMP socket /run/vm1.qmp does not exist"))
    assert not result.ready and result.reasons == ["VM vm1: QMP socket /run/vm1.qmp does not exist"]


def test_volatile_in_place_ram_only_blocks_a_reboot():
    facts = _facts(memory_backends=[_backend(persistent=False)])
    assert not verdict(facts, reboot="kexec").ready
    assert verdict(facts, reboot="none").ready
    copied = verdict(facts, reboot="kexec", ignore_shared=False)
    assert copied.ready and not copied.ram_in_place and copied.ram_copy_bytes == 256 << 20


def test_ram_plan_mixed_backends():
    backends = [_backend("shared"), _backend("private", share=False, size=1 << 20)]
    assert ram_plan(backends, None) == (True, 1 << 20)
    # A shared backend a new QEMU cannot map (memfd) turns auto off: copy everything.
    assert ram_plan(backends + [_backend("memfd", mappable=False, size=2)], None) == (False, (256 << 20) + (1 << 20) + 2)


def test_forced_ignore_shared_on_unmappable_ram_is_refused():
    facts = _facts(memory_backends=[_backend(mappable=False)])
    result = verdict(facts, ignore_shared=True)
    assert not result.ready and "its RAM would be lost" in result.reasons[0]
