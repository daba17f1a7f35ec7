"""Discovery, facts, readiness reasons and errors against real QEMU processes (TCG, firmware only)."""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
import testbed

from ansible_collections.hypervisor.cpr.plugins.module_utils._checkpoint import SaveOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import discover
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CommandFailedError,
    ConnectionFailedError,
    NotAnsweringError,
    NotReadyError,
    SelectionError,
    SocketMissingError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions
from ansible_collections.hypervisor.cpr.plugins.module_utils._qmp import open_qmp
from ansible_collections.hypervisor.cpr.plugins.module_utils._save import save
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection
from ansible_collections.hypervisor.cpr.plugins.module_utils._status import status as vm_status

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _only(name, **options):
    [facts] = vm_status(Selection(names=[name]), FactsOptions(**dict({"timeout": 5}, **options)))["vms"]
    return facts


def test_discovers_every_argv_form(qemu, tmp_path):
    unique = f"t{os.getpid()}"
    qmp_a, qmp_b, qmp_c = (str(tmp_path / f"{n}.qmp") for n in "abc")
    qga_b = str(tmp_path / "b.qga")
    a = qemu.start("-machine", "q35", "-qmp", f"unix:{qmp_a},server=on,wait=off",
                   "-name", f"guest={unique}-a,debug-threads=on", wait_for=qmp_a)
    b = qemu.start("-machine", "pc", "-chardev", f"socket,id=mon0,path={qmp_b},server=on,wait=off",
                   "-mon", "chardev=mon0,mode=control", "-name", f"{unique}-b",
                   "-chardev", f"socket,id=qga0,path={qga_b},server=on,wait=off", "-device", "virtio-serial",
                   "-device", '{"driver": "virtserialport", "chardev": "qga0", "name": "org.qemu.guest_agent.0"}',
                   wait_for=qmp_b)
    c = qemu.start("-S", "-qmp", f"unix:{qmp_c},server,nowait", wait_for=qmp_c)

    found = {e.qmp_socket: e for e in discover()}
    assert (found[qmp_a].name, found[qmp_a].pid, found[qmp_a].qga_socket) == (f"{unique}-a", a.pid, None)
    assert (found[qmp_b].name, found[qmp_b].pid, found[qmp_b].qga_socket) == (f"{unique}-b", b.pid, qga_b)
    assert (found[qmp_c].name, found[qmp_c].pid) == ("c", c.pid)

    facts_a = _only(f"{unique}-a")
    assert (facts_a["runstate"], facts_a["pid"]) == ("running", a.pid)
    # The versioned type of whichever QEMU runs here (pc-q35-10.0 on QEMU 10.0), never the bare alias.
    assert re.fullmatch(r"pc-q35-\d+\.\d+", facts_a["machine_type"]), facts_a["machine_type"]
    facts_b = _only(f"{unique}-b")
    assert facts_b["machine_type"].startswith("pc-i440fx-")
    # The agent socket exists but no guest runs an agent behind it.
    assert facts_b["agent"]["socket"] == qga_b


def test_memory_backends_and_reboot_verdict(qemu, tmp_path):
    unique = f"m{os.getpid()}"
    shm_path = f"/dev/shm/{unique}.ram"
    disk_path = str(tmp_path / "disk.ram")
    for label, mem_path in (("shm", shm_path), ("disk", disk_path)):
        qmp = str(tmp_path / f"{label}.qmp")
        qemu.start("-machine", "q35,memory-backend=ram0",
                   "-object", f"memory-backend-file,id=ram0,size=64M,mem-path={mem_path},share=on",
                   "-qmp", f"unix:{qmp},server=on,wait=off", "-name", f"{unique}-{label}", wait_for=qmp)
    try:
        shm = _only(f"{unique}-shm")
        shm_restart_only = _only(f"{unique}-shm", reboot="none")
        disk = _only(f"{unique}-disk")
    finally:
        os.unlink(shm_path)
    assert shm["memory_backends"][0]["filesystem"] == "tmpfs"
    assert not shm["memory_backends"][0]["persistent"]
    assert not shm["cpr"]["ready"]
    assert "would not survive the kexec" in shm["cpr"]["reasons"][0]
    assert shm_restart_only["cpr"]["ready"] and shm_restart_only["cpr"]["ram_in_place"]
    assert disk["memory_backends"][0]["persistent"] and disk["memory_backends"][0]["mappable"]
    assert disk["cpr"] == {"ready": True, "reboot": "kexec", "ram_in_place": True, "ram_copy_bytes": 0, "reasons": []}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root and losetup")
