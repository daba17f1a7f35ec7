"""The state directory: what it accepts, the name of every file it holds, and that nothing can be swapped under it."""

import hashlib
import json
import os

import pytest
import xxhash

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import LockedError, ManifestError, StateDirError
from ansible_collections.hypervisor.cpr.plugins.module_utils._manifest import Manifest, StopRecord
from ansible_collections.hypervisor.cpr.plugins.module_utils._state_dir import StateDir

NOBODY = 65534


def _manifest(state_dir, name="web1", **changes):
    fields = dict(name=name, argv=["qemu-system-x86_64", "-name", name], cwd="/", qmp_socket=f"/run/{name}.qmp",
                  qga_socket=None, machine_type="pc-q35-10.0", qemu_version="10.0.2", runstate_before="running",
                  suspended_by_us=False, agent_answered=True, ram_in_place=True, memory_backends=[], capabilities={},
                  parameters={}, state_file=state_dir.state_path(name), reboot="kexec", paused_at=1.0, boot_id="b0",
                  kernel="6.1.0")
    return Manifest(**dict(fields, **changes))


@pytest.fixture
def state_dir(tmp_path):
    with StateDir.open(str(tmp_path / "s")) as directory:
        directory.create()
        yield directory


def _write(path, content, mode=0o600):
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(path, mode)


@pytest.mark.parametrize("method, expected", [
    ("manifest_path", "web1.json"),
    ("state_path", "web1.state"),
    ("saving_path", "web1.saving"),
    ("stopped_path", "web1.stopped"),
    ("log_path", "web1.log"),
])
def test_every_file_name_is_made_here(state_dir, method, expected):
    assert getattr(state_dir, method)("web1") == f"{state_dir.path}/{expected}"


def test_the_run_lock_is_hidden_beside_the_flock(state_dir):
    assert state_dir.run_lock_path == f"{state_dir.path}/.hypervisor-cpr.run"


def test_a_missing_directory_holds_nothing_until_created_0700(tmp_path):
    path = str(tmp_path / "new")
    with StateDir.open(path) as state_dir:
        assert not state_dir.exists and state_dir.manifests() == [] and state_dir.stop_records() == []
        assert not os.path.exists(path)
        state_dir.create()
        assert state_dir.exists
    assert os.stat(path).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("path, error", [
    ("relative/state", "must be an absolute path below /"),
    ("/", "must be an absolute path below /"),
    ("/var/lib/../lib/qemu-cpr", "without . or .. in it"),
    ("/var/lib/./qemu-cpr", "without . or .. in it"),
    ("/proc/nope/state", "parent directory /proc/nope of the state directory does not exist"),
])
def test_a_path_that_cannot_be_a_state_directory_is_refused(path, error):
    with pytest.raises(StateDirError, match=error):
        with StateDir.open(path) as state_dir:
            state_dir.create()


@pytest.mark.parametrize("make, error", [
    (lambda p, t: os.symlink(t, p), "is a symlink"),
    (lambda p, t: open(p, "w", encoding="utf-8").close(), "is not a directory"),
    (lambda p, t: (os.mkdir(p), os.chmod(p, 0o777)), "is writable by others"),
    (lambda p, t: (os.mkdir(p), os.chmod(p, 0o720)), "is writable by others"),
    (lambda p, t: (os.mkdir(p), os.chown(p, NOBODY, -1)), f"is owned by uid {NOBODY}"),
])
def test_an_unsafe_directory_is_refused(tmp_path, make, error):
    path = str(tmp_path / "state")
    make(path, str(tmp_path))
    with pytest.raises(StateDirError, match=error):
        StateDir.open(path)


@pytest.mark.parametrize("make, error", [
    # A parent another user owns, or may write to: they could swap the state directory for theirs.
    (lambda p: (os.mkdir(p), os.chown(p, NOBODY, -1)), f"parent directory .* is owned by uid {NOBODY}"),
    (lambda p: (os.mkdir(p), os.chmod(p, 0o777)), "parent directory .* with mode 0777"),
    (lambda p: os.symlink("/tmp", p), "parent directory .* is a symlink"),
])
def test_an_unsafe_parent_is_refused(tmp_path, make, error):
    parent = str(tmp_path / "parent")
    make(parent)
    with pytest.raises(StateDirError, match=error):
        StateDir.open(os.path.join(parent, "state"))


