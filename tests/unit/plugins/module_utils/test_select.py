"""Which VMs a call works on: names, held names, duplicates and queries, decided before anything is touched."""

import pytest

from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import VmEndpoint
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import SelectionError
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import CprVerdict, VmFacts
from ansible_collections.hypervisor.cpr.plugins.module_utils._select import (
    check_unique_names,
    compile_query,
    filter_by_query,
    select_by_name,
    select_endpoints,
)


def _endpoints(*names):
    return [VmEndpoint(name=n, qmp_socket=f"/run/{n}.qmp") for n in names]


def test_select_by_name_keeps_order_and_refuses_unknown():
    assert [e.name for e in select_by_name(_endpoints("a", "b", "c"), ["c", "a"])] == ["c", "a"]
    with pytest.raises(SelectionError, match="no running VM is named zz .VMs found: a, b"):
        select_by_name(_endpoints("a", "b"), ["a", "zz"])


def test_duplicate_names_refused():
    with pytest.raises(SelectionError, match="two VMs are named a"):
        check_unique_names(_endpoints("a", "a"))


@pytest.mark.parametrize("running, names, held, selected", [
    # No names: every running VM, in discovery order.
    (("a", "b", "c"), None, (), ["a", "b", "c"]),
    # Names keep their order; a name given twice counts once.
    (("a", "b", "c"), ["c", "a", "c"], (), ["c", "a"]),
    # Held names (saved or shut down by an earlier run) are known but not worked on again.
    (("a", "b"), ["a", "gone"], ("gone",), ["a"]),
    (("a", "b"), None, ("b",), ["a"]),
    # Everything named is held: nothing, not every VM.
    (("a", "b"), ["gone"], ("gone",), []),
    # A clash among VMs not worked on is not ours to refuse.
    (("a", "dup", "dup"), ["a"], (), ["a"]),
    (("a", "dup", "dup"), None, ("dup",), ["a"]),
    (("a",), None, (), ["a"]),
    ((), None, (), []),
])
def test_select_endpoints(running, names, held, selected):
    assert [e.name for e in select_endpoints(_endpoints(*running), names, held)] == selected


@pytest.mark.parametrize("running, names, held, error", [
    (("a", "b"), ["a", "zz"], (), "no running VM is named zz"),
    (("a", "dup", "dup"), None, (), "two VMs are named dup"),
    (("a", "dup", "dup"), ["dup"], (), "two VMs are named dup"),
])
def test_select_endpoints_refuses(running, names, held, error):
    with pytest.raises(SelectionError, match=error):
        select_endpoints(_endpoints(*running), names, held)


def _facts(name, ready, vfio=()):
    return VmFacts(name, f"/run/{name}.qmp", None, source="discovered", vfio=[{"id": d} for d in vfio],
                   cpr=CprVerdict(ready, "kexec", True, 0))


FLEET = [_facts("web1", True), _facts("db1", False), _facts("gpu1", True, ["hostdev0"])]


@pytest.mark.parametrize("query, chosen", [
    (None, ["web1", "db1", "gpu1"]),
    ("[?cpr.ready]", ["web1", "gpu1"]),
    ("[?cpr.ready && length(vfio) == `0`]", ["web1"]),
    ("[?name == 'nope']", []),
    # null (a query that selects nothing at all) is no VM.
    ("[0].missing", []),
])
def test_filter_by_query(query, chosen):
    assert [f.name for f in filter_by_query(compile_query(query), query, FLEET)] == chosen


@pytest.mark.parametrize("query, error", [
    ("[?cpr.ready", "is not a valid JMESPath expression"),
    ("[].name", "must return a list of VMs, not list"),
    ("length(@)", "must return a list of VMs, not int"),
])
def test_bad_queries_are_refused_with_the_query_named(query, error):
    with pytest.raises(SelectionError, match=error) as failure:
        filter_by_query(compile_query(query), query, FLEET)
    assert repr(query) in str(failure.value)