def test_raw_block_device_backend(qemu, tmp_path):
    image = tmp_path / "ram.img"
    image.write_bytes(b"\0" * (64 << 20))
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        qmp = str(tmp_path / "blk.qmp")
        qemu.start("-machine", "q35,memory-backend=ram0",
                   "-object", f"memory-backend-file,id=ram0,size=64M,mem-path={device},share=on",
                   "-qmp", f"unix:{qmp},server=on,wait=off", "-name", f"blk{os.getpid()}", wait_for=qmp)
        facts = _only(f"blk{os.getpid()}")
        qemu.stop_all()
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    backend = facts["memory_backends"][0]
    assert (backend["kind"], backend["mappable"], backend["persistent"]) == ("block-device", True, True)
    assert facts["cpr"]["ready"] and facts["cpr"]["ram_in_place"]


def test_private_ram_is_copied(qemu, tmp_path):
    qmp = str(tmp_path / "p.qmp")
    qemu.start("-qmp", f"unix:{qmp},server=on,wait=off", "-name", f"priv{os.getpid()}", wait_for=qmp)
    facts = _only(f"priv{os.getpid()}")
    assert facts["memory_backends"][0]["kind"] == "anonymous"
    assert facts["cpr"]["ready"] and not facts["cpr"]["ram_in_place"]
    assert facts["cpr"]["ram_copy_bytes"] == 64 << 20


def test_reasons_blocker_capability_and_runstate(qemu, tmp_path):
    unique = f"r{os.getpid()}"
    qmp = str(tmp_path / "r.qmp")
    qemu.start("-S", "-object", f"memory-backend-file,id=hm,share=on,mem-path={tmp_path}/ivshmem,size=1M",
               "-device", "ivshmem-plain,memdev=hm", "-qmp", f"unix:{qmp},server=on,wait=off", "-name", unique,
               wait_for=qmp)

    _set_capability(qmp, unique, "postcopy-ram", True)
    reasons = _only(unique)["cpr"]["reasons"]
    assert any("runstate is prelaunch" in r for r in reasons)
    assert any("QEMU blocks migration: Migration is disabled when using feature 'peer mode'" in r for r in reasons)
    assert any("capability postcopy-ram is on" in r for r in reasons)
    # QEMU's own refusal comes back in its words, naming the VM (shared file RAM cannot be write-tracked).
    with pytest.raises(CommandFailedError, match=f"^VM {unique}: QMP command migrate-set-capabilities failed: "
                       "Background-snapshot is not compatible with guest memory configuration$"):
        _set_capability(qmp, unique, "postcopy-ram", False, "background-snapshot", True)

    # The other capabilities cpr-reboot cannot be combined with, on a plain running VM that is otherwise ready.
    plain_qmp = str(tmp_path / "plain.qmp")
    qemu.start("-qmp", f"unix:{plain_qmp},server=on,wait=off", "-name", f"{unique}-plain", wait_for=plain_qmp)
    assert _only(f"{unique}-plain")["cpr"]["ready"]
    for capability in ("background-snapshot", "x-colo"):
        _set_capability(plain_qmp, f"{unique}-plain", capability, True)
        facts = _only(f"{unique}-plain")
        _set_capability(plain_qmp, f"{unique}-plain", capability, False)
        assert capability in facts["migration"]["capabilities"]
        assert not facts["cpr"]["ready"]
        assert facts["cpr"]["reasons"] == [
            f"migration capability {capability} is on, which cpr-reboot cannot use: "
            "turn it off with migrate-set-capabilities"]
    assert _only(f"{unique}-plain")["cpr"]["ready"]


def _set_capability(qmp, name, *pairs):
    """migrate-set-capabilities, one call per (capability, state) pair, in order."""
    async def run():
        async with open_qmp(qmp, vm=name, timeout=5) as session:
            for capability, state in zip(pairs[::2], pairs[1::2]):
                await session.execute("migrate-set-capabilities",
                                      {"capabilities": [{"capability": capability, "state": state}]})
    asyncio.run(run())


