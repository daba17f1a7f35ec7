# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use it from other collections or standalone plugins/modules.
"""poll(): the one way every wait of the engine waits, for a QEMU to answer, a migration to end, a guest to sleep.
"""

from __future__ import annotations

import asyncio
import time
import math
from typing import Awaitable, Callable, Optional, TypeVar

from ansible_collections.hypervisor.cpr.plugins.module_utils._errors import OptionError

# poll() checks first after 1 ms (a small VM saves or loads in a few milliseconds), then ever less often, up to
# every 10 ms: a check is a QMP round trip or a look at /proc, cheap next to the work it waits for.
FIRST_POLL_SECONDS = 0.001
POLL_SECONDS = 0.01

T = TypeVar("T")


async def poll(check: Callable[[], Awaitable[Optional[T]]], timeout: float,
               expired: Callable[[], BaseException], every: float = POLL_SECONDS) -> T:
    """Call check until it returns something other than None, and return that.

    After timeout seconds the exception expired() builds is raised: it says what did not happen, for which VM.
    check may raise to end the wait early (QEMU died, the guest refused). every: the longest pause between checks
    (a wait inside a pause of milliseconds checks more often).
    """
    deadline = time.monotonic() + timeout
    delay = FIRST_POLL_SECONDS
    while True:
        outcome = await check()
        if outcome is not None:
            return outcome
        if time.monotonic() > deadline:
            raise expired()
        await asyncio.sleep(delay)
        delay = min(delay * 2, every)


def check_timeout(value: float, option: str = "timeout") -> None:
    """A timeout must be a positive, finite number of seconds: nan would wait forever, 0 or less not at all."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise OptionError(f"{option} must be a positive number of seconds, not {value!r}",
                          hint=f"give {option} in seconds, for example 300")
