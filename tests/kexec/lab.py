"""Test hypervisors ("L1 hosts") for the kexec scenario, as TCG VMs on this machine.

Each L1 host boots an OLD Debian kernel with a NEWER one in /boot, runs this
machine's own userland (root file system read-only over 9p under a tmpfs
overlay, see build-l1.sh), has legacy persistent memory (memmap=SIZE!OFFSET ->
/dev/pmem0, ext4 on it at /srv/pmem), a state disk (virtio-blk, ext4, at
/var/lib/qemu-cpr) and an SSH server on a loopback port of this machine, with
a throwaway key. Its L2 guests (l2.py) run inside it under TCG with their RAM
on /srv/pmem (or /dev/shm for the negative case).

    lab.py up --workdir /tmp/kexec-lab --hosts 2 \\
        --guest g0:pattern:pmem:running --guest g1:pattern:pmem:paused
    lab.py guests --workdir /tmp/kexec-lab --kernel old --guest g0:pattern:pmem:running
    lab.py ssh --workdir /tmp/kexec-lab h0 -- uname -r
    lab.py check --workdir /tmp/kexec-lab          # every host: kernel, boot id, guests
    lab.py down --workdir /tmp/kexec-lab

`guests` hands a booted lab to its next user (the kexec fault rows, then the kexec-ci
scenario, share one L1 boot): on every host it stops the L2 guests, empties the state
directory, unloads any kexec kernel, kexecs into the asked kernel if the host runs another,
starts the new guests and records the host as it is now (kernel, boot id) for `check`.

`up` writes WORKDIR/inventory.yml (group "hypervisors", SSH to 127.0.0.1 on
each host's port, /usr/bin/python3) and WORKDIR/lab.json (what was booted,
kernels, boot ids, guests, timings). Needs root, QEMU 10, kexec-tools and the
Python environment of scripts/install-host-deps.sh. Stdlib only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build-l1.sh"
CACHE = Path(os.environ.get("HYPERVISOR_CPR_CACHE") or
             Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hypervisor-cpr")
IMAGE = CACHE / "kexec-l1"
QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
# The L1 host runs l2.py from its configuration share (mounted at
# /run/kexec-l1/cfg), not from this checkout: the checkout may lie under /tmp
# or /root, which the L1 host covers with tmpfs mounts of its own.
L2_SOURCE = HERE / "l2.py"
L2_SCRIPT = "/run/kexec-l1/cfg/l2.py"
GUEST_DIR = "/srv/pmem/vms"
STATE_DIR = "/var/lib/qemu-cpr"
# Kernel command line of the L1 hosts: reused as is by `kexec --reuse-cmdline`,
# so the new kernel finds its persistent memory at the same place.
CMDLINE = ("console=ttyS0 panic=-1 no_timer_check mitigations=off i8042.noaux i8042.nokbd "
           "memmap={pmem}!{offset} kexecl1.host={host}")


class LabError(RuntimeError):
    """Anything that keeps the lab from doing what was asked."""


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def versions() -> dict[str, str]:
    out = {}
    for line in (IMAGE / "versions").read_text().splitlines():
        key, _sep, value = line.partition(" ")
        out[key] = value
    return out


# --- ssh --------------------------------------------------------------------------

def ssh_argv(workdir: Path, port: int, control: bool = True) -> list[str]:
    argv = ["ssh", "-q", "-i", str(workdir / "id_ed25519"), "-p", str(port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
            "-o", "BatchMode=yes"]
    if control:
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={workdir}/cm-%p", "-o", "ControlPersist=300"]
    return argv + ["root@127.0.0.1"]


def ssh(workdir: Path, port: int, command: str, timeout: float = 600, check: bool = True,
        control: bool = True) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(ssh_argv(workdir, port, control) + [command], capture_output=True, text=True,
                         timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    if check and run.returncode != 0:
        raise LabError(f"ssh port {port}: {command!r} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    return run


def wait_ssh(workdir: Path, host: dict[str, Any], timeout: float) -> float:
    """Seconds until the host answers over SSH."""
    start = time.monotonic()
    while True:
        if not alive(host):
            raise LabError(f"{host['name']}: QEMU exited.\n{tail(Path(host['serial']))}")
        try:
            if ssh(workdir, host["port"], "true", timeout=30, check=False, control=False).returncode == 0:
                return time.monotonic() - start
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() - start > timeout:
            raise LabError(f"{host['name']}: no SSH after {timeout:.0f} s.\n{tail(Path(host['serial']))}")
        time.sleep(1)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- L1 hosts ---------------------------------------------------------------------

def qemu_argv(workdir: Path, host: dict[str, Any], kernel: str) -> list[str]:
    layer = IMAGE / "layer"
    hdir = Path(host["dir"])
    cmdline = CMDLINE.format(pmem=f"{host['pmem_mib']}M", offset=f"{host['pmem_offset_mib']}M", host=host["name"])

    def share(tag: str, path: Path, extra: str = "") -> list[str]:
        return ["-fsdev", f"local,id={tag},path={path},security_model=none,readonly=on{extra}",
                "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]

    return [QEMU, "-name", f"guest=kexec-l1-{workdir.name}-{host['name']},debug-threads=on",
            "-machine", "q35", "-accel", "tcg", "-cpu", host["cpu"], "-smp", str(host["smp"]),
            "-m", str(host["mem_mib"]), "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(layer / "boot" / f"vmlinuz-{kernel}"),
            "-initrd", str(layer / "boot" / f"initrd.img-{kernel}"),
            "-append", cmdline,
            *share("l0root", Path("/"), ",multidevs=remap"),
            *share("l1layer", layer),
            *share("l1cfg", workdir / "cfg"),
            "-drive", f"file={hdir / 'state.img'},if=virtio,format=raw,cache=writeback",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{host['port']}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            "-chardev", f"file,id=s0,path={host['serial']},append=on", "-serial", "chardev:s0",
            "-qmp", f"unix:{hdir / 'qmp.sock'},server=on,wait=off",
            "-pidfile", str(hdir / "qemu.pid")]


# QEMU processes this Python process started (their /proc/PID/cmdline is
# briefly Python's own, between fork and exec).
_children: dict[int, subprocess.Popen[bytes]] = {}


def alive(host: dict[str, Any]) -> bool:
    pid = host.get("pid")
    if not pid:
        return False
    if pid in _children:
        return _children[pid].poll() is None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    # The pid is ours only while its command line still names our directory.
    return state not in ("Z", "X") and any(host["dir"].encode() in a for a in argv)


def boot_host(workdir: Path, host: dict[str, Any], kernel: str) -> None:
    hdir = Path(host["dir"])
    with open(hdir / "qemu.log", "ab") as out:
        proc = subprocess.Popen(qemu_argv(workdir, host, kernel), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    host["pid"] = proc.pid
    _children[proc.pid] = proc


def serial_boots(host: dict[str, Any]) -> int:
    """How often the host came up (first boot and every kexec): rc prints a line each time."""
    try:
        return Path(host["serial"]).read_text(errors="replace").count("kexec-l1 rc: up:")
    except OSError:
        return 0


def drop_master(workdir: Path, port: int) -> None:
    """End the shared SSH connection to a host, which a kexec would leave dangling."""
    subprocess.run(ssh_argv(workdir, port)[:-1] + ["-O", "exit", "root@127.0.0.1"], capture_output=True,
                   timeout=30, check=False, stdin=subprocess.DEVNULL)


def kexec_into(workdir: Path, host: dict[str, Any], kernel: str, timeout: float) -> float:
    """Kexec the host into kernel (the lab's own kexec, not the role's); seconds until SSH answers again."""
    start, boots = time.monotonic(), serial_boots(host)
    drop_master(workdir, host["port"])
    ssh(workdir, host["port"], f"set -e; kexec -l /boot/vmlinuz-{kernel} --initrd=/boot/initrd.img-{kernel} "
        "--reuse-cmdline; sync; trap '' HUP; "
        "setsid /bin/sh -c 'sleep 1; exec kexec -e' </dev/null >/dev/null 2>&1 &", control=False)
    while serial_boots(host) == boots:
        if not alive(host):
            raise LabError(f"{host['name']}: QEMU exited during the kexec.\n{tail(Path(host['serial']))}")
        if time.monotonic() - start > timeout:
            raise LabError(f"{host['name']}: not up after the kexec in {timeout:.0f} s.\n{tail(Path(host['serial']))}")
        time.sleep(0.2)
    wait_ssh(workdir, host, timeout)
    return time.monotonic() - start


def host_facts(workdir: Path, host: dict[str, Any]) -> dict[str, str]:
    out = ssh(workdir, host["port"], "uname -r; cat /proc/sys/kernel/random/boot_id; "
              "findmnt -no SOURCE,FSTYPE,OPTIONS /srv/pmem || true").stdout.splitlines()
    return {"kernel": out[0], "boot_id": out[1], "pmem_mount": out[2] if len(out) > 2 else ""}


def save(workdir: Path, lab: dict[str, Any]) -> None:
    tmp = workdir / "lab.json.tmp"
    tmp.write_text(json.dumps(lab, indent=2) + "\n")
    os.replace(tmp, workdir / "lab.json")


def load(workdir: Path) -> dict[str, Any]:
    try:
        return json.loads((workdir / "lab.json").read_text())
    except FileNotFoundError as exc:
        raise LabError(f"no lab in {workdir} (lab.json missing)") from exc


def write_inventory(workdir: Path, lab: dict[str, Any]) -> None:
    key = workdir / "id_ed25519"
    lines = ["# Written by tests/kexec/lab.py: the L1 test hypervisors of this lab.",
             "all:", "  children:", "    hypervisors:", "      hosts:"]
    for host in lab["hosts"]:
        lines += [f"        {host['name']}:",
                  "          ansible_host: 127.0.0.1",
                  f"          ansible_port: {host['port']}",
                  "          ansible_user: root",
                  f"          ansible_ssh_private_key_file: {key}",
                  "          ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                  "          ansible_python_interpreter: /usr/bin/python3",
                  # A TCG host running TCG guests on a busy machine can take more than the default 10 s to
                  # answer an SSH banner.
                  "          ansible_ssh_timeout: 60",
                  "          ansible_ssh_retries: 3",
                  # busybox init runs the boot restore (l1/rc): no systemd unit to install.
                  "          kernel_update_boot_restore_init: script",
                  f"          lab_old_kernel: {lab['old_kernel']}",
                  f"          lab_new_kernel: {lab['new_kernel']}",
                  f"          lab_guest_dir: {GUEST_DIR}",
                  f"          lab_l2_script: {L2_SCRIPT}",
                  "          lab_guests:"]
        lines += [f"            - {g}" for g in host["guests"]] or ["            []"]
    (workdir / "inventory.yml").write_text("\n".join(lines) + "\n")


def provision(workdir: Path, host: dict[str, Any]) -> dict[str, Any]:
    """Format and mount persistent memory, then start the host's L2 guests."""
    port, timings = host["port"], {}
    t0 = time.monotonic()
    ssh(workdir, port, "set -e; test -b /dev/pmem0; "
        "mountpoint -q /srv/pmem || { mkfs.ext4 -q -F -L cpr-pmem /dev/pmem0; "
        "mount -o dax=always /dev/pmem0 /srv/pmem 2>/dev/null || mount /dev/pmem0 /srv/pmem; }; "
        "mountpoint -q /var/lib/qemu-cpr; mkdir -p " + GUEST_DIR)
    timings["pmem_seconds"] = round(time.monotonic() - t0, 1)
    if host["guests"]:
        t0 = time.monotonic()
        args = " ".join(f"--guest {shlex.quote(g)}" for g in host["guests"])
        run = ssh(workdir, port, f"python3 {L2_SCRIPT} up --dir {GUEST_DIR} {args}", timeout=1800, check=False)
        if run.returncode != 0:
            raise LabError(f"{host['name']}: L2 guests failed: {run.stderr[-3000:]}")
        host["guest_records"] = json.loads(run.stdout)
        timings["guests_seconds"] = round(time.monotonic() - t0, 1)
    return timings


