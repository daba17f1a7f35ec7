# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""Which VMs a call works on: an explicit list or those discovered, narrowed by names and a JMESPath query.

The whole selection is checked before any VM is touched: the query compiles, every name is known, and no two
VMs worked on share a name (they would share a manifest).
"""

from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, TypeVar

from ansible_collections.hypervisor.cpr.plugins.module_utils._discover import VmEndpoint, discover, explicit_endpoints
from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import CprError, MissingDependencyError, SelectionError
from ansible_collections.hypervisor.cpr.plugins.module_utils._facts import FactsOptions, VmFacts, gather_all

try:
    import jmespath

    JMESPATH_IMPORT_ERROR: Optional[str] = None
except ImportError:
    JMESPATH_IMPORT_ERROR = traceback.format_exc()


class _Named(Protocol):  # pylint: disable=too-few-public-methods
    name: str


H = TypeVar("H", bound=_Named)


@dataclass(frozen=True)
class Selection:
    """The selection options every module that works on running VMs shares (doc fragment vm_selection).

    An empty list is refused: an inventory variable that rendered empty must not select every VM of the host.
    """

    vms: Optional[List[Dict[str, Any]]] = None
    names: Optional[List[str]] = None
    query: Optional[str] = None

    def __post_init__(self) -> None:
        check_list(self.vms, "vms")
        check_list(self.names, "names")


def check_list(values: Optional[List[Any]], option: str) -> None:
    """None means every VM; an empty list would mean it too, which is never what an empty list meant."""
    if values is not None and len(values) == 0:
        raise SelectionError(
            f"{option} is an empty list, which would select every VM of the host",
            hint=f"leave {option} out to mean every VM, or give at least one; an inventory variable that rendered "
            "empty is the usual cause")


def some_names(names: Sequence[str], most: int = 5) -> str:
    """A list of names for a message, cut after a few: 'a, b, c and 17 more'."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def compile_query(query: Optional[str]) -> Any:
    """Compile a JMESPath selection early, so a typo fails before any VM is touched."""
    if not query:
        return None
    if JMESPATH_IMPORT_ERROR is not None:
        raise MissingDependencyError(
            "the Python library jmespath is needed for query but is not installed",
            hint="install it on the hypervisor (pip install jmespath), or select VMs with names instead",
        )
    try:
        return jmespath.compile(query)
    except jmespath.exceptions.JMESPathError as exc:
        raise SelectionError(f"query {query!r} is not a valid JMESPath expression: {exc}",
                             hint="a query selects from the list of VMs, for example [?cpr.ready && !vfio]") from None


def run_query(expression: Any, query: str, vms: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Apply a compiled query to VM facts; it must yield VMs (objects with a name)."""
    try:
        result = expression.search(vms)
    except jmespath.exceptions.JMESPathError as exc:
        raise SelectionError(f"query {query!r} failed on the list of VMs: {exc}",
                             hint="check the field names and types against what vm_status returns") from None
    if result is None:
        return []
    if not isinstance(result, list) or not all(isinstance(vm, dict) and "name" in vm for vm in result):
        raise SelectionError(
            f"query {query!r} must return a list of VMs, not {type(result).__name__}",
            hint="filter the list instead of projecting fields, for example [?cpr.ready] rather than [].name",
        )
    return result


def filter_by_query(expression: Any, query: Optional[str], facts: List[VmFacts]) -> List[VmFacts]:
    """The VMs a compiled query keeps (all of them without a query)."""
    if expression is None:
        return facts
    chosen = {vm["name"] for vm in run_query(expression, query or "", [f.to_dict() for f in facts])}
    return [f for f in facts if f.name in chosen]


def running(selection: Selection) -> List[VmEndpoint]:
    """The VMs the selection chooses from: its explicit list, or every QEMU discovered on the host."""
    return explicit_endpoints(selection.vms) if selection.vms else discover()


def select_by_name(endpoints: List[VmEndpoint], names: Optional[Iterable[str]]) -> List[VmEndpoint]:
    """Keep the named VMs; an unknown name is an error, raised before anything is touched."""
    if not names:
        return endpoints
    wanted = list(dict.fromkeys(names))
    by_name = {e.name: e for e in endpoints}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        known = some_names(sorted(by_name), 10) or "none"
        raise SelectionError(
            f"no running VM is named {some_names(unknown)} (VMs found: {known})",
            hint="check the names, or list the VM explicitly with its qmp_socket if its argv has no -name",
        )
    return [by_name[n] for n in wanted]


def check_unique_names(endpoints: List[VmEndpoint]) -> None:
    """Two VMs with one name would share a manifest: refuse."""
    seen: Dict[str, VmEndpoint] = {}
    for endpoint in endpoints:
        if endpoint.name in seen:
            raise SelectionError(
                f"two VMs are named {endpoint.name} (QMP sockets {seen[endpoint.name].qmp_socket} and {endpoint.qmp_socket})",
                hint="give every VM a unique -name, or list them explicitly with distinct names",
            )
        seen[endpoint.name] = endpoint


def select_endpoints(found: List[VmEndpoint], names: Optional[List[str]],
                     held: Collection[str] = ()) -> List[VmEndpoint]:
    """The running VMs to work on: the named ones, or all of them, except those held.

    held are names the state directory accounts for (saved, or shut down): known, so not an error when named,
    and not worked on again. Only the VMs worked on must have unique names: a clash elsewhere on the host is not
    ours to refuse.
    """
    wanted = [n for n in dict.fromkeys(names or [e.name for e in found]) if n not in held]
    if not wanted:
        return []
    check_unique_names([e for e in found if e.name in wanted])
    return select_by_name(found, wanted)


def select_vms(selection: Selection, options: FactsOptions, held: Collection[str] = ()) -> List[VmFacts]:
    """The whole selection: the chosen running VMs with their facts, the query applied last."""
    expression = compile_query(selection.query)
    endpoints = select_endpoints(running(selection), selection.names, held)
    facts = asyncio.run(gather_all(endpoints, options))
    return filter_by_query(expression, selection.query, facts)


def select_held(held: Sequence[H], names: Optional[List[str]],
                refuse: Callable[[List[str]], CprError]) -> Tuple[List[H], Dict[str, VmEndpoint]]:
    """The records the state directory holds (manifests, stop records) of the named VMs, all of them without names;
    and the running VMs by name.

    A name with neither a record nor a running VM is refused with refuse(unknown names), before anything is touched.
    """
    check_list(names, "names")
    running_vms = {e.name: e for e in discover()}
    if names is None:
        return list(held), running_vms
    unknown = [n for n in names if n not in {h.name for h in held} and n not in running_vms]
    if unknown:
        raise refuse(unknown)
    return [h for h in held if h.name in names], running_vms
