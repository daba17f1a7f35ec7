# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""libvirt's domains as the engine sees them: the connection, a domain's facts, its managed save image.

libvirt owns the monitor of every QEMU it runs, so its domains are saved and
brought back through libvirt's own API (libvirt-python), never over QMP: a
managed save (``virDomainManagedSave``) writes the domain's whole state to
``<save dir>/<name>.save``, and starting the domain (``virDomainCreate``)
loads it and removes it. The image's header (libvirt's ``virQEMUSaveHeader``)
tells whether the image is complete, its format and whether the domain ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional
from xml.etree import ElementTree

from ansible_collections.hypervisor.cpr.plugins.module_utils import _checksum as checksum
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import (
    CommandFailedError,
    ConnectionFailedError,
    MissingDependencyError,
)
from ansible_collections.hypervisor.cpr.plugins.module_utils._socket import peer_pid

DEFAULT_URI = "qemu:///system"
AGENT_PORT = "org.qemu.guest_agent.0"
# virDomainState: the states a managed save takes and gives back, and the rest by name.
STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed",
          7: "pmsuspended"}
SAVABLE_STATES = ("running", "paused")
# libvirt's save image header (src/qemu/qemu_saveimage.h): magic, then version, data_len, was_running, format.
_HEADER = struct.Struct("<16sIIII")
MAGIC_COMPLETE = b"LibvirtQemudSave"
MAGIC_PARTIAL = b"LibvirtQemudPart"
# libvirt 11.2: the sparse (mapped-ram) image format, and several channels writing one image.
SPARSE_SINCE = 11_002_000
IMAGE_FORMATS = {0: "raw", 1: "gzip", 2: "bzip2", 3: "xz", 4: "lzop", 5: "zstd", 6: "sparse"}


def import_libvirt() -> Any:
    """The libvirt-python module, or an error that says how to install it."""
    try:
        import libvirt  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise MissingDependencyError(
            "the Python bindings of libvirt (libvirt-python) are not installed for this Python",
            hint="install them with pip (pip install libvirt-python; it builds against the host's libvirt-dev, "
            "pkg-config and a C compiler), or set kernel_update_install_deps=true for the role") from None
    # libvirt prints every error on stderr by default; the engine reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def save_dir(uri: str) -> str:
    """Where libvirt's QEMU driver keeps managed save images for this connection, as its daemon sees the files."""
    if "/session" in uri.split("?")[0]:
        config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        return os.path.join(config, "libvirt", "qemu", "save")
    return "/var/lib/libvirt/qemu/save"