def cmd_up(args: argparse.Namespace) -> dict[str, Any]:
    workdir: Path = args.workdir.resolve()
    if (workdir / "lab.json").exists():
        raise LabError(f"{workdir} already holds a lab: run `down` first")
    started = time.monotonic()
    timings: dict[str, Any] = {}
    t0 = time.monotonic()
    run = subprocess.run([str(BUILD), str(IMAGE)], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise LabError(f"{BUILD} failed:\n{run.stdout}{run.stderr}")
    timings["build_seconds"] = round(time.monotonic() - t0, 1)
    ver = versions()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    (workdir / "cfg").mkdir(exist_ok=True)
    for key in (workdir / "id_ed25519", workdir / "cfg" / "ssh_host_ed25519_key"):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kexec-lab", "-f", str(key)],
                           check=True, stdin=subprocess.DEVNULL)
    shutil.copyfile(workdir / "id_ed25519.pub", workdir / "cfg" / "authorized_keys")
    shutil.copyfile(L2_SOURCE, workdir / "cfg" / "l2.py")

    guests = args.guest or []
    lab: dict[str, Any] = {"workdir": str(workdir), "old_kernel": ver["old"], "new_kernel": ver["new"],
                           "hosts": [], "timings": timings}
    names = args.name or [f"h{i}" for i in range(args.hosts)]
    if len(set(names)) != len(names) or not all(n.replace("-", "").replace("_", "").isalnum() for n in names):
        raise LabError(f"host names must be distinct letters, digits, '-' and '_': {names}")
    smp = args.smp or (2 if len(names) == 1 else 1)
    if args.mem - args.pmem - 256 < 512:
        raise LabError("--mem must leave at least 768 MiB beside --pmem")
    for name in names:
        hdir = workdir / name
        hdir.mkdir(exist_ok=True)
        img = hdir / "state.img"
        with open(img, "wb") as handle:
            handle.truncate(args.state_disk_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "cpr-state", str(img)], check=True)
        lab["hosts"].append({"name": name, "dir": str(hdir), "port": free_port(), "pid": None,
                             "mem_mib": args.mem, "pmem_mib": args.pmem, "pmem_offset_mib": args.mem - args.pmem - 256,
                             "smp": smp, "cpu": args.cpu, "serial": str(hdir / "serial.log"),
                             "guests": list(guests)})
    save(workdir, lab)

    t0 = time.monotonic()
    for host in lab["hosts"]:
        boot_host(workdir, host, ver["old"])
    save(workdir, lab)
    log(f"booting {len(names)} L1 host(s) with {ver['old']} (newer {ver['new']} in /boot)")
    with concurrent.futures.ThreadPoolExecutor(len(lab["hosts"])) as pool:
        waits = list(pool.map(lambda h: wait_ssh(workdir, h, args.timeout), lab["hosts"]))
    timings["l1_boot_to_ssh_seconds"] = [round(w, 1) for w in waits]
    log(f"L1 hosts answer over SSH after {', '.join(f'{w:.0f} s' for w in waits)}")

    provision_all(workdir, lab, lambda host: provision(workdir, host))
    timings["up_seconds"] = round(time.monotonic() - started, 1)
    save(workdir, lab)
    return lab


