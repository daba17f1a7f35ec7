"""Who runs a QEMU, told from its command line, its parent and its unit: the command lines below are written the way
libvirt (11.x), Proxmox VE (qemu-server) and Ganeti start QEMU, from their public sources."""

import os

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._argv import read_args
from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import endpoint_of, is_qemu_argv, manager_of

QEMU = "/usr/bin/qemu-system-x86_64"
LIBVIRT = [
    QEMU, "-name", "guest=web1,debug-threads=on", "-S",
    "-object", '{"qom-type":"secret","id":"masterKey0","format":"raw",'
               '"file":"/var/lib/libvirt/qemu/domain-3-web1/master-key.aes"}',
    "-machine", "pc-q35-10.0,usb=off,dump-guest-core=off,memory-backend=pc.ram,acpi=on",
    "-accel", "kvm", "-m", "size=2097152k", "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":2147483648}',
    "-uuid", "6b1f0c2e-8e1a-4b8e-9c7e-1f2a3b4c5d6e", "-no-user-config", "-nodefaults",
    "-chardev", "socket,id=charmonitor,fd=34,server=on,wait=off",
    "-mon", "chardev=charmonitor,id=monitor,mode=control",
    "-rtc", "base=utc", "-no-shutdown", "-boot", "strict=on",
    "-chardev", "socket,id=charchannel0,fd=33,server=on,wait=off",
    "-device", '{"driver":"virtserialport","bus":"virtio-serial0.0","nr":1,"chardev":"charchannel0",'
               '"id":"channel0","name":"org.qemu.guest_agent.0"}',
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny", "-msg", "timestamp=on",
]
PROXMOX = [
    "/usr/bin/kvm", "-id", "100", "-name", "web1,debug-threads=on", "-no-shutdown",
    "-chardev", "socket,id=qmp,path=/var/run/qemu-server/100.qmp,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
    "-chardev", "socket,id=qmp-event,path=/var/run/qmeventd.sock,reconnect-ms=5000",
    "-mon", "chardev=qmp-event,mode=control",
    "-pidfile", "/var/run/qemu-server/100.pid", "-daemonize", "-smbios", "type=1,uuid=0b9d2b3e-1111-2222-3333-444455556666",
    "-smp", "2,sockets=1,cores=2,maxcpus=2", "-nodefaults", "-vnc", "unix:/var/run/qemu-server/100.vnc,password=on",
    "-m", "2048", "-machine", "type=pc-i440fx-9.2+pve1",
]
GANETI = [
    "/usr/bin/kvm", "-name", "inst1.example.com", "-m", "512", "-smp", "1", "-pidfile",
    "/var/run/ganeti/kvm-hypervisor/pid/inst1.example.com", "-daemonize",
    "-monitor", "unix:/var/run/ganeti/kvm-hypervisor/ctrl/inst1.example.com.monitor,server,nowait",
    "-serial", "unix:/var/run/ganeti/kvm-hypervisor/ctrl/inst1.example.com.serial,server,nowait",
    "-qmp", "unix:/var/run/ganeti/kvm-hypervisor/ctrl/inst1.example.com.qmp,server,nowait",
    "-qmp", "unix:/var/run/ganeti/kvm-hypervisor/ctrl/inst1.example.com.kvmd,server,nowait",
    "-netdev", "type=tap,id=nic-1,fd=8", "-S",
]
PLAIN = [QEMU, "-name", "guest=vm1", "-qmp", "unix:/run/vm1.qmp,server=on,wait=off", "-m", "256"]


@pytest.mark.parametrize("argv, parent, unit, manager", [
    (LIBVIRT, "virtqemud", "machine-qemu\\x2d3\\x2dweb1.scope", "libvirt"),
    (LIBVIRT, "libvirtd", None, "libvirt"),
    # A libvirt QEMU whose daemon was restarted since (its parent is init now) is still told by its command line.
    (LIBVIRT, "systemd", "machine-qemu\\x2d3\\x2dweb1.scope", "libvirt"),
    (PROXMOX, "systemd", "100.scope", "proxmox"),
    (GANETI, "init", None, "ganeti"),
    (PLAIN, "bash", "qemu@vm1.service", "none"),
    # A single coincidence (a path that mentions /var/lib/libvirt) is not enough.
    (PLAIN + ["-drive", "file=/var/lib/libvirt/images/vm1.qcow2"], "bash", None, "none"),
])
def test_who_manages_a_qemu(argv, parent, unit, manager):
    found = manager_of(read_args(argv), parent, unit)
    assert found["managed_by"] == manager
    assert bool(found["recognised_by"]) == (manager != "none")


def test_libvirts_monitor_descriptor_is_read():
    assert read_args(LIBVIRT).monitor_fds == ["34"] and read_args(LIBVIRT).qmp_socket is None


@pytest.mark.parametrize("argv, exe, qemu", [
    ([QEMU], "", True),
    (["qemu"], "/usr/libexec/qemu-kvm", True),
    (["/usr/bin/kvm", "-id", "100"], "/usr/bin/qemu-system-x86_64", True),
    (["/usr/bin/kvm"], "/usr/bin/qemu-system-x86_64 (deleted)", True),
    (["/usr/bin/python3", "qemu-system-x86_64"], "/usr/bin/python3.11", False),
])
def test_is_qemu(argv, exe, qemu):
    assert is_qemu_argv(argv, exe) is qemu


@pytest.mark.parametrize("argv, problem", [
    (PLAIN, None),
    (PROXMOX, "proxmox runs this VM (it has a Proxmox VM id (-id); its sockets are in /run/qemu-server)"),
    (GANETI, "ganeti runs this VM"),
    ([QEMU, "-name", "hmp1", "-monitor", "unix:/run/hmp1.sock,server,nowait"],
     "its QEMU has an HMP monitor (-monitor) only, and no QMP unix socket hypervisor.cpr could reach"),
    ([QEMU, "-name", "bare"], "its QEMU has no monitor socket"),
])
def test_why_a_qemu_cannot_be_driven(argv, problem):
    # A real process (this one) stands for the QEMU: its binary, credentials and unit are read from /proc.
    endpoint = endpoint_of(os.getpid(), argv)
    assert (endpoint.problem is None) if problem is None else endpoint.problem.startswith(problem)
    assert endpoint.credentials is not None and endpoint.credentials.uid == os.geteuid()
