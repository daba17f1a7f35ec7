#!/usr/bin/env bash
# The whole test suite, what CI runs: host dependencies, the test images, unit tests,
# real-QEMU tests, playbook integration tests, the fault campaign (with its rows on a
# real kexec lab host), a real kexec of a test hypervisor (molecule kexec-ci),
# ansible-test sanity, ansible-lint and the ecosystem gates. Run as root on Debian 12
# or 13. Exits non-zero on any failure; prints each step's time and the total at the end.
#
# After the set-up, two streams run at once, one on each of the two cores:
#   lab   boots one L1 test hypervisor of the kexec lab (tests/kexec/lab.py), runs the
#         fault campaign's kexec-lab rows on it (tests/kexec/test_kexec_faults.py), then
#         the kexec-ci scenario on the same host (one L1 boot for both), takes it down, then runs
#         the libvirt tests (tests/libvirt, a real libvirt daemon) on the core it frees;
#         its output goes to tests/output/test-run/lab.log, printed when it is over.
#   main  pytest (everything else but tests/libvirt), molecule default, sanity, lint, ecosystem.
# Then the fault campaign's three parts are printed as one table (tests/output/faults.json).
#
# The fast tier a developer runs before every commit is scripts/test.sh --fast: the unit
# tests and the engine's real-QEMU tests (tests/unit tests/qemu tests/faults), nothing else.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO_ROOT"

FAST=0
case ${1:-} in
    --fast) FAST=1 ;;
    "") ;;
    *) echo "usage: test.sh [--fast]" >&2; exit 2 ;;
esac

OUT=$REPO_ROOT/tests/output/test-run
rm -rf "$OUT"
mkdir -p "$OUT"
STEPS=$OUT/steps.tsv
RUN_START=$(date +%s)

# cpu_ticks: "busy total" jiffies of all cores so far (/proc/stat; idle and iowait are not busy).
cpu_ticks() { awk '$1 == "cpu" {total = 0; for (i = 2; i <= NF; i++) total += $i; print total - $5 - $6, total}' /proc/stat; }
# busy_percent BEFORE: how busy the machine's cores were since cpu_ticks printed BEFORE.
busy_percent() {
    local busy total now_busy now_total
    read -r busy total <<< "$1"
    read -r now_busy now_total < <(cpu_ticks)
    echo $(((now_busy - busy) * 100 / (now_total - total > 0 ? now_total - total : 1)))
}
RUN_TICKS=$(cpu_ticks)

# step STREAM NAME COMMAND...: runs COMMAND, records when it started, how long it took, how busy the
# cores were meanwhile (all of the machine's work, the other stream's too) and its exit status.
step() {
    local stream=$1 name=$2 start ticks status=0
    shift 2
    start=$(date +%s)
    ticks=$(cpu_ticks)
    printf '\n=== %s ===\n' "$name"
    "$@" || status=$?
    printf '%s\t%s\t%d\t%d\t%d\t%d\n' "$stream" "$name" $((start - RUN_START)) $(($(date +%s) - start)) \
        "$(busy_percent "$ticks")" "$status" >> "$STEPS"
    if [ "$status" -ne 0 ]; then
        echo "=== $name FAILED (exit $status) ===" >&2
    fi
    return "$status"
}

minutes() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }

