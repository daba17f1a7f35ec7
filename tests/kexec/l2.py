"""L2 guests of the kexec scenario, run inside an L1 test hypervisor.

Runs with the L1's /usr/bin/python3 (stdlib and qemu.qmp only). Two kinds:

pattern  firmware-only: QEMU boots l2/pattern.elf (multiboot), which fills
         guest RAM from 4 MiB up with a xorshift32 sequence seeded from the
         TSC (it exists in guest RAM only, in no file), then counts 100 Hz
         timer ticks in a header at 2 MiB. Read back with QMP pmemsave.
linux    the test-bed guest (tests/testbed): a random marker in guest RAM and
         qemu-ga, so the role can suspend it through its agent.

Each guest's RAM (RAM kind) is a memory-backend-file with share=on on
/srv/pmem (pmem: ext4 on legacy persistent memory, survives kexec, so it can
stay in place), or on /dev/shm (shm: tmpfs, does not survive: the negative
case), or private anonymous memory (private: survives only when copied into
the state file). Everything a guest needs after the host kexecs
(sockets, logs, records) is in --dir, which must be on persistent storage.

    l2.py up --dir /srv/pmem/vms --guest g0:pattern:pmem:running \\
             --guest g1:pattern:pmem:paused --guest lx0:linux:pmem:running
    l2.py check --dir /srv/pmem/vms      # JSON report, exit 1 on any mismatch
    l2.py down --dir /srv/pmem/vms

`up` records per guest NAME.lab.json (runstate, seed, SHA-256 of the
pattern, ticks, marker); `check` compares the guest as it is now with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

QEMU = "/usr/bin/qemu-system-x86_64"
# Where build-l1.sh puts the pattern program and the test-bed guest in the L1.
L1_LIB = Path(os.environ.get("KEXEC_L1_LIB", "/usr/lib/kexec-l1"))
PATTERN_ELF = L1_LIB / "pattern.elf"
LINUX_GUEST = L1_LIB / "guest"
HEADER_ADDR = 0x200000
HEADER_MAGIC = b"CPRPATT1"
AGENT_PORT = "org.qemu.guest_agent.0"
KINDS = ("pattern", "linux")
RAMS = ("pmem", "shm", "private")
STATES = ("running", "paused")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class LabError(RuntimeError):
    """Anything that keeps a guest from being what was asked."""


# --- QMP / QGA ------------------------------------------------------------------

async def _qmp(sock: Path, *cmds: tuple[str, dict[str, Any]], timeout: float = 30.0) -> list[Any]:
    client = QMPClient(sock.name)
    try:
        await asyncio.wait_for(client.connect(str(sock)), timeout)
        return [await asyncio.wait_for(client.execute(c, a), timeout) for c, a in cmds]
    finally:
        with contextlib.suppress(QMPError, OSError, EOFError):
            await client.disconnect()


def qmp(sock: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """One QMP command."""
    return asyncio.run(_qmp(sock, (cmd, args or {}), timeout=timeout))[0]


async def _agent(sock: Path, cmd: str, args: dict[str, Any], timeout: float) -> Any:
    client = QMPClient(sock.name)
    client.await_greeting = False
    client.negotiate = False
    try:
        await asyncio.wait_for(client.connect(str(sock)), timeout)
        for _attempt in range(8):
            token = secrets.randbelow(2**31)
            if await asyncio.wait_for(client.execute("guest-sync", {"id": token}), timeout) == token:
                break
        return await asyncio.wait_for(client.execute(cmd, args), timeout)
    finally:
        with contextlib.suppress(QMPError, OSError, EOFError):
            await client.disconnect()


def agent(sock: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """One guest agent command."""
    return asyncio.run(_agent(sock, cmd, args or {}, timeout))


def guest_cat(sock: Path, path: str, timeout: float = 20.0) -> str:
    """cat a file in a Linux guest through guest-exec."""
    import base64
    pid = agent(sock, "guest-exec", {"path": "/bin/cat", "arg": [path], "capture-output": True}, timeout)["pid"]
    deadline = time.monotonic() + timeout
    while True:
        status = agent(sock, "guest-exec-status", {"pid": pid}, timeout)
        if status["exited"]:
            return base64.b64decode(status.get("out-data", "")).decode().strip()
        if time.monotonic() > deadline:
            raise LabError(f"guest-exec cat {path} did not finish")
        time.sleep(0.1)


# --- one guest --------------------------------------------------------------------

def paths(workdir: Path, name: str) -> dict[str, Path]:
    return {"qmp": workdir / f"{name}.qmp", "qga": workdir / f"{name}.qga",
            "log": workdir / f"{name}.log", "serial": workdir / f"{name}.serial",
            "record": workdir / f"{name}.lab.json", "dump": Path("/tmp") / f"kexec-l2-{name}.dump"}


def mem_path(workdir: Path, name: str, ram: str) -> Path | None:
    if ram == "pmem":
        return workdir / f"{name}.ram"
    if ram == "shm":
        return Path(f"/dev/shm/kexec-l2-{name}.ram")
    return None


def argv_for(workdir: Path, name: str, kind: str, ram: str, mem_mib: int) -> list[str]:
    """The guest's QEMU command line (absolute paths only, re-runnable as is)."""
    p = paths(workdir, name)
    ram_file = mem_path(workdir, name, ram)
    argv = [QEMU, "-name", f"guest={name},debug-threads=on",
            # A small translation cache: the L1 host has little RAM to spare.
            "-accel", "tcg,tb-size=32", "-m", str(mem_mib)]
    if ram_file is None:
        # Private anonymous RAM: it survives only when copied into the state file.
        argv += ["-machine", "q35"]
    else:
        argv += ["-machine", "q35,memory-backend=ram0",
                 "-object", f"memory-backend-file,id=ram0,size={mem_mib}M,mem-path={ram_file},share=on"]
    argv += ["-nodefaults", "-display", "none", "-no-reboot", "-qmp", f"unix:{p['qmp']},server=on,wait=off"]
    if kind == "pattern":
        argv += ["-cpu", "qemu64", "-kernel", str(PATTERN_ELF)]
    else:
        cmdline = (LINUX_GUEST / "cmdline").read_text().strip()
        argv += ["-cpu", "qemu64,+rdrand",
                 "-chardev", f"file,id=serial0,path={p['serial']},append=on", "-serial", "chardev:serial0",
                 "-chardev", f"socket,id=qga0,path={p['qga']},server=on,wait=off",
                 "-device", "virtio-serial-pci,id=vser0",
                 "-device", f"virtserialport,bus=vser0.0,chardev=qga0,name={AGENT_PORT}",
                 "-global", "ICH9-LPC.disable_s3=0",
                 "-kernel", str(LINUX_GUEST / "vmlinuz"), "-initrd", str(LINUX_GUEST / "initrd.img"),
                 "-append", cmdline]
    return argv


