#!/usr/bin/env bash
# Runs `ansible-test sanity` on hypervisor.cpr, offline except for the Python
# package index.
#
#   tests/sanity.sh                      all sanity tests
#   tests/sanity.sh --test pylint        one test (any ansible-test sanity arguments)
#   tests/sanity.sh --list-tests         which tests exist
#
# ansible-test must run from a directory shaped .../ansible_collections/NS/NAME;
# this checkout is not. So the files that would be committed (tracked plus
# untracked-but-not-ignored, i.e. `git ls-files --cached --others
# --exclude-standard`) are copied into
#   tests/output/sanity/ansible_collections/hypervisor/cpr
# and ansible-test runs there, each test in its own virtual environment
# (--venv, cached in ~/.ansible/test/venv) with its requirements from the
# package index (--requirements). tests/bootstrap-ansible-test.sh makes the
# creation of those virtual environments work offline.
#
# Results (JUnit XML, bot JSON) land in
#   tests/output/sanity/ansible_collections/hypervisor/cpr/tests/output/
# and a one-line verdict per test is printed at the end. Runs must not overlap
# on the same SANITY_WORK_DIR.
#
# Environment:
#   HYPERVISOR_CPR_VENV   virtual environment with ansible-core (default: <repo>/.venv)
#   SANITY_PYTHON         Python version to test with (default: the venv's, e.g. 3.11)
#   SANITY_WORK_DIR       where the ansible_collections tree goes
#                         (default: <repo>/tests/output/sanity)
# Exits non-zero when any test fails.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HYPERVISOR_CPR_VENV:-$REPO_ROOT/.venv}
WORK_DIR=${SANITY_WORK_DIR:-$REPO_ROOT/tests/output/sanity}

if [ ! -x "$VENV/bin/ansible-test" ]; then
    echo "sanity.sh: no ansible-test in $VENV; run scripts/install-host-deps.sh" \
        "or set HYPERVISOR_CPR_VENV" >&2
    exit 1
fi

read -r namespace name < <("$VENV/bin/python" - "$REPO_ROOT/galaxy.yml" <<'PY'
import sys
import yaml
with open(sys.argv[1]) as f:
    galaxy = yaml.safe_load(f)
print(galaxy['namespace'], galaxy['name'])
PY
)
if [ -z "${namespace:-}" ] || [ -z "${name:-}" ]; then
    echo "sanity.sh: no namespace or name in $REPO_ROOT/galaxy.yml" >&2
    exit 1
fi
python_version=${SANITY_PYTHON:-$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}

"$REPO_ROOT/tests/bootstrap-ansible-test.sh"

# A fresh copy of the collection each time. Only ansible-test's delegation
# virtual environment (tests/output/.tmp/delegation) is kept between runs.
tree=$WORK_DIR/ansible_collections/$namespace/$name
kept=$WORK_DIR/.delegation.kept
rm -rf "$kept"
if [ -d "$tree/tests/output/.tmp/delegation" ]; then
    mv "$tree/tests/output/.tmp/delegation" "$kept"
fi
rm -rf "$tree"
mkdir -p "$tree"
(
    cd "$REPO_ROOT"
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' path; do
            # tracked files deleted from the working tree are not copied
            if [ -e "$path" ] || [ -L "$path" ]; then
                printf '%s\0' "$path"
            fi
        done |
        xargs -0 --no-run-if-empty cp --parents --no-dereference --preserve=mode,timestamps,links -t "$tree"
)
if [ -d "$kept" ]; then
    mkdir -p "$tree/tests/output/.tmp"
    mv "$kept" "$tree/tests/output/.tmp/delegation"
fi

# Without a repository of its own, ansible-test would walk up to this checkout's
# .git, where the copy is ignored (tests/output/), and find no files at all.
# An empty repository makes it list the copy with `git ls-files --others
# --exclude-standard`, honouring the copied .gitignore.
git -C "$tree" init --quiet

# ansible-test prefers en_US.UTF-8 and warns about C.UTF-8; either works.
if locale -a 2>/dev/null | grep -qix 'en_US.utf-\?8'; then
    export LC_ALL=en_US.UTF-8
else
    export LC_ALL=C.UTF-8
fi

echo "sanity.sh: ansible-test sanity in $tree (Python $python_version)"
cd "$tree"
start=$SECONDS
status=0
"$VENV/bin/ansible-test" sanity --venv --requirements --python "$python_version" --junit "$@" || status=$?
elapsed=$((SECONDS - start))

# One line per test from the JUnit reports: passed, FAILED, or skipped and why.
if [ -d tests/output/junit ]; then
    "$VENV/bin/python" - tests/output/junit <<'PY'
import glob
import os
import sys
import xml.etree.ElementTree as ET

for path in sorted(glob.glob(os.path.join(sys.argv[1], '*.xml'))):
    for case in ET.parse(path).iter('testcase'):
        skipped = case.find('skipped')
        if case.find('failure') is not None or case.find('error') is not None:
            verdict = 'FAILED'
        elif skipped is not None:
            verdict = 'skipped: %s' % (skipped.text or skipped.get('message') or '').strip()
        else:
            verdict = 'passed'
        print('  %-32s %s' % (case.get('name'), verdict))
PY
fi
echo "sanity.sh: ansible-test sanity exited $status after ${elapsed} s;" \
    "results in $tree/tests/output/"
exit "$status"
