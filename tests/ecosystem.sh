#!/usr/bin/env bash
# The gates of the Ansible ecosystem that hypervisor.cpr must pass, beyond
# ansible-test sanity (tests/sanity.sh) and ansible-lint (tests/lint.sh):
#
#   units       ansible-test units, in a copy of the collection shaped
#               .../ansible_collections/hypervisor/cpr (tests/collection-tree.sh),
#               with tests/unit/requirements.txt (run as root: some tests use
#               loop devices)
#   docs        antsibull-docs lint-collection-docs --plugin-docs: plugin and role
#               documentation (schema, semantic markup, references) and the
#               extra docs in docs/docsite/
#   ansible-doc ansible-doc lists and renders every plugin of every type in
#               plugins/ and every entry point of every role in roles/
#   build       ansible-galaxy collection build from the checkout: the tarball
#               holds no file git would not commit (tests/output, caches,
#               .venv...: galaxy.yml build_ignore) and every file of the content
#   importer    galaxy-importer (what Galaxy and Automation Hub run on an upload)
#               on that tarball, without a container engine: clean, not a
#               single warning (but one ansible-lint false positive, see below)
#   ee          ansible-builder create on execution-environment.yml (no container
#               engine needed), then checks of the build context; the installed
#               tarball's meta/execution-environment.yml as ansible-builder
#               introspects it; bindep.txt's profiles
#   awx         the rolling playbook as an AWX job through ansible-runner, on
#               real test-bed VMs (pytest tests/integration/test_runner.py; also
#               part of the plain pytest run)
#
#   tests/ecosystem.sh                   every gate
#   tests/ecosystem.sh docs build        only these
#   tests/ecosystem.sh --skip awx        all but these
#
# Prints one line per gate (passed or FAILED, and seconds) and, for a failed
# gate, the end of its log; every log is in tests/output/ecosystem/.
# Needs the tools of tests/requirements.txt in the virtual environment
# (scripts/install-host-deps.sh installs them). Offline except for the Python
# package index (ansible-test's test environment, via tests/bootstrap-ansible-test.sh).
#
# Environment:
#   HYPERVISOR_CPR_VENV   virtual environment (default: <repo>/.venv)
#   ECOSYSTEM_PYTHON      Python version for ansible-test units (default: the venv's)
# Exits non-zero when any gate fails.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
OUT=$REPO_ROOT/tests/output/ecosystem
ALL_GATES=(units docs ansible-doc build importer ee awx)

usage() {
    echo "usage: ecosystem.sh [--skip GATE]... [GATE]...   (gates: ${ALL_GATES[*]})" >&2
    exit 2
}

