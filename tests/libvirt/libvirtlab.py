"""A real libvirt daemon for the tests, with TCG domains built from the test bed's guest.

PID 1 is not systemd on the test machines, so the daemon is started here: ``libvirtd`` in a mount
namespace of its own, where ``/run/libvirt`` (its sockets, pid files and the status of running
domains) and ``/etc/libvirt`` (its configuration, domain definitions and autostart links) are
directories of this lab. Several labs (other test runs on the same machine) therefore never see each
other's domains or autostart links. So is ``/var/lib/libvirt/qemu/save``, where libvirt writes managed
save images: the lab's ``save`` directory, optionally a small tmpfs of its own (to fill it up). The
collection reads the images through the daemon's own view (``/proc/<pid>/root``), as it does on any
host. ``/var/lib/libvirt`` otherwise stays the host's, and domain names carry the lab's tag.

Library (stdlib and libvirt-python)::

    lab = LibvirtLab.start(workdir)
    dom = lab.define_domain("web1")           # persistent, running, its guest agent answering
    lab.marker("web1"); lab.agent("web1", "guest-ping")
    lab.restart()                             # the daemon, not the domains
    lab.stop()                                # every domain destroyed and undefined, the daemon ended

The guest is the test bed's (tests/testbed/build-guest.sh): a random marker in /run/marker/marker,
a counter, and qemu-ga on the org.qemu.guest_agent.0 port, here a libvirt ``<channel>``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "testbed"))

import testbed  # noqa: E402  pylint: disable=wrong-import-position

LIBVIRTD = shutil.which("libvirtd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/libvirtd"
SAVE_DIR = Path("/var/lib/libvirt/qemu/save")
# The daemon's settings for the lab: QEMU's output to files (no virtlogd to run beside it), no network
# started at boot, managed save images in libvirt 11.2's sparse format (mapped-ram: every page at a fixed
# place, unused RAM not written), and no cgroups of its own (on these machines, with no systemd and cgroup v1
# controllers, a daemon started again fails to put a new QEMU into the cgroups the first one made: "Invalid value
# for 'tasks'"). Everything else is Debian's default (QEMU runs as libvirt-qemu, DAC labels).
QEMU_CONF = """
stdio_handler = "file"
save_image_format = "sparse"
cgroup_controllers = [ ]
"""


class LabError(RuntimeError):
    """The lab's daemon or a domain did not do what was asked."""


def available() -> Optional[str]:
    """Why a lab cannot run here (None when it can): root, libvirtd, libvirt-python, the built guest."""
    if os.geteuid() != 0:
        return "the libvirt lab runs libvirtd as root"
    if not os.path.exists(LIBVIRTD):
        return "libvirtd is not installed (scripts/install-host-deps.sh installs it)"
    try:
        import libvirt  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return "libvirt-python is not installed (scripts/install-host-deps.sh installs it)"
    try:
        testbed.guest_artifacts()
    except testbed.TestbedError as exc:
        return str(exc)
    return None


