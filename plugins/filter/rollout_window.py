# -*- coding: utf-8 -*-
# Copyright: hypervisor.cpr contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: rollout_window
short_description: Whether a moment is inside a maintenance window, and when the window closes or opens next
version_added: 0.2.0
description:
  - The window of the playbook C(hypervisor.cpr.rolling_kernel_update) (C(rolling_window)) opens on each of its days at
    its start time and closes at its end time, both in its time zone. An end at or before the start closes it on the
    next day (a night window such as V(22:00) to V(05:00) belongs to the day it starts on); an end equal to the start
    makes it 24 hours long.
  - An empty window (V({}), V(null)) is always open.
  - Bad days, times or time zones raise an error that names the value.
author:
  - hypervisor.cpr maintainers (@hypervisor-cpr)
options:
  _input:
    description:
      - The window, a dictionary with C(days) (a list or a comma-separated string of day names or ranges such as
        V(mon-fri); default every day), C(start) and C(end) (V(HH:MM) or V(HH:MM:SS), V(24:00) for midnight at the end
        of a day; default V(00:00)) and C(timezone) (an IANA name such as V(Europe/Berlin); default V(UTC)).
    type: dict
    required: true
  now:
    description: The moment, as seconds since the epoch or an ISO 8601 time with its offset.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Is it inside the window now?
  ansible.builtin.debug:
    msg: "{{ {'days': 'mon-fri', 'start': '22:00', 'end': '05:00', 'timezone': 'Europe/Berlin'}
             | hypervisor.cpr.rollout_window(now().timestamp()) }}"
"""

RETURN = r"""
_value:
  description:
    - C(open) (bool), C(now), C(opens_at) (the next opening when closed, else V(null)), C(closes_at) (when open, else
      V(null)), all as ISO 8601 times in the window's time zone; C(timezone); C(window) (the window in words, such as
      V(mon-fri 22:00-05:00 Europe/Berlin)); C(message), a sentence for people.
  type: dict
"""

import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Dict, List, Mapping, Optional, Tuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - outside Ansible
    AnsibleFilterError = ValueError  # type: ignore[misc,assignment]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(name: str) -> int:
    """Monday 0 to Sunday 6, from a day's name or its first three letters, in any case."""
    key = name.strip().lower()
    for number, (short, full) in enumerate(zip(DAYS, FULL_DAYS)):
        if key in (short, full):
            return number
    raise AnsibleFilterError(f"rolling_window: {name!r} is not a day (mon, tue, wed, thu, fri, sat, sun)")


def parse_days(days: Any) -> List[int]:
    """Weekday numbers (Monday 0) from a list or a comma-separated string of names and ranges (mon-fri, fri-mon)."""
    if days in (None, "", []):
        return list(range(7))
    items = days.split(",") if isinstance(days, str) else list(days)
    found = set()
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise AnsibleFilterError(f"rolling_window: {item!r} is not a day (mon, tue, wed, thu, fri, sat, sun)")
        first, sep, last = item.partition("-")
        start = _day(first)
        end = _day(last) if sep else start
        found.update((start + offset) % 7 for offset in range((end - start) % 7 + 1))
    return sorted(found)


def parse_time(value: Any, what: str) -> Tuple[time, bool]:
    """(time of day, whether it is 24:00, the end of the day) from HH:MM or HH:MM:SS."""
    match = _TIME.match(str(value).strip()) if value is not None else None
    if match:
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        if (hour, minute, second) == (24, 0, 0):
            return time(0), True
        if hour < 24 and minute < 60 and second < 60:
            return time(hour, minute, second), False
    raise AnsibleFilterError(f"rolling_window: {what} {value!r} is not a time of day (HH:MM or HH:MM:SS, 00:00 to 24:00)")


def parse_moment(now: Any) -> datetime:
    """An aware datetime from seconds since the epoch or an ISO 8601 time with its offset."""
    if isinstance(now, datetime):
        moment = now
    elif isinstance(now, (int, float)) and not isinstance(now, bool):
        return datetime.fromtimestamp(now, timezone.utc)
    else:
        text = str(now).strip()
        try:
            return datetime.fromtimestamp(float(text), timezone.utc)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError as exc:
            raise AnsibleFilterError(f"{now!r} is not a time (seconds since the epoch, or ISO 8601 with an offset)") from exc
    if moment.tzinfo is None:
        raise AnsibleFilterError(f"{now!r} has no time zone offset (add one, such as +01:00 or Z)")
    return moment


