#!/usr/bin/env bash
# Sets up this machine and runs the main job against real local test VMs:
# installs QEMU 10 and the Python environment, builds the test guest, boots
# three test VMs under TCG, and runs the rolling kernel update over them as two
# local "hypervisors" (reboot method none: each VM gets a new QEMU, by cpr-transfer where it can;
# the kernel stays).
# Run as root on Debian 12 or 13. The VMs are stopped again at the end.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
WORKDIR=${HYPERVISOR_CPR_DEMO_DIR:-/var/tmp/hypervisor-cpr-demo}
cd "$REPO_ROOT"

scripts/install-host-deps.sh
tests/testbed/build-guest.sh >/dev/null

export ANSIBLE_COLLECTIONS_PATH
ANSIBLE_COLLECTIONS_PATH=$(collections_path)
export PATH=$VENV/bin:$PATH ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false

testbed() { "$VENV/bin/python" tests/testbed/testbed.py "$@"; }
testbed down --workdir "$WORKDIR" >/dev/null 2>&1 || true
trap 'testbed down --workdir "$WORKDIR" >/dev/null' EXIT
mkdir -p "$WORKDIR"
chmod 0700 "$WORKDIR"
echo "Booting three test VMs in $WORKDIR ..."
# demo0 and demo1 are ready for cpr-transfer (RAM in a shared memfd, -machine aux-ram-share=on): their QEMU is
# transferred; demo2-0 (RAM in a shared file, no aux-ram-share) is saved and relaunched in the same call.
testbed up --workdir "$WORKDIR" --count 2 --prefix demo --ram memfd --transfer >/dev/null
testbed up --workdir "$WORKDIR" --count 1 --prefix demo2- >/dev/null

# Two local "hypervisors", one at a time: preflight, save, restart, restore, report.
ansible-playbook -i examples/local/inventory.yml playbooks/rolling_kernel_update.yml \
    -e "rolling_report_dir=$WORKDIR/reports"
echo
cat "$WORKDIR"/reports/*.md
