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

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

galaxy_field() {
    awk -v key="$1:" '$1 == key {gsub(/["\047]/, "", $2); print $2; exit}' "$REPO_ROOT/galaxy.yml"
}
namespace=$(galaxy_field namespace)
name=$(galaxy_field name)
if [ -z "$namespace" ] || [ -z "$name" ]; then
    echo "collection-path.sh: no namespace or name in $REPO_ROOT/galaxy.yml" >&2
    exit 1
fi

collections=$REPO_ROOT/.cache/collections
link=$collections/ansible_collections/$namespace/$name
if [ -e "$link" ] && [ ! -L "$link" ]; then
    echo "collection-path.sh: $link exists and is not a symbolic link; remove it" >&2
    exit 1
fi
if [ "$(readlink "$link" 2>/dev/null)" != ../../../.. ]; then
    mkdir -p "$(dirname "$link")"
    ln -sfn ../../../.. "$link"
fi
echo "$collections"
