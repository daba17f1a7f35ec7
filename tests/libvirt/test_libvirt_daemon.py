"""The libvirt path against a real libvirt daemon with TCG domains (real QEMU, real guest agents).

Every cycle proves the guest's RAM survived: the random marker in its tmpfs is identical and its
counter went on. The domains are shared by the tests of this file (booted once); each test leaves
them running (or paused) as it found them.
"""

import errno
import os
import signal
import threading
import time

import pytest
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CprError,
    ManifestError,
    SelectionError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._host import boot_id
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_host import status
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_restore import (
    restore,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._libvirt_save import (
    IMAGE_MARGIN,
    LibvirtSaveOptions,
    save,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._status import (
    status as vm_status,
)


@pytest.fixture(scope="module")
def lab(libvirt_lab):
    """Two domains of the session's daemon: web (running) and db (kept paused between tests)."""
    web = libvirt_lab.define_domain("web", wait_agent=False)
    db = libvirt_lab.define_domain("db", wait_agent=False)
    for dom in (web, db):
        libvirt_lab.wait_agent(dom.name())
    yield libvirt_lab
    for dom in (web, db):
        libvirt_lab.remove_domain(dom.name())


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    return str(path)


def _names(lab):
    return [lab.name("web"), lab.name("db")]


def _memory(lab, names):
    return {n: (lab.marker(n), lab.counter(n)) for n in names}


def _assert_survived(lab, before):
    for name, (marker, counter) in before.items():
        assert lab.marker(name) == marker, f"{name}: guest RAM changed"
        assert lab.counter(name) >= counter, f"{name}: the counter went back"


def _options(lab, **kwargs):
    return LibvirtSaveOptions(uri=lab.uri, reboot="none", timeout=120, **kwargs)


def test_vm_status_lists_a_libvirt_domain_with_its_problem(lab):
    """The fixture for issue 13: vm_status lists libvirt's QEMU, managed_by libvirt, with why it is not driven."""
    name = lab.name("web")
    vms = {vm["name"]: vm for vm in vm_status(Selection(), FactsOptions(timeout=5))["vms"]}
    assert vms[name]["managed_by"] == "libvirt", vms[name]
    assert any("inherited descriptor" in sign for sign in vms[name]["recognised_by"]), vms[name]["recognised_by"]
    assert any("libvirt runs this VM" in reason for reason in vms[name]["cpr"]["reasons"]), vms[name]["cpr"]
    assert vms[name]["cpr"]["ready"] is False


def test_save_and_restore_running_and_paused(lab, state_dir):
    web, db = _names(lab)
    before = _memory(lab, [web, db])
    lab.domain(db).suspend()
    checked = save([web, db], state_dir, _options(lab), check_mode=True)
    assert checked["changed"] and checked["would_save"] == [web, db]
    assert lab.state(web) == "running"

    saved = save([web, db], state_dir, _options(lab))
    assert saved["changed"] and sorted(vm["name"] for vm in saved["vms"]) == sorted([web, db])
    assert lab.state(web) == lab.state(db) == "shutoff"
    by_name = {vm["name"]: vm for vm in saved["vms"]}
    assert by_name[web]["runstate_before"] == "running" and by_name[db]["runstate_before"] == "paused"
    for vm in saved["vms"]:
        assert vm["stage"] == "saved" and vm["image_format"] == "sparse" and vm["image_checksum"] == "xxh3-128"
        assert "image_chunks" not in vm, "the chunks' digests stay in the record, out of the module's result"
        assert 0 < vm["image_allocated"] <= vm["image_bytes"] and vm["save_seconds"] > 0
        assert vm["boot_id"] == boot_id()
    # Idempotent: saved already, unchanged.
    again = save([web, db], state_dir, _options(lab))
    assert not again["changed"] and {vm["name"] for vm in again["vms"]} == {web, db}
    assert status(lab.uri, state_dir)["saved"][0]["stage"] == "saved"

    assert restore(state_dir, lab.uri, check_mode=True)["would_restore"] == sorted([web, db])
    restored = restore(state_dir, lab.uri, timeout=120)
    assert restored["changed"]
    assert lab.state(web) == "running" and lab.state(db) == "paused"
    for vm in restored["vms"]:
        assert vm["downtime_seconds"] >= vm["restore_seconds"] > 0
    assert not lab.image(web).exists() and not lab.image(db).exists()
    lab.domain(db).resume()
    _assert_survived(lab, before)
    assert not restore(state_dir, lab.uri)["changed"]


def test_bad_input_is_refused_before_anything(lab, state_dir):
    with pytest.raises(SelectionError, match="empty list"):
        save([], state_dir, _options(lab))
    with pytest.raises(CprError, match="no domain named nosuch"):
        save(["nosuch"], state_dir, _options(lab))
    assert not os.path.exists(state_dir)
    # A tmpfs does not survive a reboot: refused for kexec, naming the directory.
    with pytest.raises(CprError, match="must survive the kexec"):
        save([lab.name("web")], state_dir, LibvirtSaveOptions(uri=lab.uri, reboot="kexec"))
    assert lab.state(lab.name("web")) == "running"


def test_autostart_is_held_while_saved_and_given_back(lab, state_dir):
    web = lab.name("web")
    lab.domain(web).setAutostart(1)
    try:
        save([web], state_dir, _options(lab))
        assert not lab.domain(web).autostart(), "autostart must be off while the domain is saved"
        assert web not in status(lab.uri)["autostart"]
        restore(state_dir, lab.uri, timeout=120)
        assert lab.domain(web).autostart()
    finally:
        lab.domain(web).setAutostart(0)


# --- fault campaign ----------------------------------------------------------------------------------------


def _when_image_appears(lab, name, action, path=None):
    """Run action (at real-time priority) the moment libvirt starts writing the domain's image (or path appears)."""
    import testbed  # pylint: disable=import-outside-toplevel

    path = path or lab.image(name)

    def watch():
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.001)
        action()

    thread = threading.Thread(target=testbed.in_realtime, args=(watch,), daemon=True)
    thread.start()
    return thread


# SIGKILL: a crash, an OOM kill. SIGTERM: systemctl restart libvirtd.
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_fault_daemon_restarted_during_the_saves(lab, state_dir, campaign, sig):
    """A daemon killed or stopped during the saves cancels the save it ran when it starts again and resumes the
    domain, or it finished them first. Either way no domain is lost: saved ones are restored, the others run as
    they did, and the re-run's save (into a QEMU the interrupted save left its file in) restores too."""
    web, db = _names(lab)
    before = _memory(lab, [web, db])
    thread = _when_image_appears(lab, web, lambda: lab.restart(sig))
    try:
        outcome = save([web, db], state_dir, _options(lab))
        message = None
    except CprError as failure:
        outcome, message = None, str(failure)
    thread.join()
    if message is None:
        # libvirt finished the saves before it went down: both saved, both come back from their images.
        assert lab.state(web) == lab.state(db) == "shutoff"
        assert sorted(vm["name"] for vm in outcome["vms"]) == sorted([web, db])
        restore(state_dir, lab.uri, timeout=120)
        seen = "libvirt finished both saves before it stopped; both saved and checked, then restored"
    else:
        assert lab.state(web) == "running" and lab.state(db) == "running", message
        assert not lab.image(web).exists() and not lab.image(db).exists(), (message, sorted(os.listdir(lab.save_dir)))
        assert not [f for f in os.listdir(state_dir) if f.endswith(".libvirt")]
        save([web, db], state_dir, _options(lab))
        restore(state_dir, lab.uri, timeout=120)
        seen = (f"save failed naming the domain: \"{message[:200]}\"; both domains running as they were, no image "
                "or record left; a re-run saved and restored both")
    _assert_survived(lab, before)
    campaign(f"libvirt daemon {'stopped and started' if sig == signal.SIGTERM else 'killed and started'}",
             "during the managed saves (libvirt lab)", f"{seen}, RAM identical", 0, 0, True)


def test_fault_disk_full_during_a_managed_save(lab, state_dir, campaign):
    web, db = _names(lab)
    before = _memory(lab, [web, db])
    ballast, filler = lab.save_dir / "ballast", lab.save_dir / "filler"

    def fill(path, leave=1 << 20):
        free = os.statvfs(lab.save_dir)
        with open(path, "wb") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, free.f_bavail * free.f_frsize - leave)
            except OSError as error:
                # libvirt's writes took the space between statvfs and fallocate: the disk is full all the same.
                if error.errno != errno.ENOSPC:
                    raise

    # Filled once the checks passed: the moment libvirt creates the first image, before QEMU wrote most of it.
    # Most of the room is taken beforehand (the checks still pass), so that the filler is quick: a saved domain
    # of this size takes a fraction of a second. libvirt may still win the race (both images written before the
    # filler); then both are restored and it is tried again.
    needed = 2 * (lab.domain(web).maxMemory() * 1024 + IMAGE_MARGIN)
    message = None
    for _attempt in range(3):
        fill(ballast, leave=needed + (16 << 20))
        thread = _when_image_appears(lab, web, lambda: fill(filler))
        try:
            save([web, db], state_dir, _options(lab))
        except CprError as failure:
            message = str(failure)
        finally:
            thread.join()
            filler.unlink(missing_ok=True)
            ballast.unlink(missing_ok=True)
        if message is not None:
            break
        restore(state_dir, lab.uri, timeout=120)
    assert message is not None, "libvirt wrote both images before the filler three times"
    assert lab.state(web) == "running" and lab.state(db) == "running", message
    assert not lab.image(web).exists() and not lab.image(db).exists()
    _assert_survived(lab, before)
    save([web, db], state_dir, _options(lab))
    restore(state_dir, lab.uri, timeout=120)
    _assert_survived(lab, before)
    campaign("disk full (libvirt)", "libvirt's image directory filled after the checks, as libvirt starts writing",
             f"save failed in libvirt's words: \"{message[:160]}\"; both domains running as they were, partial "
             "image removed; a re-run with room saved and restored both, RAM identical", 0, 0, True)


