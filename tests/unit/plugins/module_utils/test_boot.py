"""The boot entry boot_restore arms and removes: its files, its unit, and each call's changed (systemd does not run
here, so the systemctl calls are recorded; the boot restore itself runs in tests/qemu and in the kexec lab)."""

import io
import json
import os
import subprocess
import sys
import zipfile

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils import _boot
from ansible_collections.hypervisor.cpr.plugins.module_utils._boot import BootOptions, engine_zip, install, remove
from ansible_collections.hypervisor.cpr.plugins.module_utils._boot_entry import boot_dir_path
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import OptionError
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import boot_id


@pytest.fixture
def state_dir(tmp_path):
    os.chmod(tmp_path, 0o755)
    return str(tmp_path / "state")


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    """A unit directory of our own, and systemd said to run the host; systemctl's arguments are recorded."""
    calls = []
    unit_dir = tmp_path / "units"
    (unit_dir / "multi-user.target.wants").mkdir(parents=True)

    def systemctl(args, _hint=""):
        calls.append(args)
        if args[0] == "enable":
            os.symlink(unit_dir / args[1], unit_dir / "multi-user.target.wants" / args[1])

    monkeypatch.setattr(_boot, "UNIT_DIR", str(unit_dir))
    monkeypatch.setattr(_boot, "systemctl", systemctl)
    monkeypatch.setattr(_boot, "systemd_runs_host", lambda: True)
    return unit_dir, calls


def entries(state_dir):
    return sorted(os.listdir(boot_dir_path(state_dir)))


def test_a_script_entry_is_armed_once_and_removed(state_dir):
    armed = install(state_dir, "run-1", BootOptions(timeout=120, init="script"))
    boot_dir = boot_dir_path(state_dir)
    assert armed["changed"] and armed["init"] == "script" and armed["warnings"] == []
    assert armed["entry"] == os.path.join(boot_dir, "run") and armed["python"] == sys.executable
    assert armed["reboot_mark"] == os.path.join(boot_dir, "reboot-started")
    assert entries(state_dir) == ["boot.py", "config.json", "engine.zip", "run"]
    with open(os.path.join(boot_dir, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle) == {"run_id": "run-1", "saved_boot_id": boot_id(), "timeout": 120,
                                     "launch": {"mode": "argv", "unit": "qemu@{name}.service"}}
    modes = {e: os.stat(os.path.join(boot_dir, e)).st_mode & 0o777 for e in entries(state_dir)}
    assert modes == {"boot.py": 0o600, "config.json": 0o600, "engine.zip": 0o600, "run": 0o700}
    with open(os.path.join(boot_dir, "run"), encoding="utf-8") as handle:
        assert handle.read().splitlines()[-1] == f"exec {sys.executable} -I -B {boot_dir}/boot.py"

    # The same call again changes nothing; another run re-arms it.
    assert not install(state_dir, "run-1", BootOptions(timeout=120, init="script"))["changed"]
    assert install(state_dir, "run-2", BootOptions(timeout=120, init="script"), check_mode=True)["changed"]
    assert install(state_dir, "run-2", BootOptions(timeout=120, init="script"))["changed"]

    # On this boot (not rebooted) the entry does nothing, and stays armed.
    ran = subprocess.run([os.path.join(boot_dir, "run")], capture_output=True, text=True, check=False)
    assert (ran.returncode, ran.stdout.strip()) == (
        0, "hypervisor.cpr boot restore: nothing to do (no armed entry, or the host has not rebooted)"), ran.stderr
    assert "config.json" in entries(state_dir)

    assert remove(state_dir, check_mode=True)["changed"]
    gone = remove(state_dir)
    assert gone["changed"] and sorted(gone["removed"]) == sorted(
        os.path.join(boot_dir, e) for e in ("boot.py", "config.json", "engine.zip", "run"))
    assert not os.path.exists(boot_dir)
    assert remove(state_dir) == {"changed": False, "state": "absent", "removed": []}


def test_auto_without_systemd_warns_that_the_init_must_run_the_script(state_dir, monkeypatch):
    monkeypatch.setattr(_boot, "systemd_runs_host", lambda: False)
    armed = install(state_dir, "run-1")
    assert armed["init"] == "script"
    assert armed["warnings"] == [
        f"systemd does not run this host: the VMs come back at boot only if its init runs {armed['entry']} once the "
        "file systems are mounted, before anything starts VMs (set init=script once it does)"]
    with pytest.raises(OptionError, match="init is systemd, but systemd does not run this host"):
        install(state_dir, "run-1", BootOptions(init="systemd"))


def test_a_systemd_entry_is_a_unit_ordered_before_what_starts_vms(state_dir, systemd):
    unit_dir, calls = systemd
    armed = install(state_dir, "run-1", BootOptions(timeout=100))
    unit_path = unit_dir / "hypervisor-cpr-boot-restore.service"
    assert armed["init"] == "systemd" and armed["entry"] == str(unit_path)
    assert calls == [["daemon-reload"], ["enable", "hypervisor-cpr-boot-restore.service"]]
    assert entries(state_dir) == ["boot.py", "config.json", "engine.zip"]
    unit = unit_path.read_text(encoding="utf-8")
    boot_dir = boot_dir_path(state_dir)
    for line in (f"RequiresMountsFor={state_dir}", "After=local-fs.target",
                 "Before=multi-user.target libvirtd.service virtqemud.service libvirt-guests.service "
                 "pve-guests.service ganeti.service machines.target",
                 f"ConditionPathExists={boot_dir}/config.json", "Type=oneshot",
                 f"ExecStart={sys.executable} -I -B {boot_dir}/boot.py", "TimeoutStartSec=160", "KillMode=process",
                 "WantedBy=multi-user.target"):
        assert line in unit.splitlines()
    assert not install(state_dir, "run-1", BootOptions(timeout=100))["changed"]

    # A script entry replaces the unit.
    assert install(state_dir, "run-1", BootOptions(timeout=100, init="script"))["changed"]
    assert not unit_path.exists() and os.listdir(unit_dir / "multi-user.target.wants") == []
    install(state_dir, "run-1", BootOptions(timeout=100))
    removed = remove(state_dir)["removed"]
    assert str(unit_path) in removed and not unit_path.exists()
    assert calls[-1] == ["daemon-reload"]


@pytest.mark.parametrize("state_dir_path", ["/var/lib/qemu cpr", "/var/lib/qemu%i"])
def test_a_unit_cannot_name_a_path_systemd_would_split_or_expand(state_dir_path, systemd):
    with pytest.raises(OptionError, match="a systemd unit cannot run"):
        install(state_dir_path, "run-1")


def test_the_engine_zip_holds_the_loaded_module_utils_as_regular_packages():
    names = zipfile.ZipFile(io.BytesIO(engine_zip())).namelist()
    package = "ansible_collections/hypervisor/cpr/plugins/module_utils"
    assert f"{package}/_boot.py" in names and f"{package}/_restore.py" in names
    assert f"{package}/__init__.py" in names and "ansible_collections/__init__.py" in names
    # Built twice, the same bytes: an entry armed again is not rewritten.
    assert engine_zip() == engine_zip()
