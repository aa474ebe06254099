"""Numeric option ranges that travel with their dataclass fields: ``limited(default, lo=..., hi=...)``.

``DreamConfig`` (engine/config.py) and the cluster's ``ClusterOptions`` declare each number's documented range
on the field itself; ``check_limits`` enforces them all (finite, inside the range) and ``--help`` prints them.
A bad value is a ValueError naming the job-file key and the flag, one line, before anything is written.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    """A numeric option's documented range, kept with its field: finite, ``lo <= v`` (``lo < v`` when
    ``lo_open``) and ``v <= hi``; None bounds are open-ended. ``note`` says what special values mean."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    note: str = ""
    flag: str = ""  # the command-line flag when it is not --FIELD-NAME

    def describe(self, integer: bool = False) -> str:
        if integer and self.lo is not None and self.hi is not None:
            text = f"in {self.lo:g}..{self.hi:g}"
        else:
            parts = [f"{'>' if self.lo_open else '>='} {self.lo:g}"] if self.lo is not None else []
            parts += [f"<= {self.hi:g}"] if self.hi is not None else []
            text = " and ".join(parts)
            text = text if integer else f"a finite number {text}".rstrip()
        return f"{text} ({self.note})" if self.note else text

    def check(self, name: str, value) -> None:
        """ValueError naming the option (job-file key and flag) when ``value`` is NaN, infinite or out of range."""
        if value is None or isinstance(value, bool):
            return
        ok = math.isfinite(value)
        if ok and self.lo is not None:
            ok = value > self.lo if self.lo_open else value >= self.lo
        if ok and self.hi is not None:
            ok = value <= self.hi
        if not ok:
            raise ValueError(f"{name} must be {self.describe(isinstance(value, int))}, got {value!r} "
                             f"({self.flag or '--' + name.replace('_', '-')})")


def limited(default, lo: float | None = None, hi: float | None = None, lo_open: bool = False, note: str = "",
            flag: str = ""):
    """A dataclass field whose value must lie in ``Limits(...)`` (see :func:`check_limits`)."""
    return field(default=default, metadata={"limits": Limits(lo, hi, lo_open, note, flag)})


def field_limits(cls) -> dict[str, Limits]:
    """{field name: Limits} of a dataclass: the validation table, read from the fields themselves."""
    return {f.name: f.metadata["limits"] for f in dataclasses.fields(cls) if "limits" in f.metadata}


def check_limits(obj) -> None:
    """Every limited field of the dataclass instance ``obj`` inside its range (first offender raises)."""
    for name, lim in field_limits(type(obj)).items():
        lim.check(name, getattr(obj, name))


__all__ = ["Limits", "check_limits", "field_limits", "limited"]
