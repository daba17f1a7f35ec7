#!/usr/bin/env bash
# Prints the ANSIBLE_COLLECTIONS_PATH under which this checkout is the
# collection hypervisor.cpr, creating it if needed:
#
#   <repo>/.cache/collections/ansible_collections/hypervisor/cpr -> ../../../..
#
# so that `hypervisor.cpr.*` names resolve for ansible-playbook, ansible-lint,
# molecule and ansible-doc while working in the checkout:
#
#   export ANSIBLE_COLLECTIONS_PATH=$(scripts/collection-path.sh)
#
# The link is relative, so it survives moving the checkout. Safe to run again.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
collections_path
