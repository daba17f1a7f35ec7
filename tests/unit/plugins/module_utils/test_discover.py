"""Discovery from QEMU command lines in the forms operators and libvirt write them."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import endpoint_from_argv, is_qemu_argv, parse_opts

QEMU = "/usr/bin/qemu-system-x86_64"
AGENT = ["-chardev", "socket,id=qga0,path=/run/vm.qga,server=on,wait=off",
         "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]


@pytest.mark.parametrize("qmp", [
    "unix:/run/vm.qmp,server=on,wait=off",
    "unix:/run/vm.qmp,server,nowait",
    "unix:/run/vm.qmp",
])
def test_qmp_option_forms(qmp):
    endpoint = endpoint_from_argv([QEMU, "-S", "-qmp", qmp, "-name", "vm1"])
    assert endpoint.qmp_socket == "/run/vm.qmp"
    assert endpoint.name == "vm1"


def test_qmp_pretty_and_double_dash():
    endpoint = endpoint_from_argv([QEMU, "--qmp-pretty", "unix:/run/p.qmp,server=on,wait=off", "--name", "p"])
    assert (endpoint.name, endpoint.qmp_socket) == ("p", "/run/p.qmp")


def test_chardev_and_mon_control():
    argv = [QEMU, "-chardev", "socket,id=charmonitor,path=/var/lib/libvirt/qemu/mon.sock,server=on,wait=off",
            "-mon", "chardev=charmonitor,id=monitor,mode=control", "-name", "guest=db1,debug-threads=on"] + AGENT
    endpoint = endpoint_from_argv(argv, pid=42)
    assert endpoint.qmp_socket == "/var/lib/libvirt/qemu/mon.sock"
    assert endpoint.name == "db1"
    assert endpoint.qga_socket == "/run/vm.qga"
    assert endpoint.pid == 42


def test_human_monitor_is_not_qmp():
    argv = [QEMU, "-chardev", "socket,id=hmp,path=/run/hmp.sock,server=on,wait=off", "-mon", "chardev=hmp"]
    assert endpoint_from_argv(argv) is None


def test_tcp_qmp_is_not_supported():
    assert endpoint_from_argv([QEMU, "-qmp", "tcp:127.0.0.1:4444,server=on,wait=off"]) is None


def test_name_forms():
    base = [QEMU, "-qmp", "unix:/run/x.qmp,server=on,wait=off"]
    assert endpoint_from_argv(base + ["-name", "guest=a,,b,debug-threads=on"]).name == "a,b"
    assert endpoint_from_argv(base + ["-name", "plain,process=qemu-plain"]).name == "plain"
    # Without -name the socket's file name is the stable label.
    assert endpoint_from_argv(base).name == "x"


def test_json_device_for_agent():
    argv = [QEMU, "-qmp", "unix:/run/j.qmp,server=on,wait=off",
            "-chardev", "socket,id=charchannel0,path=/run/j.qga,server=on,wait=off",
            "-device", '{"driver":"virtserialport","bus":"virtio-serial0.0","chardev":"charchannel0",'
                       '"id":"channel0","name":"org.qemu.guest_agent.0"}']
    assert endpoint_from_argv(argv).qga_socket == "/run/j.qga"


def test_flags_do_not_swallow_options():
    argv = [QEMU, "-nodefaults", "-qmp", "unix:/run/f.qmp,server=on,wait=off", "-S", "-name", "f", "-daemonize"]
    endpoint = endpoint_from_argv(argv)
    assert (endpoint.name, endpoint.qmp_socket) == ("f", "/run/f.qmp")


def test_parse_opts_escapes_and_implied_key():
    assert parse_opts("socket,id=a,path=/x,,y,server,nowait", implied="backend") == {
        "backend": "socket", "id": "a", "path": "/x,y", "server": "on", "nowait": "on"}
    assert parse_opts('{"driver": "x", "share": true}') == {"driver": "x", "share": "on"}


def test_is_qemu():
    assert is_qemu_argv(["/usr/bin/qemu-system-x86_64"])
    assert is_qemu_argv(["qemu"], exe="/usr/libexec/qemu-kvm")
    assert not is_qemu_argv(["/usr/bin/python3", "qemu-system-x86_64"])
