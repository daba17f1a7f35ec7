"""The state directory: what it accepts, and the name of every file it holds."""

import json
import os

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import LockedError, ManifestError, StateDirError
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import Manifest, StopRecord
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir


def _manifest(state_dir, name="web1", **changes):
    fields = dict(name=name, argv=["qemu-system-x86_64", "-name", name], cwd="/", qmp_socket=f"/run/{name}.qmp",
                  qga_socket=None, machine_type="pc-q35-10.0", qemu_version="10.0.2", runstate_before="running",
                  suspended_by_us=False, agent_answered=True, ram_in_place=True, memory_backends=[], capabilities={},
                  parameters={}, state_file=state_dir.state_path(name), reboot="kexec", paused_at=1.0, boot_id="b0",
                  kernel="6.1.0")
    return Manifest(**dict(fields, **changes))


@pytest.mark.parametrize("method, expected", [
    ("manifest_path", "web1.json"),
    ("state_path", "web1.state"),
    ("saving_path", "web1.saving"),
    ("stopped_path", "web1.stopped"),
    ("log_path", "web1.log"),
])
def test_every_file_name_is_made_here(method, expected):
    assert getattr(StateDir("/var/lib/qemu-cpr"), method)("web1") == f"/var/lib/qemu-cpr/{expected}"


def test_the_run_lock_is_hidden_beside_the_flock():
    assert StateDir("/s").run_lock_path == "/s/.hypervisor-cpr.run"


def test_a_missing_directory_is_created_0700_or_holds_nothing(tmp_path):
    path = str(tmp_path / "new")
    assert StateDir.open(path, create=False).manifests() == []
    assert not os.path.exists(path)
    StateDir.open(path, create=True)
    assert os.stat(path).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("make, error", [
    (lambda p, t: os.symlink(t, p), "is a symlink"),
    (lambda p, t: open(p, "w", encoding="utf-8").close(), "is not a directory"),
    (lambda p, t: (os.mkdir(p), os.chmod(p, 0o777)), "is writable by others"),
    (lambda p, t: (os.mkdir(p), os.chmod(p, 0o720)), "is writable by others"),
    (lambda p, t: (os.mkdir(p), os.chown(p, 65534, -1)), "is owned by uid 65534"),
])
def test_an_unsafe_directory_is_refused(tmp_path, make, error):
    path = str(tmp_path / "state")
    make(path, str(tmp_path))
    for create in (True, False):
        with pytest.raises(StateDirError, match=error):
            StateDir.open(path, create=create)


def test_manifests_round_trip_and_are_listed_by_name(tmp_path):
    state_dir = StateDir.open(str(tmp_path / "s"), create=True)
    for name in ("b", "a"):
        state_dir.write_manifest(_manifest(state_dir, name))
    state_dir.write_manifest(_manifest(state_dir, "c"), in_progress=True)
    assert [m.name for m in state_dir.manifests()] == ["a", "b"]
    assert state_dir.read_manifest("c", in_progress=True).name == "c"
    assert (state_dir.has_manifest("c"), state_dir.has_saving("c")) == (False, True)
    assert {f: os.stat(state_dir.manifest_path(f[0])).st_mode & 0o777 for f in ("a",)} == {"a": 0o600}


def test_a_sealed_state_file_is_verified_and_a_damaged_one_refused(tmp_path):
    state_dir = StateDir.open(str(tmp_path / "s"), create=True)
    manifest = _manifest(state_dir)
    with open(manifest.state_file, "wb") as handle:
        handle.write(b"device state" * 1000)
    state_dir.seal(manifest)
    state_dir.finish_save(manifest)
    StateDir.verify_state(state_dir.read_manifest("web1"))
    with open(manifest.state_file, "r+b") as handle:
        handle.write(b"X")
    with pytest.raises(ManifestError, match="does not match the SHA-256"):
        StateDir.verify_state(manifest)
    os.truncate(manifest.state_file, 10)
    with pytest.raises(ManifestError, match="has 10 bytes, its manifest says 12000"):
        StateDir.verify_state(manifest)


def test_restored_files_are_kept_aside_or_removed(tmp_path):
    state_dir = StateDir.open(str(tmp_path / "s"), create=True)
    for name in ("kept", "gone"):
        manifest = _manifest(state_dir, name)
        open(manifest.state_file, "wb").close()
        state_dir.write_manifest(manifest)
    state_dir.keep_restored("kept")
    state_dir.remove_saved("gone")
    assert sorted(f for f in os.listdir(state_dir.path) if not f.startswith(".")) == [
        "kept.json.restored", "kept.state.restored"]
    assert state_dir.manifests() == []


def test_what_the_directory_holds(tmp_path):
    state_dir = StateDir.open(str(tmp_path / "s"), create=True)
    state_dir.write_manifest(_manifest(state_dir, "saved1", boot_id="old"))
    state_dir.write_stopped(StopRecord("off1", ["qemu"], "/", "/run/off1.qmp", None, False, "guest-shutdown", 5.0))
    held = state_dir.pending(current_boot_id="new")
    assert [(vm["name"], vm["saved_this_boot"], vm["runstate_before"]) for vm in held["saved"]] == [
        ("saved1", False, "running")]
    assert held["stopped"] == [{"name": "off1", "how": "guest-shutdown", "stopped_at": 5.0, "agent_answered": False}]
    state_dir.remove_stopped("off1")
    assert state_dir.stop_records() == []


@pytest.mark.parametrize("content, error", [
    ("{", "manifest .* cannot be read: Expecting"),
    ("[]", "manifest .* cannot be read: it is not a JSON object"),
    ('{"format": 0, "name": "web1"}', "has format 0 and lacks argv"),
])
def test_an_unreadable_manifest_names_its_file(tmp_path, content, error):
    state_dir = StateDir.open(str(tmp_path / "s"), create=True)
    with open(state_dir.manifest_path("web1"), "w", encoding="utf-8") as handle:
        handle.write(content)
    with pytest.raises(ManifestError, match=error):
        state_dir.manifests()


def test_a_stop_record_that_is_not_one_is_refused(tmp_path):
    state_dir = StateDir.open(str(tmp_path / "s"), create=True)
    with open(state_dir.stopped_path("off1"), "w", encoding="utf-8") as handle:
        json.dump({"name": "off1"}, handle)
    with pytest.raises(ManifestError, match="the record .*off1.stopped of a shut-down VM cannot be read"):
        state_dir.stop_records()


def test_the_flock_keeps_a_second_module_out_and_names_the_first(tmp_path):
    state_dir = StateDir.open(str(tmp_path / "s"), create=True)
    with state_dir.lock():
        with pytest.raises(LockedError, match=rf"another hypervisor.cpr run \(pid {os.getpid()}\) holds the lock"):
            with StateDir(state_dir.path).lock():
                pass
    with state_dir.lock():
        pass