def test_qemu_too_old(qemu, tmp_path):
    fetch = subprocess.run([os.path.join(REPO_ROOT, "tests", "testbed", "fetch-old-qemu.sh")],
                           capture_output=True, text=True, check=False)
    if fetch.returncode == 3:
        pytest.skip(fetch.stderr.strip())
    assert fetch.returncode == 0, fetch.stderr
    qmp = str(tmp_path / "old.qmp")
    qemu.start("-machine", "q35", "-qmp", f"unix:{qmp},server=on,wait=off", "-name", f"old{os.getpid()}",
               binary=fetch.stdout.strip(), wait_for=qmp)
    facts = _only(f"old{os.getpid()}")
    assert facts["qemu_version"].startswith("7.2")
    too_old = f"QEMU {facts['qemu_version']} has no cpr-reboot (it needs 8.2 or newer): upgrade QEMU and restart the VM cold once"
    assert facts["cpr"]["reasons"] == [too_old]
    # A save refuses it before touching anything, naming the VM and saying what to do.
    state_dir = str(tmp_path / "state")
    with pytest.raises(NotReadyError) as refused:
        save(Selection(names=[f"old{os.getpid()}"]), state_dir, SaveOptions(reboot="none", timeout=30))
    assert str(refused.value) == f"VM old{os.getpid()} is not ready: {too_old}. Nothing was touched"
    assert _only(f"old{os.getpid()}")["runstate"] == "running"
    assert [f for f in os.listdir(state_dir) if not f.startswith(".")] == []


def test_explicit_list_of_a_vm_discovery_cannot_see(qemu, tmp_path):
    """Sockets defined in a -readconfig file: not in the argv, so only an explicit list finds the VM."""
    qmp, qga = str(tmp_path / "legacy.qmp"), str(tmp_path / "legacy.qga")
    config = tmp_path / "legacy.cfg"
    config.write_text(
        f'[chardev "mon0"]\n  backend = "socket"\n  path = "{qmp}"\n  server = "on"\n  wait = "off"\n'
        '[mon "mon0"]\n  chardev = "mon0"\n  mode = "control"\n'
        f'[chardev "qga0"]\n  backend = "socket"\n  path = "{qga}"\n  server = "on"\n  wait = "off"\n'
        '[device "vser0"]\n  driver = "virtio-serial-pci"\n'
        '[device "qgaport"]\n  driver = "virtserialport"\n  chardev = "qga0"\n  name = "org.qemu.guest_agent.0"\n',
        encoding="utf-8")
    process = qemu.start("-S", "-readconfig", str(config), wait_for=qmp)
    # Discovery accounts for it, but cannot tell its sockets.
    [found] = [e for e in discover() if e.pid == process.pid]
    assert found.qmp_socket is None and "no QMP unix socket hypervisor.cpr could reach" in found.problem

    [facts] = vm_status(Selection(vms=[{"name": "legacy1", "qmp_socket": qmp, "qga_socket": qga}]), FactsOptions(timeout=5))["vms"]
    assert (facts["name"], facts["pid"], facts["runstate"], facts["source"]) == ("legacy1", process.pid, "prelaunch", "explicit")
    assert (facts["qmp_socket"], facts["qga_socket"], facts["error"]) == (qmp, qga, None)
    assert facts["argv"][-2:] == ["-readconfig", str(config)]
    # Not running, so its agent is not asked.
    assert facts["agent"] == {"socket": qga, "answering": None, "version": None, "error": None}
    assert facts["cpr"]["reasons"] == ["its runstate is prelaunch; only running, paused or suspended VMs can be saved"]


