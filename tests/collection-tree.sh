#!/usr/bin/env bash
# Copies this checkout into a tree shaped the way ansible-test needs it,
#
#   <work_dir>/ansible_collections/<namespace>/<name>
#
# and prints that path. Used by tests/sanity.sh and tests/ecosystem.sh
# (ansible-test units); run it yourself to get such a tree:
#
#   tree=$(tests/collection-tree.sh tests/output/units)
#
# The files copied are those that would be committed: tracked plus
# untracked-but-not-ignored (`git ls-files --cached --others
# --exclude-standard`), so tests/output/, .venv/ and .cache/ never get in.
# The copy is fresh each time; only ansible-test's delegation virtual
# environment (tests/output/.tmp/delegation) is kept between runs, since it
# takes a while to build. The copy gets an empty git repository of its own:
# without one ansible-test would walk up to this checkout's .git, where the
# copy is ignored (tests/output/), and find no files at all; with one it lists
# the copy with `git ls-files --others --exclude-standard`, honouring the
# copied .gitignore.
#
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: collection-tree.sh WORK_DIR" >&2
    exit 2
fi
work_dir=$1
case $work_dir in
    /*) ;;
    *) work_dir=$PWD/$work_dir ;;
esac

tree=$work_dir/ansible_collections/$(galaxy_field namespace)/$(galaxy_field name)
kept=$work_dir/.delegation.kept
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
git -C "$tree" init --quiet
echo "$tree"