def daemon_socket(uri: str) -> Optional[str]:
    """The unix socket a local URI reaches libvirt's daemon on (virtqemud's, else libvirtd's)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.netloc or "+" in parsed.scheme and not parsed.scheme.endswith("+unix"):
        return None
    given = urllib.parse.parse_qs(parsed.query).get("socket")
    if given:
        return given[0]
    base = (os.path.join(os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}", "libvirt")
            if parsed.path.startswith("/session") else "/run/libvirt")
    for name in ("virtqemud-sock", "libvirt-sock"):
        if os.path.exists(os.path.join(base, name)):
            return os.path.join(base, name)
    return None


def daemon_root(uri: str) -> str:
    """The root directory of the daemon's own view of the files (/proc/<pid>/root), so that the images it writes
    are read as it wrote them even when it runs in a mount namespace of its own; "" when it is ours."""
    path = daemon_socket(uri)
    if path is None:
        return ""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(path)
        except OSError:
            return ""
        pid = peer_pid(sock)
    if pid is None or os.path.realpath(f"/proc/{pid}/root") == "/" and _same_mounts(pid):
        return ""
    return f"/proc/{pid}/root"


def _same_mounts(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return True


class Libvirt:
    """One connection to a libvirt daemon, opened again when the daemon restarted under it."""

    def __init__(self, uri: str = DEFAULT_URI) -> None:
        self.uri = uri
        self.module = import_libvirt()
        self._conn: Any = None
        self._root: Optional[str] = None
        # Domains are saved from several threads at once: one of them opens the connection again for all.
        self._reconnecting = threading.Lock()

    def local(self, path: str) -> str:
        """A path of the daemon's (an image) as this process reaches it: the same unless the daemon runs in a
        mount namespace of its own."""
        if self._root is None:
            self._root = daemon_root(self.uri)
        return self._root + path

    @property
    def conn(self) -> Any:
        if self._conn is None:
            try:
                self._conn = self.module.open(self.uri)
            except self.module.libvirtError as exc:
                raise ConnectionFailedError(
                    f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}",
                    hint="start libvirt's daemon (libvirtd or virtqemud), or give its URI in uri") from None
        return self._conn

    def alive(self) -> bool:
        """Whether the connection still reaches a daemon (False once the daemon ended or restarted)."""
        try:
            return self._conn is not None and self._conn.isAlive() == 1
        except self.module.libvirtError:
            return False

    def reconnect(self, timeout: float) -> None:
        """Open the connection again unless it is alive (another thread opened it again already), waiting up to
        timeout seconds for the daemon to answer."""
        with self._reconnecting:
            if self.alive():
                return
            self._conn, self._root = None, None
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self.conn.getLibVersion()
                    return
                except ConnectionFailedError:
                    self._conn = None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except self.module.libvirtError:
                pass
            self._conn = None

    def __enter__(self) -> "Libvirt":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def version(self) -> str:
        number = self.conn.getLibVersion()
        return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"

    def domain(self, name: str) -> Any:
        try:
            return self.conn.lookupByName(name)
        except self.module.libvirtError as exc:
            raise CommandFailedError(f"libvirt has no domain of this name ({exc.get_error_message()})", name,
                                     hint="it was undefined; define it again (virsh define) before a restore") from None

    def call(self, name: str, what: str, action: Callable[[], Any]) -> Any:
        """Run one libvirt call for a domain; its error becomes one that names the domain, in libvirt's words."""
        try:
            return action()
        except self.module.libvirtError as exc:
            raise CommandFailedError(f"libvirt failed to {what}: {exc.get_error_message()}", name) from None

    def domains(self) -> List["Domain"]:
        """Every domain libvirt knows (running or not), sorted by name."""
        return sorted((domain_facts(self, dom) for dom in self.conn.listAllDomains(0)), key=lambda d: d.name)

    def monitor(self, name: str, what: str, command: str, **arguments: Any) -> Any:
        """One QMP command to the domain's QEMU through libvirt (libvirt marks the domain tainted: custom-monitor)."""
        import libvirt_qemu  # pylint: disable=import-outside-toplevel

        request = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})})
        reply = self.call(name, what, lambda: libvirt_qemu.qemuMonitorCommand(self.domain(name), request, 0))
        return json.loads(reply).get("return")

    def agent_answers(self, name: str, timeout: int = 5) -> Optional[str]:
        """None when the domain's guest agent answers a guest-ping through libvirt, else why it does not."""
        import libvirt_qemu  # pylint: disable=import-outside-toplevel

        try:
            reply = libvirt_qemu.qemuAgentCommand(self.domain(name), json.dumps({"execute": "guest-ping"}), timeout, 0)
        except self.module.libvirtError as exc:
            return exc.get_error_message()
        return None if json.loads(reply).get("return") == {} else f"unexpected reply {reply}"


@dataclass
class Image:
    """A managed save image: what its header says, and its size."""

    path: str
    exists: bool = False
    complete: bool = False
    image_format: Optional[str] = None
    was_running: Optional[bool] = None
    size: int = 0
    allocated: int = 0