def test_a_sticky_world_writable_parent_like_tmp_is_accepted(tmp_path):
    parent = tmp_path / "sticky"
    parent.mkdir()
    os.chmod(parent, 0o1777)
    with StateDir.open(str(parent / "state")) as state_dir:
        state_dir.create()
        assert state_dir.exists


def test_the_directory_swapped_after_it_was_opened_is_not_followed(tmp_path):
    """A rename after the open changes nothing: every file is opened through the descriptor."""
    with StateDir.open(str(tmp_path / "s")) as state_dir:
        state_dir.create()
        state_dir.write_manifest(_manifest(state_dir, "real"))
        os.rename(tmp_path / "s", tmp_path / "moved")
        os.mkdir(tmp_path / "s", 0o700)
        _write(str(tmp_path / "s" / "planted.json"), "{}")
        assert [m.name for m in state_dir.manifests()] == ["real"]
        state_dir.write_manifest(_manifest(state_dir, "later"))
    assert sorted(os.listdir(tmp_path / "moved")) == ["later.json", "real.json"]
    assert os.listdir(tmp_path / "s") == ["planted.json"]


def test_manifests_round_trip_and_are_listed_by_name(state_dir):
    for name in ("b", "a"):
        state_dir.write_manifest(_manifest(state_dir, name))
    state_dir.write_manifest(_manifest(state_dir, "c"), in_progress=True)
    assert [m.name for m in state_dir.manifests()] == ["a", "b"]
    assert state_dir.read_manifest("c", in_progress=True).name == "c"
    assert (state_dir.has_manifest("c"), state_dir.has_saving("c")) == (False, True)
    assert os.stat(state_dir.manifest_path("a")).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("change, error", [
    # A manifest only says what to run as root when it is ours, nobody else's to read or write, and about itself.
    (lambda path: os.chmod(path, 0o644), "only its owner may read and write .*mode 0644"),
    (lambda path: os.chown(path, NOBODY, -1), f"uid {NOBODY}"),
    (lambda path: _rewrite(path, name="other"), "names VM 'other' and state file"),
    (lambda path: _rewrite(path, state_file="/var/tmp/elsewhere.state"), "state file /var/tmp/elsewhere.state"),
    (lambda path: (os.unlink(path), os.symlink("/etc/hostname", path)), "cannot be read"),
])
def test_an_untrusted_manifest_is_refused(state_dir, change, error):
    state_dir.write_manifest(_manifest(state_dir))
    change(state_dir.manifest_path("web1"))
    with pytest.raises(ManifestError, match=error):
        state_dir.manifests()


def _rewrite(path, **changes):
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    _write(path, json.dumps(dict(data, **changes)))


def test_a_sealed_state_file_is_verified_and_a_damaged_one_refused(state_dir):
    manifest = _manifest(state_dir)
    with os.fdopen(state_dir.open_state("web1", write=True), "wb") as handle:
        handle.write(b"device state" * 1000)
    assert os.stat(manifest.state_file).st_mode & 0o777 == 0o600
    state_dir.seal(manifest)
    state_dir.finish_save(manifest)
    state_dir.verify_state(state_dir.read_manifest("web1"))
    with open(manifest.state_file, "r+b") as handle:
        handle.write(b"X")
    with pytest.raises(ManifestError, match=r"does not match the XXH3-128 in its manifest \(chunk 1 of 1, from byte 0\)"):
        state_dir.verify_state(manifest)
    os.truncate(manifest.state_file, 10)
    with pytest.raises(ManifestError, match="has 10 bytes, its manifest says 12000"):
        state_dir.verify_state(manifest)
    os.unlink(manifest.state_file)
    os.symlink("/etc/hostname", manifest.state_file)
    with pytest.raises(ManifestError, match="is missing"):
        state_dir.verify_state(manifest)


def test_restored_files_are_kept_aside_or_removed(state_dir):
    for name in ("kept", "gone"):
        manifest = _manifest(state_dir, name)
        os.close(state_dir.open_state(name, write=True))
        state_dir.write_manifest(manifest)
        state_dir.write_restoring(name, {"pid": 1})
    state_dir.keep_restored("kept")
    state_dir.remove_saved("gone")
    assert sorted(f for f in os.listdir(state_dir.path) if not f.startswith(".")) == [
        "kept.json.restored", "kept.state.restored"]
    assert state_dir.manifests() == []


def test_what_the_directory_holds(state_dir):
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
def test_an_unreadable_manifest_names_its_file(state_dir, content, error):
    _write(state_dir.manifest_path("web1"), content)
    with pytest.raises(ManifestError, match=error):
        state_dir.manifests()