selected=()
skipped=()
while [ $# -gt 0 ]; do
    case $1 in
        --skip) [ $# -ge 2 ] || usage; skipped+=("$2"); shift 2 ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) selected+=("$1"); shift ;;
    esac
done
for gate in "${selected[@]}" "${skipped[@]}"; do
    [[ " ${ALL_GATES[*]} " == *" $gate "* ]] || { echo "ecosystem.sh: no gate '$gate'" >&2; usage; }
done
[ ${#selected[@]} -gt 0 ] || selected=("${ALL_GATES[@]}")
gates=()
for gate in "${ALL_GATES[@]}"; do
    if [[ " ${selected[*]} " == *" $gate "* ]] && [[ " ${skipped[*]} " != *" $gate "* ]]; then
        gates+=("$gate")
    fi
done

need_venv ansible-test ansible-doc ansible-galaxy antsibull-docs ansible-builder bindep ansible-runner pytest
"$VENV/bin/python" -c 'import galaxy_importer' 2>/dev/null ||
    die "no galaxy-importer in $VENV; run scripts/install-host-deps.sh (tests/requirements.txt) or set HYPERVISOR_CPR_VENV"

export PATH=$VENV/bin:$PATH
ANSIBLE_COLLECTIONS_PATH=$(collections_path)
export ANSIBLE_COLLECTIONS_PATH
export ANSIBLE_NOCOLOR=1 NO_COLOR=1 ANSIBLE_DEPRECATION_WARNINGS=true
use_utf8_locale

NAMESPACE=$(galaxy_field namespace)
NAME=$(galaxy_field name)
VERSION=$(galaxy_field version)
FQCN=$NAMESPACE.$NAME
TARBALL=$OUT/dist/$NAMESPACE-$NAME-$VERSION.tar.gz

mkdir -p "$OUT"
cd "$REPO_ROOT"

# ----------------------------------------------------------------------------- gates
# Each gate runs in a subshell with its output in $OUT/<gate>.log and fails by
# exiting non-zero; a line starting with "result:" becomes its summary.

gate_units() {
    local tree python_version
    python_version=${ECOSYSTEM_PYTHON:-$(venv_python_version)}
    tests/bootstrap-ansible-test.sh
    tree=$(tests/collection-tree.sh "$REPO_ROOT/tests/output/units")
    rm -rf "$tree/tests/output/junit"
    (cd "$tree" && ansible-test units --venv --requirements --python "$python_version")
    python - "$tree/tests/output/junit" <<'PY'
import glob, os, sys
import xml.etree.ElementTree as ET
counts = {"passed": 0, "failed": 0, "skipped": 0}
for path in glob.glob(os.path.join(sys.argv[1], "*.xml")):
    for case in ET.parse(path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
            print("skipped: %s::%s: %s" % (case.get("classname"), case.get("name"),
                                          case.find("skipped").get("message", "")))
        else:
            counts["passed"] += 1
print("result: %(passed)d passed, %(failed)d failed, %(skipped)d skipped" % counts)
sys.exit(1 if counts["failed"] or not counts["passed"] else 0)
PY
}

gate_docs() {
    # 'all' validates references to every collection found (only ansible.builtin, besides this
    # one), and a reference to a collection that is not installed is an error.
    antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs \
        --validate-collection-refs all --disallow-unknown-collection-refs .
    echo "result: plugin, role and extra docs clean"
}

gate_ansible-doc() {
    python - "$FQCN" <<'PY'
"""Every plugin file and role of the checkout must be listed and render with ansible-doc."""
import json
import os
import re
import subprocess
import sys

fqcn = sys.argv[1]
# plugins/<dir> -> ansible-doc type; the others hold no documented plugins of their own
# (action plugins are documented by the module of the same name).
TYPES = {
    "modules": "module", "become": "become", "cache": "cache", "callback": "callback", "cliconf": "cliconf",
    "connection": "connection", "filter": "filter", "httpapi": "httpapi", "inventory": "inventory",
    "lookup": "lookup", "netconf": "netconf", "shell": "shell", "strategy": "strategy", "test": "test",
    "vars": "vars",
}
UNDOCUMENTED = {"action", "doc_fragments", "module_utils", "plugin_utils", "terminal"}
problems = []
rendered = []


def doc(*args):
    # From a neutral directory: inside an ansible_collections tree ansible-doc also finds the collection there.
    done = subprocess.run(["ansible-doc", *args], capture_output=True, text=True, check=False, cwd="/")
    noise = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode != 0 or noise:
        problems.append("ansible-doc %s: exit %d: %s" % (" ".join(args), done.returncode, " / ".join(noise)[:2000]))
    return done.stdout


for directory in sorted(os.listdir("plugins")) if os.path.isdir("plugins") else []:
    path = os.path.join("plugins", directory)
    if not os.path.isdir(path) or directory in UNDOCUMENTED or directory.startswith(("_", ".")):
        continue
    if directory not in TYPES:
        problems.append("plugins/%s: not a plugin directory ansible-doc knows" % directory)
        continue
    kind = TYPES[directory]
    # filter and test plugins are documented by a YAML file per plugin; the others by their Python file.
    suffix = (".yml", ".yaml") if kind in ("filter", "test") else (".py",)
    expected = sorted({os.path.splitext(f)[0] for f in os.listdir(path)
                       if f.endswith(suffix) and not f.startswith("_")})
    listed = sorted(name.split(".")[-1] for name in json.loads(doc("-t", kind, "-l", fqcn, "--json") or "{}"))
    for name in sorted(set(expected) - set(listed)):
        problems.append("%s %s.%s (%s/%s): not listed by ansible-doc -l" % (kind, fqcn, name, path, name))
    for name in sorted(set(expected) & set(listed)):
        if "%s.%s" % (fqcn, name) not in doc("-t", kind, "%s.%s" % (fqcn, name)):
            problems.append("%s %s.%s: rendered without its name" % (kind, fqcn, name))
        rendered.append("%s %s" % (kind, name))

for role in sorted(os.listdir("roles")) if os.path.isdir("roles") else []:
    if not os.path.isdir(os.path.join("roles", role)):
        continue
    specs = [os.path.join("roles", role, "meta", "argument_specs" + ext) for ext in (".yml", ".yaml")]
    if not any(os.path.exists(spec) for spec in specs):
        problems.append("role %s: no meta/argument_specs.yml, so ansible-doc cannot document it" % role)
        continue
    listing = json.loads(doc("-t", "role", "-l", fqcn, "--json") or "{}")
    name = "%s.%s" % (fqcn, role)
    entry_points = sorted((listing.get(name) or {}).get("entry_points", {}))
    if not entry_points:
        problems.append("role %s: no entry point listed by ansible-doc -t role -l" % name)
    for entry_point in entry_points:
        # "ENTRY POINT: main - ...", the name in bold (*main* without colour).
        if not re.search(r"ENTRY POINT: \W*%s\W" % re.escape(entry_point), doc("-t", "role", name, "-e", entry_point)):
            problems.append("role %s: entry point %s did not render" % (name, entry_point))
        rendered.append("role %s:%s" % (role, entry_point))

for problem in problems:
    print("problem: " + problem)
print("rendered: " + ", ".join(rendered))
print("result: %d rendered%s" % (len(rendered), ", %d problems" % len(problems) if problems else ""))
sys.exit(1 if problems or not rendered else 0)
PY
}

gate_build() {
    rm -rf "$OUT/dist"
    mkdir -p "$OUT/dist"
    ansible-galaxy collection build --force --output-path "$OUT/dist" . 2>&1 | tee "$OUT/dist/build.log"
    if grep -q 'WARNING' "$OUT/dist/build.log"; then
        echo "result: ansible-galaxy collection build warned (above)"
        return 1
    fi
    git ls-files -z --cached --others --exclude-standard > "$OUT/git-files"
    python - "$TARBALL" "$OUT/git-files" <<'PY'
"""The tarball holds exactly what a release should: nothing git would not commit, and all the content."""
import os
import sys
import tarfile

tarball, git_list = sys.argv[1:3]
with tarfile.open(tarball) as tar:
    members = [m for m in tar.getmembers() if not m.isdir()]
names = {m.name for m in members}
with open(git_list, "rb") as handle:
    committed = {p.decode() for p in handle.read().split(b"\0") if p and os.path.lexists(p)}
generated = {"MANIFEST.json", "FILES.json"}
problems = []
for name in sorted(names - committed - generated):
    problems.append("in the tarball but not a file git would commit (add it to build_ignore in galaxy.yml): " + name)
# Content a user of the released collection needs: it must not be build_ignore'd.
CONTENT = ("plugins/", "roles/", "playbooks/", "meta/", "docs/", "changelogs/")
TOP = {"README.md", "LICENSE", "requirements.txt", "bindep.txt", "execution-environment.yml"}
wanted = {p for p in committed if p.startswith(CONTENT) or p in TOP}
for name in sorted(wanted - names):
    problems.append("a file of the content is missing from the tarball: " + name)
for member in members:
    if member.issym() or member.islnk():
        problems.append("a link in the tarball: %s -> %s" % (member.name, member.linkname))
for problem in problems:
    print("problem: " + problem)
size = os.path.getsize(tarball)
print("result: %s, %d files, %d KiB%s" % (os.path.basename(tarball), len(names), size // 1024,
                                         ", %d problems" % len(problems) if problems else ""))
sys.exit(1 if problems else 0)
PY
}

gate_importer() {
    if [ ! -s "$TARBALL" ]; then
        echo "no tarball $TARBALL: the build gate must run first"
        return 1
    fi
    local work=$OUT/importer
    rm -rf "$work"
    mkdir -p "$work/tmp"
    # What Galaxy runs on an upload, minus what needs a container engine (ansible-test in a
    # container). flake8 stays off as on Galaxy: ansible-test sanity's pep8 checks the code with
    # the rules of the Ansible project.
    cat > "$work/galaxy-importer.cfg" <<EOF
[galaxy-importer]
run_ansible_doc = True
run_ansible_lint = True
offline_ansible_lint = True
run_ansible_test = False
ansible_test_local_image = False
local_image_docker = False
run_flake8 = False
check_changelog = True
require_v1_or_greater = False
tmp_root_dir = $work/tmp
ansible_local_tmp = $work/ansible-tmp
EOF
    local status=0
    # It writes importer_result.json into its working directory.
    # It installs the tarball into a collections path of its own; ours must not leak in.
    (cd "$work" && env -u ANSIBLE_COLLECTIONS_PATH GALAXY_IMPORTER_CONFIG="$work/galaxy-importer.cfg" \
        python -m galaxy_importer.main "$TARBALL") \
        > "$work/output.log" 2>&1 || status=$?
    cat "$work/output.log"
    if [ "$status" -ne 0 ] || ! grep -q '^Importer processing completed successfully' "$work/output.log"; then
        echo "result: the import failed (exit $status)"
        return 1
    fi
    # One known false positive is allowed: galaxy-importer runs ansible-lint with
    # ANSIBLE_COLLECTIONS_PATH=<tmp>/ansible_collections, and ansible-lint (26.x) then looks for
    # the playbook of an FQCN import_playbook (extensions/molecule/*/converge.yml imports
    # hypervisor.cpr.rolling_kernel_update) under <tmp>/ansible_collections/ansible_collections/...
    # and logs that it did not find it (ansiblelint/utils.py, _get_playbook_paths). ansible-core
    # finds it there, and ansible-lint finds it with a usual collections path (tests/lint.sh).
    local complaints
    complaints=$(grep -E '^(WARNING|ERROR)' "$work/output.log" |
        grep -cvxE 'WARNING: ERROR +Failed to find hypervisor\.cpr\.[a-z0-9_]+ playbook\.' || true)
    if [ "$complaints" -ne 0 ]; then
        echo "result: imported, with $complaints warnings or errors (above)"
        return 1
    fi
    python - "$work/importer_result.json" <<'PY'
import json, sys
with open(sys.argv[1]) as handle:
    result = json.load(handle)
contents = sorted("%s %s" % (c["content_type"], c["name"]) for c in result["contents"])
print("contents: " + ", ".join(contents))
print("result: imported cleanly: %d contents, requires_ansible %s" % (len(contents), result.get("requires_ansible")))
PY
}

gate_ee() {
    local work=$OUT/ee
    rm -rf "$work"
    mkdir -p "$work"
    ansible-builder create -f execution-environment.yml -c "$work/context" --output-filename Containerfile
    # What an EE that installs the released collection gets from its meta/execution-environment.yml:
    # the tarball (built afresh, the build gate may not have run), installed, introspected.
    ansible-galaxy collection build --force --output-path "$work/dist" .
    ANSIBLE_COLLECTIONS_PATH=$work/collections ansible-galaxy collection install --force --offline --no-deps \
        -p "$work/collections" "$work/dist/$NAMESPACE-$NAME-$VERSION.tar.gz"
    python "$work/context/_build/scripts/introspect.py" introspect "$work/collections" \
        --write-pip "$work/collection-pip.txt" --write-bindep "$work/collection-bindep.txt"
    python - "$work" execution-environment.yml <<'PY'
"""The build context of the EE, and what the collection adds to any EE."""
import os
import re
import sys

import yaml

work, definition = sys.argv[1:3]
context = os.path.join(work, "context")
problems = []


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def names(path):
    """Package names of a pip or bindep file: the first word of every line."""
    return sorted({re.split(r"[\s<>=!~\[;#]", line.strip(), maxsplit=1)[0].lower()
                   for line in read(path).splitlines() if line.strip() and not line.strip().startswith("#")})


with open(definition, encoding="utf-8") as handle:
    ee = yaml.safe_load(handle)
containerfile = read(os.path.join(context, "Containerfile"))
base = ee["images"]["base_image"]["name"]
if 'ARG EE_BASE_IMAGE="%s"' % base not in containerfile:
    problems.append("Containerfile does not build FROM %s" % base)
for needed in ("ansible-core", "ansible-runner"):
    if not re.search(r'ARG ANSIBLE_INSTALL_REFS="[^"]*%s' % needed, containerfile):
        problems.append("Containerfile does not install %s" % needed)
if "introspect.py introspect" not in containerfile or "install-from-bindep" not in containerfile:
    problems.append("Containerfile does not introspect and install the dependencies")

expected_pip = names("requirements.txt")
if names(os.path.join(context, "_build", "requirements.txt")) != expected_pip:
    problems.append("_build/requirements.txt is not requirements.txt")
if names(os.path.join(context, "_build", "bindep.txt")) != names("bindep.txt"):
    problems.append("_build/bindep.txt is not bindep.txt")
galaxy = yaml.safe_load(read(os.path.join(context, "_build", "requirements.yml")))
collections = [c["name"] if isinstance(c, dict) else c for c in galaxy.get("collections", [])]
if "hypervisor.cpr" not in collections:
    problems.append("_build/requirements.yml does not install hypervisor.cpr: %s" % collections)

# An EE that installs the collection from its tarball gets these.
collection_pip = names(os.path.join(work, "collection-pip.txt"))
if collection_pip != expected_pip:
    problems.append("the collection's meta/execution-environment.yml gives the Python requirements %s, not %s"
                    % (collection_pip, expected_pip))
if names(os.path.join(work, "collection-bindep.txt")) != names("bindep.txt"):
    problems.append("the collection's meta/execution-environment.yml does not give bindep.txt")
for problem in problems:
    print("problem: " + problem)
print("context: FROM %s; python %s; galaxy %s" % (base, ", ".join(expected_pip), ", ".join(collections)))
sys.exit(1 if problems else 0)
PY
    # bindep.txt: the EE (default profile) gets an SSH client only; the "hypervisor" profile is
    # what a hypervisor needs. Listed for this platform (dpkg), installed or not.
    local controller hypervisor
    controller=$(bindep -f bindep.txt --list_all newline | sort | xargs)
    hypervisor=$(bindep -f bindep.txt --list_all newline hypervisor | sort | xargs)
    echo "bindep default profile: $controller"
    echo "bindep hypervisor profile: $hypervisor"
    if [ "$controller" != "openssh-client" ]; then
        echo "result: bindep.txt's default profile is '$controller', not 'openssh-client'"
        return 1
    fi
    if [ "$hypervisor" != "kexec-tools openssh-client python3 qemu-system-x86" ]; then
        echo "result: bindep.txt's hypervisor profile is '$hypervisor'"
        return 1
    fi
    python - "$work" <<'PY'
import os, re, sys
work = sys.argv[1]
def entries(name):
    with open(os.path.join(work, name), encoding="utf-8") as handle:
        return [line.split("#")[0].strip() for line in handle if line.split("#")[0].strip()]
python_reqs = [re.split(r"[\s<>=!~;]", line, maxsplit=1)[0] for line in entries("collection-pip.txt")]
# An EE gets the entries of bindep's default profile: those whose selectors are all platform:...
system = [line.split()[0] for line in entries("collection-bindep.txt")
          if all(s.startswith(("platform:", "!platform:")) for s in re.findall(r"\[([^]]*)\]", line + "[]")[0].split())]
print("result: build context in tests/output/ecosystem/ee/context; hypervisor.cpr adds to any EE: python %s; system %s"
      % (" ".join(python_reqs), " ".join(system)))
PY
}

gate_awx() {
    if [ ! -f playbooks/rolling_kernel_update.yml ]; then
        echo "result: no playbooks/rolling_kernel_update.yml"
        return 1
    fi
    local status=0
    pytest -q -ra tests/integration/test_runner.py || status=$?
    if [ "$status" -ne 0 ]; then
        echo "result: pytest exit $status"
        return 1
    fi
    echo "result: an AWX job (check, then run) through ansible-runner: events, set_stats artifact and VMs checked"
}

# ----------------------------------------------------------------------------- run

summary=()
failed=()
total_start=$SECONDS
for gate in "${gates[@]}"; do
    log=$OUT/$gate.log
    start=$SECONDS
    # Not "|| status=$?": that would switch off set -e inside the gate.
    set +e
    ( set -euo pipefail; "gate_$gate" ) > "$log" 2>&1
    status=$?
    set -e
    elapsed=$((SECONDS - start))
    result=$(sed -n 's/^result: //p' "$log" | tail -n 1)
    if [ "$status" -eq 0 ]; then
        line=$(printf '%-12s passed  %4d s  %s' "$gate" "$elapsed" "$result")
    else
        line=$(printf '%-12s FAILED  %4d s  %s' "$gate" "$elapsed" "${result:-exit $status}")
        failed+=("$gate")
        echo "--- $gate: end of $log" >&2
        tail -n 40 "$log" >&2
    fi
    echo "ecosystem.sh: $line"
    summary+=("$line")
done

echo "ecosystem.sh: ${#gates[@]} gates in $((SECONDS - total_start)) s; logs in $OUT/"
for line in "${summary[@]}"; do
    echo "  $line"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "ecosystem.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
