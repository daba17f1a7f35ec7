#!/usr/bin/env bash
# Makes `ansible-test sanity --venv` work without access to ci-files.testing.ansible.com.
#
# Every virtual environment ansible-test creates is bootstrapped with pip by a
# get-pip.py it downloads from ci-files.testing.ansible.com, unless the file
# ~/.ansible/test/cache/get_pip_<version>.py already exists
# (ansible_test/_util/target/setup/requirements.py, bootstrap()). This script
# puts a small stand-in there that installs pip from the pip wheel, which it
# fetches once from the Python package index (`pip download`). After that,
# every sanity test installs its own requirements from the package index as
# usual. Safe to run again; does nothing when everything is in place.
#
# Environment: HYPERVISOR_CPR_VENV (default: <repo>/.venv), HOME.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
need_venv python
PYTHON=$VENV/bin/python

# The pip version this ansible-test bootstraps into its virtual environments
# (ansible_test/_internal/python_requirements.py, get_venv_packages()).
pip_version=$("$PYTHON" - <<'EOF'
import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version='3'))['pip'])
EOF
)
[[ $pip_version =~ ^[0-9][0-9.]*$ ]] || die "unexpected pip version from ansible-test: '$pip_version'"

cache_dir=$HOME/.ansible/test/cache
wheel_dir=$cache_dir/hypervisor-cpr-wheels
get_pip=$cache_dir/get_pip_${pip_version//./_}.py
wheel=$wheel_dir/pip-$pip_version-py3-none-any.whl

mkdir -p "$wheel_dir"

if [ ! -s "$wheel" ]; then
    echo "bootstrap-ansible-test.sh: fetching pip $pip_version into $wheel_dir"
    tmp_dir=$(mktemp -d "$wheel_dir/.download.XXXXXX")
    trap 'rm -rf "$tmp_dir"' EXIT
    "$VENV/bin/pip" download --quiet --no-deps --only-binary=:all: \
        --dest "$tmp_dir" "pip==$pip_version"
    mv "$tmp_dir/pip-$pip_version-py3-none-any.whl" "$wheel"
    rm -rf "$tmp_dir"
    trap - EXIT
fi

# A get_pip_*.py that is not ours (the real one, downloaded by ansible-test or
# placed there by hand) is left alone.
if [ -e "$get_pip" ] && ! grep -q 'hypervisor.cpr stand-in for get-pip.py' "$get_pip"; then
    exit 0
fi

new=$(mktemp "$cache_dir/.get_pip.XXXXXX")
trap 'rm -f "$new"' EXIT
cat > "$new" <<EOF
"""hypervisor.cpr stand-in for get-pip.py (written by tests/bootstrap-ansible-test.sh).

ansible-test runs this as 'python get_pip_X_Y.py [pip options] pip==X.Y --no-setuptools
--no-wheel' in a fresh virtual environment without pip. Install pip from the wheel next to it.
"""
import os
import sys

WHEEL = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                     'hypervisor-cpr-wheels', 'pip-$pip_version-py3-none-any.whl')


def main():
    if not os.path.isfile(WHEEL):
        sys.exit('%s is missing: run tests/bootstrap-ansible-test.sh of hypervisor.cpr' % WHEEL)
    args = [arg for arg in sys.argv[1:] if arg not in ('--no-setuptools', '--no-wheel')]
    requirements = [arg for arg in args if not arg.startswith('-')]
    options = ['install', '--upgrade', '--force-reinstall', '--find-links', os.path.dirname(WHEEL)]
    if all(req.startswith('pip==') for req in requirements):
        options.append('--no-index')  # everything asked for is in the wheel directory
    sys.path.insert(0, WHEEL)  # pip runs from its own wheel
    from pip._internal.cli.main import main as pip_main
    sys.exit(pip_main(options + args))


if __name__ == '__main__':
    main()
EOF
if cmp -s "$new" "$get_pip"; then
    rm -f "$new"
else
    chmod 0644 "$new"
    mv "$new" "$get_pip"
    echo "bootstrap-ansible-test.sh: wrote $get_pip"
fi
trap - EXIT
