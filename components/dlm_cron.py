"""AWS's six-field cron expressions, as a DLM schedule takes them, checked field by field.

`cron(minutes hours day-of-month month day-of-week year)`, with AWS's rules: `?` in exactly
one of day-of-month and day-of-week; day-of-month takes `L` and `W`, day-of-week `1`-`7`
(or SUN-SAT), `L` and `#`; months JAN-DEC. DLM runs a schedule at most once an hour and at
least once a year ("Amazon Data Lifecycle Manager, Create a custom policy: the interval
between 1 hour and 1 year"), so the minutes are one value, the year is every year, and the
days named must come round within a year: 31 February never does. Pure functions; each
problem says which field and what it allows.
"""

from __future__ import annotations

import calendar
import datetime
import re
from dataclasses import dataclass
from typing import Callable, Optional

_EXPRESSION = re.compile(r"cron\((?P<fields>[^()]{1,200})\)")
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
FIELD_NAMES = ("minutes", "hours", "day-of-month", "month", "day-of-week", "year")
# The window the schedule is played over to find its longest gap: eight whole years, two of
# them leap years, every weekday pattern of a month included.
_WINDOW = (datetime.date(2027, 1, 1), datetime.date(2034, 12, 31))
MAX_GAP_DAYS = 366


class CronError(ValueError):
    """What is wrong with one field (or the whole), in the terms the README uses."""


@dataclass(frozen=True)
class DlmCron:
    minute: int
    hours: frozenset[int]
    day_matches: Callable[[datetime.date], bool]


def _number(text: str, low: int, high: int, names: tuple[str, ...] = (), first_name: int = 0) -> int:
    if names and text.upper() in names:
        return names.index(text.upper()) + first_name
    if not re.fullmatch(r"[0-9]{1,4}", text) or not low <= int(text) <= high:
        raise ValueError(text)
    return int(text)


def _values(spec: str, low: int, high: int, names: tuple[str, ...] = (), first_name: int = 0) -> frozenset[int]:
    """A field of numbers: `*`, `5`, `1-5`, `*/6`, `0-12/3`, `MON,WED` and lists of them."""
    found: set[int] = set()
    for part in spec.split(","):
        base, _, step_text = part.partition("/")
        step = _number(step_text, 1, high) if step_text else 1
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = (_number(first, low, high, names, first_name), _number(last, low, high, names, first_name))
            if start > end:
                raise ValueError(part)
        else:
            start = _number(base, low, high, names, first_name)
            end = high if step_text else start
        found.update(range(start, end + 1, step))
    return frozenset(found)


def _day_of_month(spec: str) -> Callable[[datetime.date], bool]:
    if spec == "L":
        return lambda d: d.day == calendar.monthrange(d.year, d.month)[1]
    if spec == "LW":
        return lambda d: d == _last_weekday(d.year, d.month)
    weekday = re.fullmatch(r"([0-9]{1,2})W", spec)
    if weekday:
        day = _number(weekday.group(1), 1, 31)
        return lambda d: d == _nearest_weekday(d.year, d.month, day)
    days = _values(spec, 1, 31)
    return lambda d: d.day in days


def _day_of_week(spec: str) -> Callable[[datetime.date], bool]:
    # AWS counts 1 (Sunday) to 7 (Saturday); Python's weekday() 0 (Monday) to 6 (Sunday).
    def aws_weekday(d: datetime.date) -> int:
        return (d.weekday() + 1) % 7 + 1

    nth = re.fullmatch(r"([0-9A-Za-z]{1,3})#([1-5])", spec)
    if nth:
        weekday, which = _number(nth.group(1), 1, 7, WEEKDAYS, 1), int(nth.group(2))
        return lambda d: aws_weekday(d) == weekday and (d.day - 1) // 7 + 1 == which
    last = re.fullmatch(r"([0-9A-Za-z]{1,3})L", spec)
    if last:
        weekday = _number(last.group(1), 1, 7, WEEKDAYS, 1)
        return lambda d: aws_weekday(d) == weekday and d.day + 7 > calendar.monthrange(d.year, d.month)[1]
    weekdays = _values(spec, 1, 7, WEEKDAYS, 1)
    return lambda d: aws_weekday(d) in weekdays


def _last_weekday(year: int, month: int) -> datetime.date:
    day = datetime.date(year, month, calendar.monthrange(year, month)[1])
    while day.weekday() > 4:
        day -= datetime.timedelta(days=1)
    return day


def _nearest_weekday(year: int, month: int, day: int) -> Optional[datetime.date]:
    last = calendar.monthrange(year, month)[1]
    if day > last:
        return None
    date = datetime.date(year, month, day)
    if date.weekday() == 5:  # Saturday: the Friday before, or the Monday after on the 1st
        return date - datetime.timedelta(days=1) if day > 1 else date + datetime.timedelta(days=2)
    if date.weekday() == 6:  # Sunday: the Monday after, or the Friday before on the last day
        return date + datetime.timedelta(days=1) if day < last else date - datetime.timedelta(days=2)
    return date


def parse_dlm_cron(text: str) -> DlmCron:
    """The schedule of `cron(...)`, or a CronError naming each field that is wrong."""
    match = _EXPRESSION.fullmatch(text)
    fields = match.group("fields").split(" ") if match else []
    if len(fields) != 6:
        raise CronError(
            "six fields separated by single spaces: cron(minutes hours day-of-month month day-of-week year)"
        )
    dom, dow, year = fields[2], fields[4], fields[5]
    problems = []
    if (dom == "?") == (dow == "?"):
        problems.append("'?' in exactly one of day-of-month and day-of-week")

    def field(index: int, parse: Callable[[str], object], allowed: str):
        try:
            return parse(fields[index])
        except (ValueError, IndexError):
            problems.append(f"{FIELD_NAMES[index]} {fields[index]!r}: {allowed}")
            return None

    minute = field(0, lambda s: _number(s, 0, 59), "one minute, 0-59 (DLM runs a schedule at most once an hour)")
    hour_set = field(1, lambda s: _values(s, 0, 23), "hours 0-23: a number, a list, a range or a step (*/6)")
    dom_match = None if dom == "?" else field(2, _day_of_month, "days 1-31, a list, a range, a step, L, LW or nW")
    months = field(3, lambda s: _values(s, 1, 12, MONTHS, 1), "months 1-12 or JAN-DEC, a list, a range or a step")
    dow_match = None if dow == "?" else field(4, _day_of_week, "weekdays 1-7 or SUN-SAT, a list, a range, nL or n#k")
    if year != "*":
        problems.append(f"year {year!r}: * (a schedule limited to some years stops taking backups)")
    if problems:
        raise CronError("; ".join(problems))
    day_rule = dom_match or dow_match
    assert day_rule is not None and months is not None and minute is not None and hour_set is not None
    cron = DlmCron(minute, hour_set, lambda d: d.month in months and day_rule(d))
    gap = longest_gap_days(cron)
    if gap > MAX_GAP_DAYS:
        raise CronError(
            f"days that come round at least once a year (DLM's longest interval); these leave {gap} days between runs"
            if gap < 10**4
            else "days that exist: no date matches the day-of-month, month and day-of-week given"
        )
    return cron


def longest_gap_days(cron: DlmCron) -> int:
    """The most days between two runs (or the window's ends and the first and last run)."""
    start, end = _WINDOW
    previous, longest = start, 0
    day = start
    while day <= end:
        if cron.day_matches(day):
            longest = max(longest, (day - previous).days)
            previous = day
        day += datetime.timedelta(days=1)
    if previous == start and not cron.day_matches(start):
        return 10**6
    return max(longest, (end - previous).days)