class Window:
    """A weekly maintenance window in a time zone."""

    def __init__(self, spec: Mapping[str, Any]):
        unknown = set(spec) - {"days", "start", "end", "timezone"}
        if unknown:
            raise AnsibleFilterError(f"rolling_window: unknown keys {sorted(unknown)} (days, start, end, timezone)")
        self.days = parse_days(spec.get("days"))
        self.start, start_is_24 = parse_time(spec.get("start") or "00:00", "start")
        if start_is_24:
            raise AnsibleFilterError("rolling_window: start 24:00 is not a time a window can open at (use 00:00)")
        self.end, self.end_is_24 = parse_time(spec.get("end") or "00:00", "end")
        self.zone_name = str(spec.get("timezone") or "UTC")
        try:
            self.zone = ZoneInfo(self.zone_name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise AnsibleFilterError(f"rolling_window: unknown time zone {self.zone_name!r} (an IANA name such as "
                                     "Europe/Berlin)") from exc

    def span(self, day: date) -> Tuple[datetime, datetime]:
        """When the window that opens on this day opens and closes."""
        opens = datetime.combine(day, self.start, self.zone)
        if self.end_is_24:
            closes = datetime.combine(day + timedelta(days=1), time(0), self.zone)
        elif self.end > self.start:
            closes = datetime.combine(day, self.end, self.zone)
        else:
            closes = datetime.combine(day + timedelta(days=1), self.end, self.zone)
        return opens, closes

    def describe(self) -> str:
        if self.days == list(range(7)):
            days = "every day"
        else:
            days = ",".join(DAYS[d] for d in self.days)
        end = "24:00" if self.end_is_24 else _clock(self.end)
        return f"{days} {_clock(self.start)}-{end} {self.zone_name}"

    def state(self, moment: datetime) -> Dict[str, Any]:
        local = moment.astimezone(self.zone)
        for offset in (-1, 0):
            day = local.date() + timedelta(days=offset)
            if day.weekday() in self.days:
                opens, closes = self.span(day)
                if opens <= moment < closes:
                    return self._result(local, True, None, closes.astimezone(self.zone))
        for offset in range(0, 9):
            day = local.date() + timedelta(days=offset)
            if day.weekday() in self.days:
                opens, _closes = self.span(day)
                if opens > moment:
                    return self._result(local, False, opens.astimezone(self.zone), None)
        raise AnsibleFilterError(f"rolling_window: {self.describe()} never opens")  # pragma: no cover - days is never empty

    def _result(self, local: datetime, is_open: bool, opens: Optional[datetime], closes: Optional[datetime]) -> Dict[str, Any]:
        window = self.describe()
        if is_open:
            message = f"inside the window ({window}) until {_show(closes)}"
        else:
            message = f"outside the window ({window}) at {_show(local)}; it opens next at {_show(opens)}"
        return {
            "open": is_open,
            "now": local.isoformat(),
            "opens_at": opens.isoformat() if opens else None,
            "closes_at": closes.isoformat() if closes else None,
            "timezone": self.zone_name,
            "window": window,
            "message": message,
        }


def _clock(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


def _show(moment: Optional[datetime]) -> str:
    """Such as Fri 2026-11-27 22:00 CET (seconds only where there are any)."""
    if moment is None:
        return "never"
    return moment.strftime("%a %Y-%m-%d %H:%M" + (":%S" if moment.second else "") + " %Z")


def rollout_window(window: Optional[Mapping[str, Any]], now: Any) -> Dict[str, Any]:
    moment = parse_moment(now)
    if not window:
        return {"open": True, "now": moment.isoformat(), "opens_at": None, "closes_at": None, "timezone": None,
                "window": None, "message": "no window: any time"}
    if not isinstance(window, Mapping):
        raise AnsibleFilterError(f"rolling_window must be a dictionary (days, start, end, timezone), not {window!r}")
    return Window(window).state(moment)


class FilterModule:
    """The rolling playbook's maintenance window."""

    def filters(self) -> Dict[str, Any]:
        return {"rollout_window": rollout_window}
