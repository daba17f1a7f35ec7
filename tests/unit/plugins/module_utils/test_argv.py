"""QEMU command lines: what they say, the same with secrets hidden, and the ones a restart runs."""

import json

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._argv import (
    REDACTED,
    fresh_argv,
    parse_opts,
    read_args,
    redact,
    restore_argv,
    stays_after_power_off,
)

QEMU = "/usr/bin/qemu-system-x86_64"
AGENT = ["-chardev", "socket,id=qga0,path=/run/vm.qga,server=on,wait=off",
         "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
RECORDED = [QEMU, "-name", "guest=vm1", "-S", "-machine", "q35", "-m", "256"]
# What a QEMU restored once runs with: the machine pinned and -incoming defer.
RESTORED_ONCE = RECORDED[:3] + RECORDED[4:] + ["-machine", "pc-q35-10.0", "-incoming", "defer"]
PINNED = [QEMU, "-name", "guest=vm1", "-machine", "q35", "-m", "256", "-machine", "pc-q35-10.0", "-incoming", "defer"]


@pytest.mark.parametrize("argv, name, qmp, qga", [
    ([QEMU, "-S", "-qmp", "unix:/run/vm.qmp,server=on,wait=off", "-name", "vm1"], "vm1", "/run/vm.qmp", None),
    ([QEMU, "-qmp", "unix:/run/vm.qmp,server,nowait", "-name", "vm1"], "vm1", "/run/vm.qmp", None),
    ([QEMU, "-qmp", "unix:/run/vm.qmp", "-name", "vm1"], "vm1", "/run/vm.qmp", None),
    ([QEMU, "--qmp-pretty", "unix:/run/p.qmp,server=on,wait=off", "--name", "p"], "p", "/run/p.qmp", None),
    # -chardev + -mon mode=control, as libvirt wrote it before it passed descriptors.
    ([QEMU, "-chardev", "socket,id=charmonitor,path=/var/lib/libvirt/qemu/mon.sock,server=on,wait=off",
      "-mon", "chardev=charmonitor,id=monitor,mode=control", "-name", "guest=db1,debug-threads=on"] + AGENT,
     "db1", "/var/lib/libvirt/qemu/mon.sock", "/run/vm.qga"),
    # The agent's port in JSON form.
    ([QEMU, "-qmp", "unix:/run/j.qmp,server=on,wait=off",
      "-chardev", "socket,id=charchannel0,path=/run/j.qga,server=on,wait=off",
      "-device", '{"driver":"virtserialport","bus":"virtio-serial0.0","chardev":"charchannel0",'
                 '"id":"channel0","name":"org.qemu.guest_agent.0"}'], "j", "/run/j.qmp", "/run/j.qga"),
    # Flags do not swallow the option after them.
    ([QEMU, "-nodefaults", "-qmp", "unix:/run/f.qmp,server=on,wait=off", "-S", "-name", "f", "-daemonize"],
     "f", "/run/f.qmp", None),
    # Name forms; without -name the socket's file name is the stable label.
    ([QEMU, "-qmp", "unix:/run/x.qmp,server=on,wait=off", "-name", "guest=a,,b,debug-threads=on"], "a,b", "/run/x.qmp",
     None),
    ([QEMU, "-qmp", "unix:/run/x.qmp,server=on,wait=off", "-name", "plain,process=qemu-plain"], "plain", "/run/x.qmp",
     None),
    ([QEMU, "-qmp", "unix:/run/x.qmp,server=on,wait=off"], "x", "/run/x.qmp", None),
    # No QMP we can reach: a TCP one, a human monitor.
    ([QEMU, "-qmp", "tcp:127.0.0.1:4444,server=on,wait=off", "-name", "t"], "t", None, None),
    ([QEMU, "-chardev", "socket,id=hmp,path=/run/hmp.sock,server=on,wait=off", "-mon", "chardev=hmp", "-name", "h"],
     "h", None, None),
])
def test_what_a_command_line_says(argv, name, qmp, qga):
    args = read_args(argv)
    assert (args.name, args.qmp_socket, args.qga_socket) == (name, qmp, qga)


def test_a_monitor_passed_as_a_descriptor_and_a_human_monitor_are_told():
    args = read_args([QEMU, "-chardev", "socket,id=charmonitor,fd=34,server=on,wait=off",
                      "-mon", "chardev=charmonitor,id=monitor,mode=control", "-monitor", "stdio"])
    assert (args.qmp_socket, args.monitor_fds, args.hmp) == (None, ["34"], True)


def test_parse_opts_escapes_and_implied_key():
    assert parse_opts("socket,id=a,path=/x,,y,server,nowait", implied="backend") == {
        "backend": "socket", "id": "a", "path": "/x,y", "server": "on", "nowait": "on"}
    assert parse_opts('{"driver": "x", "share": true}') == {"driver": "x", "share": "on"}


@pytest.mark.parametrize("option, value, hidden", [
    ("-object", "secret,id=luks0,data=hunter2", f"secret,id=luks0,data={REDACTED}"),
    ("-object", "secret,id=s,data=aGVsbG8=,format=base64,iv=MTIz", f"secret,id=s,data={REDACTED},format=base64,iv={REDACTED}"),
    ("-object", "secret,id=masterKey0,format=raw,file=/var/lib/libvirt/qemu/master-key.aes",
     "secret,id=masterKey0,format=raw,file=/var/lib/libvirt/qemu/master-key.aes"),
    ("-spice", "port=5900,password=s3cret,disable-ticketing=off", f"port=5900,password={REDACTED},disable-ticketing=off"),
    ("-vnc", ":1,password=on", f":1,password={REDACTED}"),
    ("-drive", "file=iscsi://h/t/1,file.password=p,,w", f"file=iscsi://h/t/1,file.password={REDACTED}"),
    # An id of a secret is no secret.
    ("-drive", "file.password-secret=sec0,file=x", "file.password-secret=sec0,file=x"),
    ("-m", "256", "256"),
])
def test_secrets_are_hidden(option, value, hidden):
    assert redact([QEMU, option, value, "-name", "vm1"]) == [QEMU, option, hidden, "-name", "vm1"]


def test_secrets_in_json_options_are_hidden():
    [_qemu, _option, hidden] = redact([QEMU, "-object", '{"qom-type":"secret","id":"s0","data":"hunter2","format":"raw"}'])
    assert json.loads(hidden) == {"qom-type": "secret", "id": "s0", "data": REDACTED, "format": "raw"}
    unchanged = '{"qom-type": "memory-backend-file", "id": "ram0", "share": true}'
    assert redact([QEMU, "-object", unchanged])[2] == unchanged


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


@pytest.mark.parametrize("options, stays", [
    ([], False),
    (["-no-shutdown"], True),
    (["-action", "shutdown=pause"], True),
    (["-action", "reboot=shutdown,shutdown=pause"], True),
    (["-action", "shutdown=poweroff"], False),
    (["-action", "reboot=shutdown"], False),
    # A value that mentions it is not the option.
    (["-name", "no-shutdown"], False),
])
def test_qemu_stays_after_its_guest_powered_off_only_when_told(options, stays):
    assert stays_after_power_off(RECORDED + options) is stays