def header(sock: Path, dump: Path) -> dict[str, int]:
    """The pattern program's header, read through pmemsave."""
    qmp(sock, "pmemsave", {"val": HEADER_ADDR, "size": 32, "filename": str(dump)})
    raw = dump.read_bytes()
    dump.unlink(missing_ok=True)
    magic, seed, base, words, ready, ticks = struct.unpack("<8sIIIII", raw[:28])
    return {"magic_ok": magic == HEADER_MAGIC, "seed": seed, "base": base, "words": words,
            "ready": ready, "ticks": ticks}


def pattern_digest(sock: Path, dump: Path, hdr: dict[str, int]) -> dict[str, Any]:
    """SHA-256 of the pattern as the guest sees it, and whether its start is the seed's sequence."""
    qmp(sock, "pmemsave", {"val": hdr["base"], "size": hdr["words"] * 4, "filename": str(dump)}, timeout=300)
    digest = hashlib.sha256()
    x, sequence_ok = hdr["seed"], True
    with open(dump, "rb") as handle:
        first = handle.read(16384)
        for i in range(len(first) // 4):
            x ^= (x << 13) & 0xFFFFFFFF
            x ^= x >> 17
            x ^= (x << 5) & 0xFFFFFFFF
            if struct.unpack_from("<I", first, i * 4)[0] != x:
                sequence_ok = False
                break
        digest.update(first)
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    size = dump.stat().st_size
    dump.unlink(missing_ok=True)
    return {"sha256": digest.hexdigest(), "bytes": size, "sequence_ok": sequence_ok}


def pid_of(sock: Path) -> int | None:
    """The QEMU serving this QMP socket."""
    wanted = f"unix:{sock},"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0].decode(errors="replace")).startswith("qemu-system-") and \
                any(a.decode(errors="replace").startswith(wanted) for a in argv):
            return int(entry.name)
    return None


