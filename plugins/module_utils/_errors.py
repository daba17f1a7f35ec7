# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""The one exception hierarchy of hypervisor.cpr.

Every error names the VM it concerns (when there is one) and says what the
operator can do about it, so a module can show ``str(error)`` as it is.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence


class CprError(Exception):
    """Base class: an error an operator can act on.

    result holds what a call that failed for some VMs did for the others
    (a module returns it beside msg).
    """

    def __init__(self, message: str, vm: Optional[str] = None, hint: Optional[str] = None,
                 result: Optional[Dict[str, Any]] = None) -> None:
        self.message = message
        self.vm = vm
        self.hint = hint
        self.result = result or {}
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"VM {self.vm}: {self.message}" if self.vm else self.message
        if not self.hint:
            return text
        return f"{text}. {self.hint[0].upper()}{self.hint[1:]}"


class MissingDependencyError(CprError):
    """A Python library the engine needs is not installed on the host."""


class OptionError(CprError):
    """An option's value cannot work (a timeout that is not a positive number, say)."""


class SelectionError(OptionError):
    """The VM selection (names, explicit list, JMESPath query) is invalid."""


class ConnectionFailedError(CprError):
    """A QMP or guest agent socket could not be reached."""


class SocketMissingError(ConnectionFailedError):
    """The socket path does not exist or is not a socket."""


class SocketPermissionError(ConnectionFailedError):
    """The socket exists but this user may not connect to it."""


class NotAnsweringError(ConnectionFailedError):
    """Connected, but no answer within the timeout; also any wait that ran out of time."""


class CommandFailedError(CprError):
    """QEMU or the guest agent answered a command with an error."""


class NotReadyError(CprError):
    """A VM cannot take part in a checkpoint and restart, with every reason."""


class RolledBackError(CprError):
    """A VM saved without fault, rolled back because another VM of the same all-or-nothing call failed."""

    def __init__(self, vm: str) -> None:
        super().__init__("rolled back and resumed, because another VM of this call failed to save", vm)


class StateDirError(CprError):
    """The state directory is unsafe or unusable."""


class ManifestError(CprError):
    """A manifest, a record or a state file is missing, unreadable or inconsistent."""


class LockedError(CprError):
    """Another hypervisor.cpr run holds the host."""


class RunLockedError(LockedError):
    """Another run holds the host's run lock; holder is what its lock records."""

    def __init__(self, message: str, holder: Dict[str, Any], hint: Optional[str] = None) -> None:
        self.holder = holder
        super().__init__(message, hint=hint, result={"holder": holder})


def raise_failures(names: Sequence[str], results: Sequence[Any], detail: Dict[str, Any], done_label: str,
                   hint: str) -> None:
    """One error for the VMs of a concurrent call that failed (results holds their exceptions, in names' order).

    detail, what the call did for the others, travels with it, plus one entry per failed VM under errors.
    """
    failed = [(name, result) for name, result in zip(names, results) if isinstance(result, BaseException)]
    if not failed:
        return
    detail = dict(detail, errors=[{"name": name, "msg": str(error)} for name, error in failed])
    done: List[str] = [vm["name"] for vm in detail.get("vms", [])]
    if len(failed) == 1 and not done and isinstance(failed[0][1], CprError):
        failed[0][1].result = detail
        raise failed[0][1]
    raise CprError("; ".join(str(failure[1]) for failure in failed) + (f". {done_label}: {', '.join(done)}" if done else ""),
                   hint=hint, result=detail)
