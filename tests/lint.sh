#!/usr/bin/env bash
# Lints hypervisor.cpr: ansible-lint (profile production, .ansible-lint) and
# yamllint (.yamllint), offline. Extra arguments go to ansible-lint, e.g.
#
#   tests/lint.sh                      everything
#   tests/lint.sh roles/kernel_update  only these paths (ansible-lint; yamllint still checks all)
#
# Environment: HYPERVISOR_CPR_VENV (default: <repo>/.venv).
# Exits non-zero when either linter finds a problem.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
need_venv ansible-lint yamllint

ANSIBLE_COLLECTIONS_PATH=$(collections_path)
export ANSIBLE_COLLECTIONS_PATH
# ansible-lint warns when its own bin directory is not on PATH.
export PATH=$VENV/bin:$PATH
# No network: no schema refresh, no requirements install (also offline: true in .ansible-lint).
export ANSIBLE_LINT_SKIP_SCHEMA_UPDATE=1
export NO_COLOR=1

cd "$REPO_ROOT"
status=0

echo "lint.sh: yamllint"
"$VENV/bin/yamllint" --strict -c .yamllint . || status=1

echo "lint.sh: ansible-lint (ANSIBLE_COLLECTIONS_PATH=$ANSIBLE_COLLECTIONS_PATH)"
"$VENV/bin/ansible-lint" -c .ansible-lint --offline "$@" || status=1

exit "$status"