def test_fault_image_damaged_before_the_restore(lab, state_dir, campaign):
    web = lab.name("web")
    before = _memory(lab, [web])
    save([web], state_dir, _options(lab))
    image = lab.image(web)
    with open(image, "r+b") as handle:
        handle.seek(image.stat().st_size // 2)
        original = handle.read(4096)
        handle.seek(image.stat().st_size // 2)
        handle.write(bytes(b ^ 0xFF for b in original))
    with pytest.raises(ManifestError, match=r"does not match the XXH3-128 its save recorded \(chunk \d+ of \d+") as failure:
        restore(state_dir, lab.uri, timeout=120)
    assert lab.state(web) == "shutoff", "a damaged image must not be loaded, nor the domain booted cold"
    assert image.exists() and os.path.exists(os.path.join(state_dir, f"{web}.libvirt"))
    with open(image, "r+b") as handle:
        handle.seek(image.stat().st_size // 2)
        handle.write(original)
    restore(state_dir, lab.uri, timeout=120)
    _assert_survived(lab, before)
    campaign("libvirt image damaged", "between the managed save and the restore",
             f"refused before loading: \"{str(failure.value)[:160]}\"; domain left shut off, image and record kept; "
             "with the image repaired a re-run restored it, RAM identical", 0, 0, True)


def test_fault_started_by_autostart_before_the_restore(lab, state_dir, campaign):
    web = lab.name("web")
    before = _memory(lab, [web])
    save([web], state_dir, _options(lab))
    # Something (a configuration tool) turns autostart on again, and the daemon starts (as at boot).
    lab.domain(web).setAutostart(1)
    try:
        lab.start_as_at_boot()
        lab.wait_agent(web)
        assert lab.state(web) == "running" and not lab.image(web).exists()
        result = restore(state_dir, lab.uri, timeout=120)
        [vm] = result["vms"]
        assert vm["restored_by"].startswith("libvirt, from its image") and not vm["changed"]
        _assert_survived(lab, before)
        assert lab.qemu_pid(web) is not None
    finally:
        lab.domain(web).setAutostart(0)
    campaign("domain started by libvirt's autostart", "between the managed save and the restore (daemon restarted)",
             "libvirt restored it from its managed save image; libvirt_restore saw it came back from the image "
             "(reason restored, image gone), checked it and its agent, did not start it again; RAM identical",
             0, 0, True)


# --- the role: libvirt domains and plain QEMU VMs on one host --------------------------------------------------


def _play(lab, tmp_path, vms, *extra):
    """The rolling playbook over a "fleet" of one host (this machine, reboot method none); (exit code, output, report)."""
    import json
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    inventory = {"all": {"children": {"hypervisors": {"hosts": {"hv": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "kernel_update_vms": vms, "kernel_update_state_dir": str(tmp_path / "state"),
        "kernel_update_reboot_method": "none", "kernel_update_force": True, "kernel_update_timeout": 120,
        "kernel_update_libvirt_uri": lab.uri}}}}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(repo, ".cache", "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_RETRY_FILES_ENABLED="false", USER="pytest")
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                           str(tmp_path / "inventory.json"), os.path.join(repo, "playbooks", "rolling_kernel_update.yml"),
                           "-e", "kernel_update_run_id=lv1", "-e", f"rolling_report_dir={tmp_path / 'reports'}", *extra],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    path = tmp_path / "reports" / "rolling-kernel-update-lv1.json"
    report = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    return done.returncode, done.stdout + done.stderr, report


def test_role_updates_a_host_with_libvirt_domains_and_plain_qemu_vms(lab, vm_dir, tmp_path):
    """One run of the rolling playbook restarts a libvirt domain (through libvirt) and a plain QEMU VM (cpr-reboot)
    in one blackout; with kernel_update_libvirt=false the same host is refused before anything is touched."""
    import testbed  # pylint: disable=import-outside-toplevel

    web = lab.name("web")
    [plain] = testbed.boot_vms(vm_dir, names=[f"plain{os.getpid()}"])
    before = _memory(lab, [web])
    plain_before = (plain.marker(), plain.counter())

    code, output, _report = _play(lab, tmp_path, [web, plain.name], "-e", "kernel_update_libvirt=false")
    assert code != 0 and f"VM {web}: " in output and "libvirt runs this VM" in " ".join(output.split()), output[-3000:]
    assert lab.state(web) == "running"

    code, output, report = _play(lab, tmp_path, [web, plain.name])
    assert code == 0, output[-4000:]
    [host] = report["hosts"]
    vms = {vm["name"]: vm for vm in host["vms"]}
    assert vms[web]["managed_by"] == "libvirt" and vms[plain.name]["managed_by"] == "none", vms
    assert vms[web]["runstate"] == "running" and vms[web]["state_bytes"] > 0 and vms[web]["downtime_seconds"] > 0
    assert host["libvirt"]["save_image_format"] == "sparse", host["libvirt"]
    assert lab.state(web) == "running" and not lab.image(web).exists()
    _assert_survived(lab, before)
    plain.refresh_pid()
    assert plain.marker() == plain_before[0] and plain.counter() >= plain_before[1]
    assert not os.listdir(tmp_path / "state") or not [f for f in os.listdir(tmp_path / "state")
                                                      if f.endswith((".libvirt", ".json"))]
