#!/usr/bin/env bash
# Runs `ansible-test sanity` on hypervisor.cpr, offline except for the Python
# package index.
#
#   tests/sanity.sh                      all sanity tests
#   tests/sanity.sh --test pylint        one test (any ansible-test sanity arguments)
#   tests/sanity.sh --list-tests         which tests exist
#
# ansible-test must run from a directory shaped .../ansible_collections/NS/NAME;
# this checkout is not. So tests/collection-tree.sh copies the files that would be committed into
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

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
WORK_DIR=${SANITY_WORK_DIR:-$REPO_ROOT/tests/output/sanity}

need_venv ansible-test

python_version=${SANITY_PYTHON:-$(venv_python_version)}

"$REPO_ROOT/tests/bootstrap-ansible-test.sh"

# A fresh copy of the collection each time (ansible-test's delegation virtual
# environment is kept), with an empty git repository of its own.
tree=$("$REPO_ROOT/tests/collection-tree.sh" "$WORK_DIR")

use_utf8_locale

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