report_times() {
    local stream name start took busy status
    printf '\n=== times (start and duration of each step, min:s; the lab and main streams overlap) ===\n'
    printf '  %-6s %-6s %-5s %-5s %s\n' start took cpu where step
    sort -t $'\t' -k3,3n "$STEPS" | while IFS=$'\t' read -r stream name start took busy status; do
        printf '  %-6s %-6s %-5s %-5s %s%s\n' "$(minutes "$start")" "$(minutes "$took")" "$busy%" "$stream" "$name" \
            "$([ "$status" -eq 0 ] || echo " (FAILED, exit $status)")"
    done
    printf '  total %s on %s cores, %s%% busy; load average at the end: %s\n' \
        "$(minutes $(($(date +%s) - RUN_START)))" "$(nproc)" "$(busy_percent "$RUN_TICKS")" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# run_pytest PART [isolated] ARGS...: pytest, its fault campaign rows written to a part of the table.
# isolated: in a PID namespace with its own /proc. The engine finds VMs by name among the QEMUs it
# sees and refuses a name two of them have; other test runs on this machine (other checkouts, other
# engineers) boot VMs of the same names, and in there they are not seen. Every process the tests
# leave behind ends with it, too. Not for the kexec-lab rows: their L1 host runs outside.
# tini is the namespace's PID 1 and reaps what is orphaned there (a libvirt domain's QEMU, a QEMU a module
# started): with pytest as PID 1 a killed one stayed a zombie, and libvirt's destroy failed with EBUSY on it.
# shellcheck disable=SC2317
run_pytest() {
    local part=$1 wrap=()
    shift
    if [ "${1:-}" = isolated ]; then
        wrap=(unshare --pid --fork --mount-proc tini -g --)
        shift
    fi
    HYPERVISOR_CPR_CAMPAIGN_OUT=$OUT/faults-$part.json "${wrap[@]}" "$VENV/bin/pytest" -q -ra "$@"
}

if [ "$FAST" = 1 ] && [ -x "$VENV/bin/pytest" ]; then
    echo "fast tier: host dependencies already installed in $VENV (scripts/install-host-deps.sh updates them)"
else
    step - "host dependencies" scripts/install-host-deps.sh
fi
step - "test guest" tests/testbed/build-guest.sh

export ANSIBLE_COLLECTIONS_PATH
ANSIBLE_COLLECTIONS_PATH=$(collections_path)
# The kexec-lab rows run only where asked for (the lab stream below).
unset HYPERVISOR_CPR_KEXEC_FAULTS HYPERVISOR_CPR_KEXEC_LAB

if [ "$FAST" = 1 ]; then
    status=0
    step main "pytest: unit and the engine's real-QEMU tests (fast tier)" \
        run_pytest fast isolated --numprocesses 2 --dist loadfile --durations=10 tests/unit tests/qemu tests/faults \
        || status=$?
    report_times
    exit "$status"
fi

# ------------------------------------------------------------------------------ lab stream
LAB=$(mktemp -d /tmp/kexec-lab-XXXXXX)
LAB_DEADLINE=${HYPERVISOR_CPR_LAB_DEADLINE:-70}

# kill_tree PID: SIGKILL PID and every process below it (each stopped first, so that none starts another meanwhile).
kill_tree() {
    local child
    kill -STOP "$1" 2>/dev/null || true
    for child in $(ps -o pid= --ppid "$1"); do
        kill_tree "$child"
    done
    kill -KILL "$1" 2>/dev/null || true
}
lab_stream() {
    local status=0
    export HYPERVISOR_CPR_KEXEC_FAULTS=1 HYPERVISOR_CPR_KEXEC_LAB=$LAB KEXEC_LAB_DIR=$LAB KEXEC_LAB_KEEP=1
    step lab "kexec lab: L1 image, one L1 host booted" \
        "$VENV/bin/python" tests/kexec/lab.py up --workdir "$LAB" --hosts 1 >/dev/null || return 1
    # The fault campaign's rows that need a host that really kexecs: four real kexecs.
    step lab "pytest: kexec-lab fault rows" run_pytest kexec --durations=5 tests/kexec || status=1
    # A real kernel update: the host kexecs from the older Debian kernel into the newer one over
    # SSH and its guests come back as they were (docs/kexec-scenario.md has the full scenarios).
    step lab "molecule: kexec-ci scenario (real kexec, same L1 host)" tests/kexec/run-molecule.sh kexec-ci || status=1
    # The L1 host is done with: its core goes to the real libvirt daemon's tests, which would otherwise make
    # the main stream the longer one by their whole length.
    "$VENV/bin/python" tests/kexec/lab.py down --workdir "$LAB" --keep >/dev/null 2>&1 || true
    step lab "pytest: libvirt hosts (a real libvirt daemon)" run_pytest libvirt isolated --durations=5 tests/libvirt \
        || status=1
    return "$status"
}
lab_down() {
    "$VENV/bin/python" tests/kexec/lab.py down --workdir "$LAB" --keep >/dev/null 2>&1 || true
    # What is worth reading afterwards: the playbook runs' logs and task times, reports, the L1 console.
    mkdir -p "$OUT/lab"
    (cd "$LAB" 2>/dev/null && find . \( -name 'run-*' -o -name '*.json' -o -name '*.log' -o -path './reports*' \) \
        -type f -exec cp --parents -t "$OUT/lab" {} + 2>/dev/null) || true
    rm -rf "$LAB"
}
trap 'lab_down' EXIT
lab_stream > "$OUT/lab.log" 2>&1 &
lab_pid=$!
echo "kexec lab stream started (pid $lab_pid, L1 host in $LAB, output in $OUT/lab.log)"

# ------------------------------------------------------------------------------ main stream
status=0
step main "pytest: unit, real QEMU, playbooks, fault campaign (engine and role rows)" \
    run_pytest main isolated --durations=15 --ignore=tests/libvirt tests || status=1
step main "molecule: default scenario" env PATH="$VENV/bin:$PATH" "$VENV/bin/molecule" test -s default || status=1
step main "ansible-test sanity" tests/sanity.sh || status=1
step main "ansible-lint and yamllint" tests/lint.sh || status=1
# The awx gate runs in the pytest step above (tests/integration/test_runner.py).
# galaxy-importer needs galaxy.yml's repository address, which the project has
# not published yet: that gate runs once it is set.
step main "ecosystem: units, antsibull-docs, ansible-doc, release build, ansible-builder" \
    tests/ecosystem.sh --skip awx --skip importer || status=1

echo
echo "=== waiting for the kexec lab stream ==="
# A hung lab step must not take the whole run past CI's cut with nothing printed: at LAB_DEADLINE minutes
# into the run the stream and everything it started are ended, and its log says how far it got.
until ! kill -0 "$lab_pid" 2>/dev/null || [ $(($(date +%s) - RUN_START)) -ge $((LAB_DEADLINE * 60)) ]; do
    sleep 5
done
if kill -0 "$lab_pid" 2>/dev/null; then
    echo "=== the kexec lab stream is still running after $LAB_DEADLINE minutes: ended, see its log below ===" >&2
    kill_tree "$lab_pid"
    printf 'lab\t%s\t%d\t%d\t0\t124\n' "stream ended at the $LAB_DEADLINE-minute deadline" \
        $((LAB_DEADLINE * 60)) 0 >> "$STEPS"
fi
wait "$lab_pid" || status=1
lab_down
cat "$OUT/lab.log"

step - "fault campaign: the whole table" "$VENV/bin/python" tests/fault_table.py \
    "$OUT/faults-main.json" "$OUT/faults-kexec.json" "$OUT/faults-libvirt.json" --out tests/output/faults.json \
    || status=1
report_times
exit "$status"