def read_image(path: str) -> Image:
    """What a managed save image is, from its header; a missing or unreadable one is not complete."""
    image = Image(path)
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            header = handle.read(_HEADER.size)
    except OSError:
        return image
    image.exists, image.size, image.allocated = True, st.st_size, st.st_blocks * 512
    if len(header) == _HEADER.size:
        magic, _version, _data_len, was_running, image_format = _HEADER.unpack(header)
        image.complete = magic == MAGIC_COMPLETE
        image.was_running = bool(was_running) if magic in (MAGIC_COMPLETE, MAGIC_PARTIAL) else None
        image.image_format = IMAGE_FORMATS.get(image_format, str(image_format)) if image.complete else None
    return image


def image_digests(path: str, chunk: int, algorithm: str) -> List[str]:
    """The checksum of an image per chunk (holes not read), so that a damaged one is never loaded."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return checksum.digests(descriptor, os.fstat(descriptor).st_size, chunk, algorithm)
    finally:
        os.close(descriptor)


def image_sha256(path: str) -> str:
    """The SHA-256 of a whole image, as a save by an earlier version recorded it."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass
class Domain:
    """One libvirt domain's facts."""

    name: str
    uuid: str
    state: str
    reason: int
    persistent: bool
    autostart: bool
    managed_save: bool
    memory_bytes: int
    agent_channel: bool
    image: Optional[Dict[str, Any]] = None

    @property
    def problem(self) -> Optional[str]:
        """Why this domain cannot be saved now, or None."""
        if self.state not in SAVABLE_STATES:
            return f"it is {self.state}: only a running or paused domain is saved"
        if not self.persistent:
            return ("it is transient, and libvirt makes a managed save only of a persistent domain: define it "
                    "(virsh dumpxml NAME > NAME.xml; virsh define NAME.xml), or shut it down before the reboot")
        if self.managed_save:
            return (f"it runs, yet a managed save image of it exists ({self.image and self.image['path']}): libvirt "
                    "would replace it; remove it (virsh managedsave-remove) once you know it is stale")
        return None

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), problem=self.problem)


def domain_facts(lv: Libvirt, dom: Any) -> Domain:
    """A domain's facts from libvirt (and its image's header when it has one)."""
    state, reason = dom.state()
    root = ElementTree.fromstring(dom.XMLDesc(0))
    agent = any(target.get("name") == AGENT_PORT for target in root.findall("./devices/channel/target"))
    managed = bool(dom.hasManagedSaveImage(0)) if dom.isPersistent() else False
    path = os.path.join(save_dir(lv.uri), f"{dom.name()}.save")
    return Domain(name=dom.name(), uuid=dom.UUIDString(), state=STATES.get(state, str(state)), reason=reason,
                  persistent=bool(dom.isPersistent()), autostart=bool(dom.autostart()) if dom.isPersistent() else False,
                  managed_save=managed, memory_bytes=dom.maxMemory() * 1024, agent_channel=agent,
                  # The image as the daemon names it, read through the daemon's view of its files.
                  image=dict(asdict(read_image(lv.local(path))), path=path)
                  if managed or os.path.exists(lv.local(path)) else None)


@dataclass
class Record:
    """What a save of one domain recorded in the state directory (``<name>.libvirt``), for its restore."""

    name: str
    uuid: str
    uri: str
    runstate_before: str
    autostart_before: bool
    agent_before: bool
    boot_id: str
    paused_at: float
    # saving: the managed save was asked for and not yet checked; saved: the image is complete and checksummed.
    stage: str = "saving"
    image: str = ""
    image_format: Optional[str] = None
    image_bytes: int = 0
    image_allocated: int = 0
    # The image's checksum per chunk (_checksum), by image_checksum; earlier versions recorded image_sha256 instead.
    image_checksum: Optional[str] = None
    image_chunk_bytes: int = 0
    image_chunks: List[str] = field(default_factory=list)
    image_sha256: Optional[str] = None
    memory_bytes: int = 0
    save_seconds: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def report(self) -> Dict[str, Any]:
        """What a module returns of it: all but the chunks' digests."""
        return {key: value for key, value in self.to_dict().items() if key != "image_chunks"}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Record":
        known = set(cls.__dataclass_fields__)  # pylint: disable=no-member
        return cls(**{k: v for k, v in data.items() if k in known})