def _wait(check, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not within {timeout} s")
        time.sleep(interval)


class LibvirtLab:
    """One libvirtd of the tests, in its own mount namespace, with its domains."""

    def __init__(self, workdir: Path, save_fs_mib: Optional[int] = None) -> None:
        self.workdir = workdir
        self.save_fs_mib = save_fs_mib
        self.save_dir = workdir / "save"
        self.tag = secrets.token_hex(3)
        self.run_dir = workdir / "run"
        self.etc_dir = workdir / "etc"
        self.guest_dir = workdir / "guest"
        self.process: Optional[subprocess.Popen] = None
        self.conn = None
        self.domains: List[str] = []

    # --- the daemon -------------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, save_fs_mib: Optional[int] = None) -> "LibvirtLab":
        """A lab in workdir; with save_fs_mib, libvirt's image directory is a tmpfs of that size."""
        lab = cls(Path(workdir).resolve(), save_fs_mib)
        lab._prepare()
        lab.start_daemon()
        return lab

    @property
    def socket(self) -> Path:
        return self.run_dir / "libvirt-sock"

    @property
    def uri(self) -> str:
        """The URI the collection's modules take (option uri) to reach this daemon."""
        return f"qemu:///system?socket={self.socket}"

    @property
    def log(self) -> Path:
        return self.workdir / "libvirtd.log"

    def _prepare(self) -> None:
        # libvirt-qemu must reach the guest's kernel and initrd, and the serial logs.
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o711)
        self.run_dir.mkdir(exist_ok=True)
        shutil.copytree("/etc/libvirt", self.etc_dir, symlinks=True, dirs_exist_ok=True)
        for autostart in self.etc_dir.glob("qemu/networks/autostart/*"):
            autostart.unlink()
        with open(self.etc_dir / "qemu.conf", "a", encoding="utf-8") as conf:
            conf.write(QEMU_CONF)
        self.guest_dir.mkdir(exist_ok=True)
        os.chmod(self.guest_dir, 0o755)
        kernel, initrd, cmdline = testbed.guest_artifacts()
        for source in (kernel, initrd):
            shutil.copy(source, self.guest_dir / source.name)
            os.chmod(self.guest_dir / source.name, 0o644)
        (self.guest_dir / "cmdline").write_text(cmdline)
        Path("/run/libvirt").mkdir(exist_ok=True)
        self.save_dir.mkdir(exist_ok=True)
        if self.save_fs_mib:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.save_fs_mib}m,mode=0755", "hcpr-libvirt-save",
                            str(self.save_dir)], check=True)
        owner = Path(SAVE_DIR).stat()
        os.chown(self.save_dir, owner.st_uid, owner.st_gid)

    def start_daemon(self) -> None:
        """Start libvirtd (again) in its own mount namespace and connect to it."""
        import libvirt  # pylint: disable=import-outside-toplevel

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.socket.unlink(missing_ok=True)
        script = ('mount --bind "$1" /run/libvirt && mount --bind "$2" /etc/libvirt && mount --bind "$3" "$4" && '
                  'exec "$5" --pid-file "$6"')
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh",
                str(self.run_dir), str(self.etc_dir), str(self.save_dir), str(SAVE_DIR), LIBVIRTD,
                str(self.workdir / "libvirtd.pid")]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

        def connected():
            if self.process.poll() is not None:
                raise LabError(f"libvirtd exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            if not self.socket.exists():
                return None
            try:
                return libvirt.open(self.uri)
            except libvirt.libvirtError:
                return None

        self.conn = _wait(connected, 60, "libvirtd to answer")

    @property
    def daemon_pid(self) -> Optional[int]:
        return self.process.pid if self.process and self.process.poll() is None else None

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        """End libvirtd; its running domains go on (libvirt picks them up again when it starts)."""
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self.conn = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon (SIGKILL: as a crash or an OOM kill would) and start it again."""
        self.stop_daemon(sig)
        self.start_daemon()

    def start_as_at_boot(self) -> None:
        """Start the daemon again as it starts at boot: libvirt autostarts domains once per boot, and knows it
        from /run/libvirt/qemu/autostarted (a tmpfs at boot)."""
        self.stop_daemon()
        (self.run_dir / "qemu" / "autostarted").unlink(missing_ok=True)
        self.start_daemon()

    def stop(self) -> None:
        """Destroy and undefine every domain of the lab, remove their images, end the daemon."""
        if self.conn is None and self.process is not None:
            try:
                self.start_daemon()
            except LabError:
                pass
        for name in list(self.domains):
            self.remove_domain(name)
        self.stop_daemon()
        # Whatever QEMU the daemon left behind (it was killed mid-way, say) ends too.
        testbed.kill_all(self.workdir)
        if self.save_fs_mib:
            subprocess.run(["umount", "--lazy", str(self.save_dir)], check=False)

    def image(self, name: str) -> Path:
        """A domain's managed save image, as the daemon writes it (this lab's save directory)."""
        return self.save_dir / f"{name}.save"

    # --- domains ----------------------------------------------------------------------------------

    def name(self, short: str) -> str:
        """A domain name unique to this lab: managed save images of every lab share one directory."""
        return f"hcpr-{self.tag}-{short}"

    def domain_xml(self, name: str, mem_mib: int = 192, agent: bool = True) -> str:
        cmdline = (self.guest_dir / "cmdline").read_text().strip()
        channel = ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
                   if agent else "")
        return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{mem_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{self.guest_dir / 'vmlinuz'}</kernel>
    <initrd>{self.guest_dir / 'initrd.img'}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <!-- Without <acpi/> libvirt passes acpi=off, and the guest then spins a core instead of idling. -->
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model><feature policy='require' name='rdrand'/></cpu>
  <on_reboot>destroy</on_reboot>
  <devices>
    <serial type='file'><source path='{self.workdir / (name + ".serial")}' append='on'/><target port='0'/></serial>
    {channel}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""

    def define_domain(self, short: str, start: bool = True, wait_agent: bool = True, **xml: Any):
        """A persistent domain of this lab, started (and its guest agent answering) unless start is False."""
        name = self.name(short)
        dom = self.conn.defineXML(self.domain_xml(name, **xml))
        self.domains.append(name)
        if start:
            dom.create()
            if wait_agent:
                self.wait_agent(name)
        return dom

    def domain(self, name: str):
        return self.conn.lookupByName(name)

    def remove_domain(self, name: str) -> None:
        import libvirt  # pylint: disable=import-outside-toplevel

        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        try:
            dom.destroy()
        except libvirt.libvirtError:
            if dom.isActive():
                raise
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)

    def state(self, name: str) -> str:
        """running, paused, shutoff..."""
        names = {1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended"}
        return names.get(self.domain(name).state()[0], "unknown")

    def qemu_pid(self, name: str) -> Optional[int]:
        """The pid of the domain's QEMU, from the daemon's pid file."""
        try:
            return int((self.run_dir / "qemu" / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    # --- its guest agent, through libvirt -----------------------------------------------------------

    def agent(self, name: str, command: str, arguments: Optional[Dict[str, Any]] = None, timeout: int = 10) -> Any:
        import libvirt_qemu  # pylint: disable=import-outside-toplevel

        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        reply = libvirt_qemu.qemuAgentCommand(self.domain(name), json.dumps(request), timeout, 0)
        return json.loads(reply)["return"]

    def agent_answers(self, name: str, timeout: int = 2) -> bool:
        import libvirt  # pylint: disable=import-outside-toplevel

        try:
            return self.agent(name, "guest-ping", timeout=timeout) == {}
        except libvirt.libvirtError:
            return False

    def wait_agent(self, name: str, timeout: float = 180) -> None:
        _wait(lambda: self.agent_answers(name), timeout, f"the guest agent of {name}", 0.5)

    def guest_exec(self, name: str, argv: List[str], timeout: float = 30) -> str:
        started = self.agent(name, "guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
        status = _wait(lambda: (s := self.agent(name, "guest-exec-status", {"pid": started["pid"]}))["exited"] and s,
                       timeout, f"{argv} in {name}", 0.02)
        if status.get("exitcode", 0) != 0:
            raise LabError(f"{name}: {argv} exited {status.get('exitcode')}")
        return base64.b64decode(status.get("out-data", "")).decode(errors="replace")

    def marker(self, name: str) -> str:
        """The random marker the guest wrote into its RAM (tmpfs) at boot."""
        return self.guest_exec(name, ["cat", "/run/marker/marker"]).strip()

    def counter(self, name: str) -> int:
        return int(self.guest_exec(name, ["cat", "/run/marker/counter"]))