@pytest.mark.parametrize("record, error", [
    ({"name": "off1"}, "the record .*off1.stopped of a shut-down VM cannot be read"),
    ({"name": "other", "argv": [], "cwd": "/", "qmp_socket": "/q", "qga_socket": None, "agent_answered": False,
      "how": "guest-shutdown"}, "names VM 'other', not 'off1'"),
])
def test_a_stop_record_that_is_not_one_is_refused(state_dir, record, error):
    _write(state_dir.stopped_path("off1"), json.dumps(record))
    with pytest.raises(ManifestError, match=error):
        state_dir.stop_records()


def test_the_flock_keeps_a_second_module_out_and_names_the_first(state_dir):
    with state_dir.lock():
        with pytest.raises(LockedError, match=rf"another hypervisor.cpr run \(pid {os.getpid()}\) holds the lock"):
            with StateDir.open(state_dir.path) as second, second.lock():
                pass
    with state_dir.lock():
        pass


def test_a_format_1_manifest_is_verified_by_its_one_sha256(state_dir):
    """Saved by the previous version: one SHA-256 over the whole file, no chunk list; still restorable."""
    content = b"device state" * 1000
    with os.fdopen(state_dir.open_state("old", write=True), "wb") as handle:
        handle.write(content)
    manifest = _manifest(state_dir, "old", format=1, state_bytes=len(content),
                         state_sha256=hashlib.sha256(content).hexdigest())
    data = {k: v for k, v in vars(manifest).items() if k not in ("state_chunk_bytes", "state_chunks")}
    _write(state_dir.manifest_path("old"), json.dumps(data))
    read = state_dir.read_manifest("old")
    assert (read.format, read.state_chunks) == (1, [])
    state_dir.verify_state(read)
    with open(read.state_file, "r+b") as handle:
        handle.write(b"X")
    with pytest.raises(ManifestError, match=r"does not match the SHA-256 in its manifest\. The file is damaged"):
        state_dir.verify_state(read)


def test_a_sealed_manifest_lists_one_xxh3_digest_per_chunk(state_dir):
    manifest = _manifest(state_dir, "new", format=1, state_sha256="stale")
    with os.fdopen(state_dir.open_state("new", write=True), "wb") as handle:
        handle.write(b"s" * 1000)
    state_dir.seal(manifest)
    assert (manifest.format, manifest.state_sha256, manifest.state_bytes) == (3, "", 1000)
    assert (manifest.state_checksum, manifest.state_chunks) == ("xxh3-128", [xxhash.xxh3_128_hexdigest(b"s" * 1000)])


def test_a_format_2_manifest_is_verified_by_its_sha256_chunks(state_dir):
    """Saved by the previous version: SHA-256 per chunk, no state_checksum; still restorable, damage still refused."""
    content = os.urandom(3 * 4096 + 10)
    with os.fdopen(state_dir.open_state("two", write=True), "wb") as handle:
        handle.write(content)
    manifest = _manifest(state_dir, "two", format=2, state_bytes=len(content), state_chunk_bytes=4096,
                         state_chunks=[hashlib.sha256(content[o:o + 4096]).hexdigest() for o in range(0, len(content), 4096)])
    data = {k: v for k, v in vars(manifest).items() if k != "state_checksum"}
    _write(state_dir.manifest_path("two"), json.dumps(data))
    read = state_dir.read_manifest("two")
    assert (read.format, read.state_checksum) == (2, "sha256")
    state_dir.verify_state(read)
    with open(read.state_file, "r+b") as handle:
        handle.seek(2 * 4096 + 3)
        handle.write(b"X")
    with pytest.raises(ManifestError, match=r"does not match the SHA-256 in its manifest \(chunk 3 of 4, from byte 8192\)"):
        state_dir.verify_state(read)


def test_a_manifest_naming_an_unknown_checksum_is_refused(state_dir):
    manifest = _manifest(state_dir, "odd", state_checksum="md5")
    with pytest.raises(ManifestError, match="names an unknown checksum 'md5'"):
        state_dir.verify_state(manifest)


@pytest.mark.parametrize("fmt", [0, 4, None])
def test_a_manifest_of_an_unknown_format_is_refused_by_its_number(state_dir, fmt):
    manifest = _manifest(state_dir, "future")
    _write(state_dir.manifest_path("future"), json.dumps(dict(vars(manifest), format=fmt)))
    with pytest.raises(ManifestError, match=f"has format {fmt!r}.*reads formats 1, 2"):
        state_dir.read_manifest("future")