def _readme_ad_hoc():
    """The commands of the README's "Ad hoc, from this checkout" block: (export line, vm_status line, ansible-doc line)."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as handle:
        block = re.search(r"### Ad hoc, from this checkout\n.*?```bash\n(.*?)```", handle.read(), re.S).group(1)
    lines = [line for line in block.splitlines() if line and not line.startswith("#")]
    [export] = [line for line in lines if line.startswith("export ")]
    [status] = [line for line in lines if line.startswith("ansible localhost ") and "-m hypervisor.cpr.vm_status" in line]
    [doc] = [line for line in lines if line.startswith("ansible-doc ")]
    return export, status, doc


def _run_as_readme(export, command):
    """Run a README command line in a shell at the checkout's root, after the README's export, as a reader would."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    result = subprocess.run(["bash", "-euc", f"{export}\n{command}"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_readme_ad_hoc_command(qemu, vm_dir, tmp_path):
    """The README's ad-hoc vm_status, verbatim, finds QEMUs started by hand and tells their RAM and agent apart."""
    unique = f"adhoc{os.getpid()}"
    shm_path = f"/dev/shm/{unique}.ram"
    ram = {"shm": shm_path, "disk": str(tmp_path / "disk.ram")}
    device = None
    if os.geteuid() == 0 and shutil.which("losetup"):
        image = tmp_path / "blk.img"
        image.write_bytes(b"\0" * (64 << 20))
        device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True,
                                text=True).stdout.strip()
        ram["blk"] = device
    started = {}
    try:
        for label, mem_path in ram.items():
            qmp = str(tmp_path / f"{label}.qmp")
            process = qemu.start("-machine", "q35,memory-backend=ram0",
                                 "-object", f"memory-backend-file,id=ram0,size=64M,mem-path={mem_path},share=on",
                                 "-qmp", f"unix:{qmp},server=on,wait=off", "-name", f"guest={unique}-{label}",
                                 wait_for=qmp)
            started[f"{unique}-{label}"] = (qmp, process.pid)
        [guest] = testbed.boot_vms(vm_dir, names=[f"{unique}-agent"], ram="private")
        started[guest.name] = (str(guest.qmp_socket), guest.pid)

        export, status, doc = _readme_ad_hoc()
        outputs = {}
        for mode, command in (("normal", status), ("check", f"{status} --check")):
            stdout = _run_as_readme(export, command)
            head = re.match(r"localhost \| SUCCESS => ", stdout)
            assert head, stdout[:2000]
            outputs[mode] = json.loads(stdout[head.end():])
        assert "hypervisor.cpr.vm_status" in _run_as_readme(export, doc)
    finally:
        qemu.stop_all()
        if device:
            subprocess.run(["losetup", "-d", device], check=True)
        if os.path.exists(shm_path):
            os.unlink(shm_path)

    # Check mode reports the same, and neither run changed anything.
    for output in outputs.values():
        assert output["changed"] is False
        vms = {facts["name"]: facts for facts in output["vms"] if facts["name"] in started}
        assert sorted(vms) == sorted(started)
        for name, (qmp, pid) in started.items():
            assert (vms[name]["qmp_socket"], vms[name]["pid"], vms[name]["runstate"], vms[name]["error"]) == (
                qmp, pid, "running", None), name
        backends = {name.rsplit("-", 1)[1]: vms[name]["memory_backends"][0] for name in started}
        assert (backends["shm"]["filesystem"], backends["shm"]["persistent"]) == ("tmpfs", False)
        assert (backends["disk"]["kind"], backends["disk"]["persistent"]) == ("file", True)
        assert (backends["agent"]["kind"], backends["agent"]["persistent"]) == ("anonymous", False)
        if device:
            assert (backends["blk"]["kind"], backends["blk"]["persistent"]) == ("block-device", True)
        # The default verdict is for a kexec: RAM in place on tmpfs would not survive it; private RAM is copied.
        ready = {name.rsplit("-", 1)[1]: vms[name]["cpr"]["ready"] for name in started}
        assert ready == dict({"shm": False, "disk": True, "agent": True}, **({"blk": True} if device else {}))
        agent = vms[guest.name]["agent"]
        assert (agent["socket"], agent["answering"], agent["error"]) == (str(guest.qga_socket), True, None)
        assert agent["version"]
        assert all(vms[name]["agent"]["answering"] is None for name in started if name != guest.name)


def test_missing_socket_is_reported_not_raised(tmp_path):
    [facts] = vm_status(Selection(vms=[{"name": "ghost", "qmp_socket": str(tmp_path / "ghost.qmp")}]), FactsOptions(timeout=2))["vms"]
    assert facts["error"].startswith(f"VM ghost: QMP socket {tmp_path}/ghost.qmp does not exist")
    assert not facts["cpr"]["ready"]


def test_missing_socket_error(tmp_path):
    async def connect():
        async with open_qmp(str(tmp_path / "nope.qmp"), vm="nope", timeout=1):
            pass
    with pytest.raises(SocketMissingError, match="VM nope: QMP socket .* does not exist"):
        asyncio.run(connect())


def test_stale_socket_after_qemu_died(qemu, tmp_path):
    qmp = str(tmp_path / "stale.qmp")
    process = qemu.start("-qmp", f"unix:{qmp},server=on,wait=off", wait_for=qmp)
    process.kill()
    process.wait()
    if not os.path.exists(qmp):
        pytest.skip("QEMU removed its socket on exit")

    async def connect():
        async with open_qmp(qmp, vm="stale", timeout=1):
            pass
    with pytest.raises(ConnectionFailedError, match="nothing listens on QMP socket"):
        asyncio.run(connect())