def wait_for(what: str, probe, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (TimeoutError, QMPError, OSError, LabError, KeyError) as exc:
            last = exc
        time.sleep(interval)
    raise LabError(f"{what}: not ready after {timeout:.0f} s ({last})")


def snapshot(workdir: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """What the guest is now: runstate, pattern or marker, ticks."""
    p = paths(workdir, rec["name"])
    now: dict[str, Any] = {"pid": pid_of(p["qmp"])}
    if now["pid"] is None:
        return now
    now["runstate"] = qmp(p["qmp"], "query-status")["status"]
    if rec["kind"] == "pattern":
        hdr = header(p["qmp"], p["dump"])
        now.update(seed=hdr["seed"], ticks=hdr["ticks"], ready=hdr["ready"], magic_ok=hdr["magic_ok"])
        now.update(pattern_digest(p["qmp"], p["dump"], hdr))
    elif now["runstate"] == "running":
        now["marker"] = guest_cat(p["qga"], "/run/marker/marker")
        now["counter"] = int(guest_cat(p["qga"], "/run/marker/counter"))
    return now


# --- commands ---------------------------------------------------------------------

def parse_spec(spec: str) -> dict[str, Any]:
    parts = spec.split(":")
    if len(parts) not in (4, 5):
        raise LabError(f"guest {spec!r}: use NAME:KIND:RAM:STATE[:MiB]")
    name, kind, ram, state = parts[:4]
    mem = int(parts[4]) if len(parts) == 5 else (64 if kind == "pattern" else 256)
    if not _NAME_RE.match(name) or kind not in KINDS or ram not in RAMS or state not in STATES:
        raise LabError(f"guest {spec!r}: NAME:{'|'.join(KINDS)}:{'|'.join(RAMS)}:{'|'.join(STATES)}[:MiB]")
    return {"name": name, "kind": kind, "ram": ram, "state": state, "mem_mib": mem}


def guest_ready(workdir: Path, spec: dict[str, Any]) -> bool:
    """Whether a guest finished booting: pattern written, or marker and agent there."""
    p = paths(workdir, spec["name"])
    if pid_of(p["qmp"]) is None:
        raise LabError(f"{spec['name']}: QEMU exited: {p['log'].read_text(errors='replace')[-2000:]}")
    if spec["kind"] == "pattern":
        return p["qmp"].exists() and header(p["qmp"], p["dump"])["ready"] == 1
    return p["qga"].exists() and agent(p["qga"], "guest-ping", timeout=2) == {} and \
        len(guest_cat(p["qga"], "/run/marker/marker", timeout=10)) == 32


def cmd_up(workdir: Path, specs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for spec in specs:
        p = paths(workdir, spec["name"])
        if pid_of(p["qmp"]) is not None:
            raise LabError(f"{spec['name']}: already running")
        argv = argv_for(workdir, spec["name"], spec["kind"], spec["ram"], spec["mem_mib"])
        with open(p["log"], "ab") as log:
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        spec["argv"] = argv
    records = []
    # Pattern guests first (seconds), Linux guests last (minutes when nested).
    for spec in sorted(specs, key=lambda s: s["kind"] != "pattern"):
        p = paths(workdir, spec["name"])
        t0 = time.monotonic()
        wait_for(spec["name"], functools.partial(guest_ready, workdir, spec), timeout,
                 interval=0.5 if spec["kind"] == "pattern" else 2)
        if spec["state"] == "paused":
            qmp(p["qmp"], "stop")
        rec = {**spec, "boot_seconds": round(time.monotonic() - t0, 1)}
        rec["before"] = snapshot(workdir, rec)
        if rec["before"].get("runstate") != spec["state"]:
            raise LabError(f"{spec['name']}: runstate {rec['before'].get('runstate')}, wanted {spec['state']}")
        tmp = p["record"].with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=2) + "\n")
        os.replace(tmp, p["record"])
        records.append({k: rec[k] for k in ("name", "kind", "ram", "state", "mem_mib", "boot_seconds")}
                       | {"before": rec["before"]})
    print(f"l2: {len(specs)} guest(s) up in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return records


def ticks_after(workdir: Path, name: str, ticks: int, timeout: float) -> int:
    """The guest's tick count once it is past ticks (a running guest's timer goes on), or after timeout."""
    p = paths(workdir, name)
    deadline = time.monotonic() + timeout
    while (later := header(p["qmp"], p["dump"])["ticks"]) <= ticks and time.monotonic() < deadline:
        time.sleep(0.05)
    return later


def load_records(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted(workdir.glob("*.lab.json"))]


def cmd_check(workdir: Path) -> tuple[bool, list[dict[str, Any]]]:
    results = []
    for rec in load_records(workdir):
        before = rec["before"]
        now = snapshot(workdir, rec)
        problems = []
        if now.get("pid") is None:
            problems.append("no QEMU serves its QMP socket")
        else:
            if now["runstate"] != rec["state"]:
                problems.append(f"runstate {now['runstate']}, was {rec['state']}")
            if rec["kind"] == "pattern":
                if not now.get("magic_ok") or now.get("seed") != before["seed"]:
                    problems.append(f"header changed: seed {now.get('seed')} was {before['seed']}")
                if now.get("sha256") != before["sha256"] or now.get("bytes") != before["bytes"]:
                    problems.append(f"RAM pattern differs: sha256 {now.get('sha256')} was {before['sha256']}")
                if not now.get("sequence_ok"):
                    problems.append("RAM pattern is not the seed's xorshift32 sequence")
                if now.get("ticks", 0) < before["ticks"]:
                    problems.append(f"tick counter went back: {now.get('ticks')} < {before['ticks']}")
                if rec["state"] == "running":
                    later = ticks_after(workdir, rec["name"], now.get("ticks", 0), 5.0)
                    now["ticks_later"] = later
                    if later <= now.get("ticks", 0):
                        problems.append("running, but its timer does not tick")
            elif now["runstate"] == "running":
                if now.get("marker") != before.get("marker"):
                    problems.append(f"marker {now.get('marker')}, was {before.get('marker')}")
                if now.get("counter", 0) < before.get("counter", 0):
                    problems.append("guest counter went back")
        results.append({"name": rec["name"], "kind": rec["kind"], "ram": rec["ram"], "state": rec["state"],
                        "ok": not problems, "problems": problems, "before": before, "now": now})
    return all(r["ok"] for r in results), results


def cmd_down(workdir: Path, names: list[str] | None = None) -> list[int]:
    killed = []
    for rec in load_records(workdir):
        if names and rec["name"] not in names:
            continue
        p = paths(workdir, rec["name"])
        pid = pid_of(p["qmp"])
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        for path in (p["qmp"], p["qga"], p["record"], mem_path(workdir, rec["name"], rec["ram"])):
            if path is not None:
                path.unlink(missing_ok=True)
    # Gone, not just signalled: a guest of the same name may be started next.
    wait_for("the killed guests to exit", lambda: not any(running(pid) for pid in killed), 30, interval=0.05)
    return killed


def running(pid: int) -> bool:
    """Whether a process has not exited yet (a zombie has an empty command line)."""
    path = Path(f"/proc/{pid}/cmdline")
    return path.exists() and bool(path.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument("--guest", action="append", required=True, help="NAME:KIND:RAM:STATE[:MiB]")
    up.add_argument("--timeout", type=float, default=900.0)
    down = sub.add_parser("down")
    down.add_argument("--name", action="append", help="only these guests (default: all)")
    for cmd in (up, sub.add_parser("check"), down, sub.add_parser("list")):
        cmd.add_argument("--dir", type=Path, default=Path("/srv/pmem/vms"))
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(json.dumps(cmd_up(args.dir, [parse_spec(s) for s in args.guest], args.timeout), indent=2))
        elif args.command == "check":
            ok, results = cmd_check(args.dir)
            print(json.dumps({"ok": ok, "guests": results}, indent=2))
            return 0 if ok else 1
        elif args.command == "list":
            print(json.dumps(load_records(args.dir), indent=2))
        else:
            print(json.dumps({"killed": cmd_down(args.dir, args.name)}))
    except (LabError, QMPError, OSError) as exc:
        print(f"l2.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
