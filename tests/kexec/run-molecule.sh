#!/usr/bin/env bash
# Runs a kexec molecule scenario (extensions/molecule/<scenario>) from this checkout:
#
#   tests/kexec/run-molecule.sh [kexec|kexec-copy|kexec-tmpfs ...] [-- molecule test args]
#
# With no scenario it runs kexec-ci (one L1 host, what CI runs). Each scenario
# boots its own L1 test hypervisors (TCG VMs) under /tmp/kexec-molecule-<scenario>
# and destroys them at the end, also on failure. With KEXEC_LAB_DIR naming a lab that
# tests/kexec/lab.py already booted, the scenarios use its hosts instead (reset, put on
# the old kernel and given their own L2 guests by lab.py guests), and KEXEC_LAB_KEEP=1
# leaves them running at the end, for whoever booted them (scripts/test.sh). Needs root and
# scripts/install-host-deps.sh (QEMU 10, kexec-tools, the .venv with molecule).
# Prints the time each scenario took.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"
MOLECULE=${MOLECULE:-$VENV/bin/molecule}
cd "$REPO_ROOT"

[ -x "$MOLECULE" ] || die "no molecule at $MOLECULE: install it in the venv (pip install molecule) or set MOLECULE"
scenarios=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do scenarios+=("$1"); shift; done
[ "${1:-}" != -- ] || shift
[ ${#scenarios[@]} -gt 0 ] || scenarios=(kexec-ci)

export ANSIBLE_COLLECTIONS_PATH
ANSIBLE_COLLECTIONS_PATH=$(collections_path)
# ansible-playbook of molecule's own environment, never a pyenv shim.
PATH=$(dirname "$MOLECULE"):$PATH
export PATH
export ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-0} ANSIBLE_LOCALHOST_WARNING=false

# The L1 image (kernels, initramfs, sshd, the L2 pattern program) is built
# once and cached; building it here keeps its time out of the first scenario.
start=$SECONDS
tests/kexec/build-l1.sh
echo "kexec: L1 image ready in $((SECONDS - start)) s"

status=0
for scenario in "${scenarios[@]}"; do
    start=$SECONDS
    echo "=== molecule test -s $scenario ==="
    # Molecule's action lines get the time of day, so each phase can be timed.
    if "$MOLECULE" test -s "$scenario" "$@" 2>&1 | while IFS= read -r line; do
            case $line in
                *'] Executing'* | *'] Executed'*) printf '%s %s\n' "$(date +%T)" "$line" ;;
                *) printf '%s\n' "$line" ;;
            esac
        done; then
        echo "kexec: scenario $scenario passed in $((SECONDS - start)) s"
    else
        status=$?
        echo "kexec: scenario $scenario FAILED (exit $status) after $((SECONDS - start)) s" >&2
    fi
done
exit "$status"
