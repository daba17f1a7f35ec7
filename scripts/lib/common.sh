# shellcheck shell=bash
# The prelude every shell script of hypervisor.cpr shares. Source it first:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"              (from scripts/)
#   . "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"   (from tests/)
#
# It sets, from this file's own place (so it works from any directory):
#   REPO_ROOT  the checkout
#   VENV       the Python virtual environment (HYPERVISOR_CPR_VENV, default <repo>/.venv)
#   CACHE      built test images (HYPERVISOR_CPR_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/hypervisor-cpr)
# and defines die, need_venv, venv_python_version, galaxy_field, collections_path and
# use_utf8_locale. It changes no option of the calling shell.

if [ -z "${__HYPERVISOR_CPR_COMMON:-}" ]; then
__HYPERVISOR_CPR_COMMON=1

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${HYPERVISOR_CPR_VENV:-$REPO_ROOT/.venv}
# shellcheck disable=SC2034  # for the scripts that source this file
CACHE=${HYPERVISOR_CPR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hypervisor-cpr}

# die MESSAGE...: print "<script>: MESSAGE" on stderr and exit 1.
die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# need_venv TOOL...: each TOOL must be an executable in $VENV/bin; names every one missing.
need_venv() {
    local tool missing=()
    for tool in "$@"; do
        [ -x "$VENV/bin/$tool" ] || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        die "no ${missing[*]} in $VENV; run scripts/install-host-deps.sh or set HYPERVISOR_CPR_VENV"
    fi
}

# venv_python_version: the venv's Python as MAJOR.MINOR, e.g. 3.11.
venv_python_version() {
    "$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

# galaxy_field KEY: a top-level scalar of galaxy.yml (namespace, name, version), unquoted.
galaxy_field() {
    local value
    value=$(awk -v key="$1:" '$1 == key {gsub(/["\047]/, "", $2); print $2; exit}' "$REPO_ROOT/galaxy.yml")
    [ -n "$value" ] || die "no $1 in $REPO_ROOT/galaxy.yml"
    echo "$value"
}

# collections_path: print the ANSIBLE_COLLECTIONS_PATH under which this checkout is the collection,
# creating <repo>/.cache/collections/ansible_collections/<namespace>/<name> -> ../../../.. if needed.
# The link is relative, so it survives moving the checkout. Safe to run again.
collections_path() {
    local namespace name collections link
    namespace=$(galaxy_field namespace) || return 1
    name=$(galaxy_field name) || return 1
    collections=$REPO_ROOT/.cache/collections
    link=$collections/ansible_collections/$namespace/$name
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        die "$link exists and is not a symbolic link; remove it"
    fi
    if [ "$(readlink "$link" 2>/dev/null)" != ../../../.. ]; then
        mkdir -p "$(dirname "$link")"
        ln -sfn ../../../.. "$link"
    fi
    echo "$collections"
}

# use_utf8_locale: export LC_ALL as en_US.UTF-8 where installed, else C.UTF-8 (ansible-test
# prefers the first and warns about the second; either works).
use_utf8_locale() {
    if locale -a 2>/dev/null | grep -qix 'en_US.utf-\?8'; then
        export LC_ALL=en_US.UTF-8
    else
        export LC_ALL=C.UTF-8
    fi
}

fi
