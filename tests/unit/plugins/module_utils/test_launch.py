"""How cpr_restore starts the new QEMU under systemd: the exact command lines (systemd cannot run here).

launch: systemd runs ``systemctl start <unit>``; launch: argv on a host that systemd runs wraps the recorded
command line (machine pinned, -incoming defer) in ``systemd-run``. The commands are recorded instead of run;
everything else is the real code.
"""

import asyncio
import contextlib
import os
import re

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils import _process
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, NotAnsweringError
from ansible_collections.hypervisor.cpr.plugins.module_utils._incoming import Launcher
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import Manifest
from ansible_collections.hypervisor.cpr.plugins.module_utils._process import Launched
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir
from ansible_collections.hypervisor.cpr.plugins.module_utils._trust import Credentials


RECORDED = ["/usr/bin/qemu-system-x86_64", "-name", "guest=web1", "-S", "-machine", "q35,memory-backend=ram0",
            "-qmp", "unix:/run/qemu/web1.qmp,server=on,wait=off", "-m", "256"]
RESTORE_ARGV = ["/usr/bin/qemu-system-x86_64", "-name", "guest=web1", "-machine", "q35,memory-backend=ram0",
                "-qmp", "unix:/run/qemu/web1.qmp,server=on,wait=off", "-m", "256",
                "-machine", "pc-q35-10.0", "-incoming", "defer"]


def _manifest():
    return Manifest(name="web1", argv=RECORDED, cwd="/var/lib/vms", qmp_socket="/run/qemu/web1.qmp", qga_socket=None,
                    machine_type="pc-q35-10.0", qemu_version="10.0.2", runstate_before="running",
                    suspended_by_us=False, agent_answered=False, ram_in_place=True, memory_backends=[],
                    capabilities={}, parameters={}, state_file="/var/lib/qemu-cpr/web1.state", reboot="kexec",
                    paused_at=0.0, boot_id="b", kernel="6.1.0")


@pytest.fixture
def state_dir(tmp_path):
    with StateDir.open(str(tmp_path)) as directory:
        yield directory


@pytest.fixture
def commands(monkeypatch):
    """The commands the starters would run, in order."""
    ran = []
    monkeypatch.setattr(_process, "run_starter", lambda command, name: ran.append((command, name)))
    return ran


def test_launch_systemd_starts_the_operators_unit(commands, monkeypatch, state_dir):
    # Whether systemd runs the host does not matter: the operator's unit is started either way.
    monkeypatch.setattr(_process, "_systemd_run_available", lambda: False)
    launched = Launcher("systemd", "qemu@{name}.service").start(_manifest(), state_dir)
    assert (launched.child, launched.unit) == (None, "qemu@web1.service")
    assert commands == [(["systemctl", "start", "qemu@web1.service"], "web1")]


def test_unit_template_takes_only_the_name():
    assert _process.systemd_unit_name("vm-{name}.service", "db.2") == "vm-db.2.service"
    # Other braces are not a format string: they stay as written.
    assert _process.systemd_unit_name("qemu@{name}{x}.service", "web1") == "qemu@web1{x}.service"
    assert _process.systemctl_start_command("qemu@web1.service") == ["systemctl", "start", "qemu@web1.service"]


def test_launch_argv_under_systemd_runs_the_recorded_command_line_in_a_transient_unit(commands, monkeypatch, state_dir):
    monkeypatch.setattr(_process, "_systemd_run_available", lambda: True)
    launched = Launcher("argv", "qemu@{name}.service").start(_manifest(), state_dir)
    unit = launched.unit
    assert launched.child is None and re.fullmatch(r"hypervisor-cpr-web1-\d+\.service", unit)
    assert commands == [(["systemd-run", f"--unit={unit}", "--collect", "--working-directory=/var/lib/vms", "--",
                          *RESTORE_ARGV], "web1")]


def test_transient_unit_name():
    assert _process.transient_unit_name("web1", 1700000000.9) == "hypervisor-cpr-web1-1700000000.service"


@pytest.mark.parametrize("credentials, user", [
    (None, []),
    (Credentials(0, 0, []), []),
    # A QEMU a user ran (or that dropped to a user with -run-with user=) runs as that user again, with its groups.
    (Credentials(1000, 1000, [1000, 108]), ["--uid=1000", "--gid=1000", "--property=SupplementaryGroups=1000 108"]),
])
def test_systemd_run_command_line(credentials, user):
    command = _process.Command(["/usr/bin/qemu-system-x86_64", "-name", "a b"], "/srv", credentials)
    assert _process.systemd_run_command("u.service", command) == [
        "systemd-run", "--unit=u.service", "--collect", "--working-directory=/srv", *user, "--",
        "/usr/bin/qemu-system-x86_64", "-name", "a b"]


def test_start_qemu_under_systemd_names_its_own_unit(commands, monkeypatch, state_dir):
    """vm_power's fresh start: no unit given, one is made from the VM's name."""
    monkeypatch.setattr(_process, "_systemd_run_available", lambda: True)
    command = _process.Command(["/usr/bin/qemu-system-x86_64"], "/")
    assert _process.start_qemu("web1", command, "/run/qemu/web1.qmp", state_dir).child is None
    [(command, name)] = commands
    assert name == "web1" and re.fullmatch(r"--unit=hypervisor-cpr-web1-\d+\.service", command[1])


def test_a_starter_that_fails_is_an_error_in_its_own_words():
    with pytest.raises(CprError, match=r"^VM web1: sh could not start the new QEMU: Unit qemu@web1.service not found"):
        _process.run_starter(["sh", "-c", "echo 'Unit qemu@web1.service not found.' >&2; exit 5"], "web1")
    with pytest.raises(CprError, match="VM web1: no-such-systemctl could not start the new QEMU: .*No such file"):
        _process.run_starter(["no-such-systemctl", "start", "x"], "web1")


def _wait_for_qmp(tmp_path, unit):
    async def run():
        async with contextlib.AsyncExitStack() as stack:
            await _process.wait_for_qmp(Launched("web1", str(tmp_path / "web1.qmp"), unit=unit), StateDir.open(str(tmp_path)),
                                        0.05, stack)

    asyncio.run(run())


def test_a_unit_whose_qemu_never_answers_says_where_to_look(tmp_path):
    with pytest.raises(NotAnsweringError) as failure:
        _wait_for_qmp(tmp_path, "qemu@web1.service")
    message = str(failure.value)
    assert message.startswith(f"VM web1: the new QEMU did not answer on {tmp_path}/web1.qmp within 0.05 s")
    assert "systemd started it in qemu@web1.service" in message
    assert "journalctl -u qemu@web1.service" in message and "systemctl status qemu@web1.service" in message


def test_a_detached_qemu_that_never_answers_is_left_as_it_is(tmp_path):
    with pytest.raises(NotAnsweringError, match="may be hung and is left as it is") as failure:
        _wait_for_qmp(tmp_path, None)
    assert "journalctl" not in str(failure.value)


def test_a_binary_only_root_could_have_put_there_is_started(tmp_path, state_dir):
    planted = tmp_path / "qemu-system-x86_64"
    planted.write_text("#!/bin/sh\n")
    os.chmod(planted, 0o777)
    with pytest.raises(CprError, match=f"its QEMU binary {planted} could have been planted by another user"):
        _process.start_qemu("web1", _process.Command([str(planted)], "/"), "/run/web1.qmp", state_dir)