def test_stopped_qemu_does_not_answer(qemu, tmp_path):
    qmp = str(tmp_path / "stopped.qmp")
    process = qemu.start("-qmp", f"unix:{qmp},server=on,wait=off", wait_for=qmp)
    resume = f"its QEMU was stopped (SIGSTOP), resume it: kill -CONT {process.pid}; otherwise close "

    async def connect():
        async with open_qmp(qmp, vm="stopped", timeout=1) as session:
            await session.execute("query-status")

    # A command in flight when QEMU stops.
    async def stop_then_ask():
        async with open_qmp(qmp, vm="stopped", timeout=1) as session:
            os.kill(process.pid, signal.SIGSTOP)
            await session.execute("query-status")
    with pytest.raises(NotAnsweringError) as in_flight:
        asyncio.run(stop_then_ask())
    assert str(in_flight.value).startswith("VM stopped: QMP command query-status got no answer within 1 s. ")
    assert f"{resume}any other client of its monitor, or raise timeout if QEMU is only slow" in str(in_flight.value)

    # A new connection waits in the listen queue and gets no greeting.
    with pytest.raises(NotAnsweringError) as no_greeting:
        asyncio.run(connect())
    assert str(no_greeting.value).startswith(
        f"VM stopped: QMP socket {qmp} accepted the connection but QEMU sent no greeting within 1 s: QEMU is stopped")
    assert str(no_greeting.value).endswith(
        f"{resume}the other client of this monitor, or raise timeout if QEMU is only slow")

    # Once the queue is full, a connect is not even queued: it times out too, with the same advice.
    queued = []
    try:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            queued.append(sock)
            sock.connect(qmp)
    except BlockingIOError:
        pass
    with pytest.raises(NotAnsweringError) as queue_full:
        asyncio.run(connect())
    for sock in queued:
        sock.close()
    assert str(queue_full.value).startswith(f"VM stopped: connecting to QMP socket {qmp} timed out after 1 s: ")
    assert str(queue_full.value).endswith(
        f"{resume}the other clients of this socket, or raise timeout if QEMU is only slow")

    # Doing what the message says is enough.
    os.kill(process.pid, signal.SIGCONT)
    [facts] = vm_status(Selection(vms=[{"name": "stopped", "qmp_socket": qmp}]), FactsOptions(timeout=10))["vms"]
    assert (facts["error"], facts["runstate"]) == (None, "running")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to switch to nobody")
def test_permission_denied_for_another_user(qemu):
    sockdir = tempfile.mkdtemp(prefix="hypervisor-cpr-perm-")
    os.chmod(sockdir, 0o755)
    qmp = os.path.join(sockdir, "perm.qmp")
    try:
        qemu.start("-qmp", f"unix:{qmp},server=on,wait=off", wait_for=qmp)
        os.chmod(qmp, 0o700)
        # The venv's interpreter may live under root's home; the host's python3 with our
        # site-packages runs as any user.
        site_packages = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
        code = (
            "import json, sys; sys.path[:0] = sys.argv[1].split(':');"
            "from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions;"
            "from ansible_collections.hypervisor.cpr.plugins.module_utils._select import Selection;"
            "from ansible_collections.hypervisor.cpr.plugins.module_utils._status import status;"
            "print(json.dumps(status(Selection(vms=[{'name': 'perm', 'qmp_socket': sys.argv[2]}]),"
            " FactsOptions(timeout=2))['vms'][0]['error']))"
        )
        result = subprocess.run(["runuser", "-u", "nobody", "--", shutil.which("python3", path="/usr/bin"), "-c", code,
                                 os.path.join(REPO_ROOT, ".cache", "collections") + ":" + site_packages, qmp],
                                capture_output=True, text=True, check=True)
        assert json.loads(result.stdout) == (
            f"VM perm: permission denied connecting to QMP socket {qmp}. "
            "Run as root (become: true) or as the user that owns the socket")
    finally:
        shutil.rmtree(sockdir)


def test_query_selects_and_bad_query_fails_before_touching(qemu, tmp_path):
    unique = f"q{os.getpid()}"
    for label, extra in (("ready", ()), ("held", ("-S",))):
        qmp = str(tmp_path / f"{label}.qmp")
        qemu.start(*extra, "-qmp", f"unix:{qmp},server=on,wait=off", "-name", f"{unique}-{label}", wait_for=qmp)
    selected = vm_status(Selection(names=[f"{unique}-ready", f"{unique}-held"], query="[?cpr.ready]"), FactsOptions(timeout=5))["vms"]
    assert [f["name"] for f in selected] == [f"{unique}-ready"]
    with pytest.raises(SelectionError, match="not a valid JMESPath"):
        vm_status(Selection(query="[?cpr.ready"), FactsOptions(timeout=5))["vms"]
    with pytest.raises(SelectionError, match="must return a list of VMs"):
        vm_status(Selection(names=[f"{unique}-ready"], query="[].name"), FactsOptions(timeout=5))["vms"]