def provision_all(workdir: Path, lab: dict[str, Any], prepare) -> None:
    """prepare every host at once, then record each as it is now: what `check` compares with."""
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(lab["hosts"])) as pool:
        provisions = list(pool.map(prepare, lab["hosts"]))
    for host, prov in zip(lab["hosts"], provisions):
        host["timings"] = prov
        host.update(host_facts(workdir, host))
        host["boot_id_before"] = host["boot_id"]
        host["kernel_before"] = host["kernel"]
    lab["timings"]["provision_seconds"] = round(time.monotonic() - t0, 1)
    log(f"persistent memory and L2 guests ready after {lab['timings']['provision_seconds']:.0f} s")
    save(workdir, lab)
    write_inventory(workdir, lab)


def cmd_guests(args: argparse.Namespace) -> dict[str, Any]:
    """Hand the lab to its next user: every host reset, on the asked kernel, with these L2 guests."""
    workdir = args.workdir.resolve()
    lab = load(workdir)
    kernel = {"old": lab["old_kernel"], "new": lab["new_kernel"]}.get(args.kernel, args.kernel)
    if kernel and kernel not in (lab["old_kernel"], lab["new_kernel"]):
        raise LabError(f"--kernel {kernel}: the lab has {lab['old_kernel']} and {lab['new_kernel']}")

    def prepare(host: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        # What an earlier user may have left: its guests (and QEMUs restored from them), its state files and
        # run lock, a kernel loaded for kexec.
        ssh(workdir, host["port"], f"python3 {L2_SCRIPT} down --dir {GUEST_DIR} >/dev/null; "
            f"kexec -u || true; find {STATE_DIR} -mindepth 1 -maxdepth 1 ! -name lost+found -exec rm -rf {{}} +",
            timeout=300)
        timings = {"reset_seconds": round(time.monotonic() - t0, 1)}
        if kernel and host_facts(workdir, host)["kernel"] != kernel:
            timings["kexec_seconds"] = round(kexec_into(workdir, host, kernel, args.timeout), 1)
            log(f"{host['name']}: kexec'd into {kernel} in {timings['kexec_seconds']:.0f} s")
        host["guests"] = list(args.guest or [])
        return timings | provision(workdir, host)

    provision_all(workdir, lab, prepare)
    return lab


def cmd_check(args: argparse.Namespace) -> tuple[bool, dict[str, Any]]:
    """Every host runs the new kernel with a new boot id and every guest is as it was."""
    workdir = args.workdir.resolve()
    lab = load(workdir)
    report: dict[str, Any] = {"hosts": []}
    ok = True
    for host in lab["hosts"]:
        facts = host_facts(workdir, host)
        problems = []
        expected = args.expect_kernel or lab["new_kernel"]
        if facts["kernel"] != expected:
            problems.append(f"kernel {facts['kernel']}, expected {expected}")
        if args.expect_reboot and facts["boot_id"] == host["boot_id_before"]:
            problems.append("boot id unchanged: the host did not reboot")
        if not args.expect_reboot and facts["boot_id"] != host["boot_id_before"]:
            problems.append("boot id changed: the host rebooted")
        run = ssh(workdir, host["port"], f"python3 {L2_SCRIPT} check --dir {GUEST_DIR}", timeout=900, check=False)
        try:
            guests = json.loads(run.stdout)
        except ValueError:
            guests = {"ok": False, "guests": [], "error": run.stderr[-2000:]}
        if not guests["ok"]:
            problems.append("guests: " + "; ".join(
                f"{g['name']}: {', '.join(g['problems'])}" for g in guests["guests"] if not g["ok"]
            ) + guests.get("error", ""))
        ok = ok and not problems
        report["hosts"].append({"name": host["name"], "kernel_before": host["kernel_before"],
                                "kernel_after": facts["kernel"], "boot_id_before": host["boot_id_before"],
                                "boot_id_after": facts["boot_id"], "ok": not problems, "problems": problems,
                                "guests": [{k: g[k] for k in ("name", "kind", "ram", "state", "ok", "problems")}
                                           for g in guests["guests"]]})
    report["ok"] = ok
    return ok, report


def cmd_down(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir.resolve()
    killed = []
    try:
        lab = load(workdir)
    except LabError:
        lab = {"hosts": []}
    for host in lab["hosts"]:
        # The pid file is rewritten by nobody: kexec keeps the same QEMU.
        with contextlib.suppress(OSError, ValueError):
            host["pid"] = host.get("pid") or int((Path(host["dir"]) / "qemu.pid").read_text())
        if alive(host):
            os.kill(host["pid"], signal.SIGKILL)
            killed.append(host["pid"])
    deadline = time.monotonic() + 10
    while any(alive(h) for h in lab["hosts"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for path in workdir.glob("cm-*"):
        path.unlink(missing_ok=True)
    if args.remove and workdir.exists() and (workdir / "lab.json").exists():
        shutil.rmtree(workdir)
    return {"killed": killed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build if needed, boot L1 hosts, start their L2 guests")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--name", action="append", help="host names (default h0, h1...; overrides --hosts)")
    up.add_argument("--mem", type=int, default=2048, help="L1 RAM in MiB")
    up.add_argument("--pmem", type=int, default=512, help="persistent memory in MiB (memmap=)")
    up.add_argument("--smp", type=int, default=0, help="L1 vCPUs (default: 2 for one host, else 1)")
    # TCG runs the L1 host and its L2 guests faster with a plain CPU model than with max.
    up.add_argument("--cpu", default="qemu64,+rdrand", help="L1 CPU model")
    up.add_argument("--state-disk-mib", type=int, default=1024)
    up.add_argument("--guest", action="append",
                    help="L2 guest of every host, NAME:pattern|linux:pmem|shm:running|paused[:MiB]")
    up.add_argument("--timeout", type=float, default=600)
    ssh_cmd = sub.add_parser("ssh", help="run a command on a host")
    ssh_cmd.add_argument("host")
    ssh_cmd.add_argument("cmd", nargs=argparse.REMAINDER)
    guests = sub.add_parser("guests", help="reset every host, kexec it into --kernel, start these L2 guests")
    guests.add_argument("--kernel", default="", help="old, new or a release (default: the one it runs)")
    guests.add_argument("--guest", action="append", help="L2 guest of every host, as for up")
    guests.add_argument("--timeout", type=float, default=600)
    check = sub.add_parser("check", help="after the update: new kernel, new boot id, guests as they were")
    check.add_argument("--expect-kernel", default="")
    check.add_argument("--no-reboot", dest="expect_reboot", action="store_false")
    down = sub.add_parser("down", help="kill the L1 hosts")
    down.add_argument("--keep", dest="remove", action="store_false", help="keep the work directory")
    for cmd in (up, guests, ssh_cmd, check, down, sub.add_parser("show")):
        cmd.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(json.dumps(cmd_up(args), indent=2))
        elif args.command == "guests":
            print(json.dumps(cmd_guests(args), indent=2))
        elif args.command == "check":
            ok, report = cmd_check(args)
            print(json.dumps(report, indent=2))
            return 0 if ok else 1
        elif args.command == "show":
            print(json.dumps(load(args.workdir.resolve()), indent=2))
        elif args.command == "ssh":
            lab = load(args.workdir.resolve())
            host = next((h for h in lab["hosts"] if h["name"] == args.host), None)
            if host is None:
                raise LabError(f"no host {args.host}")
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            return subprocess.run(ssh_argv(args.workdir.resolve(), host["port"]) + [shlex.join(cmd)],
                                  check=False).returncode
        else:
            print(json.dumps(cmd_down(args)))
    except (LabError, subprocess.SubprocessError, OSError) as exc:
        print(f"lab.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
