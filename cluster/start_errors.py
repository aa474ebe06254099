"""Why a worker failed to start, in one line the user can act on.

An exception raised in a Ray actor's ``__init__`` (a ``MissingProvider`` naming the CUDA libraries
ONNX Runtime could not load, a missing weights file, ...) reaches the driver wrapped twice: an
``ActorDiedError`` whose first argument is the ``RayTaskError`` of the creation task, whose
``cause`` is the original exception. ``start_error`` digs it out as ``"Type: message"``; when the
cause could not be unpickled on the driver, the traceback's last line stands in (module path cut).
``StartErrors`` keeps the distinct reasons so the pool can name them when every worker failed to
start (the exit-2 line) and when a slot is given up while others run (the log).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DOTTED = re.compile(r"^(?:[A-Za-z_][\w]*\.)+(?=[A-Za-z_]\w*(?::|$))")  # "pkg.mod.Error: x" -> "Error: x"
LIMIT = 500  # characters of one reason


def _cause(exc: BaseException) -> BaseException | None:
    """The user's exception inside Ray's wrappers (None when only text survived)."""
    seen = 0
    while seen < 4:  # ActorDiedError -> RayTaskError -> cause
        seen += 1
        inner = getattr(exc, "cause", None)
        if isinstance(inner, BaseException) and inner is not exc:
            exc = inner
            continue
        args = getattr(exc, "args", ())
        if getattr(exc, "actor_init_failed", False) and args and isinstance(args[0], BaseException):
            exc = args[0]
            continue
        break
    module = type(exc).__module__ or ""
    return None if module.startswith("ray.") else exc


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    return _DOTTED.sub("", lines[-1]) if lines else ""


def start_error(exc: BaseException) -> str:
    """``"Type: message"`` of the exception that stopped an actor from starting (Ray's wrappers removed)."""
    cause = _cause(exc)
    if cause is not None:
        text = " ".join(str(cause).split())
        reason = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    else:
        reason = _last_line(str(exc)) or type(exc).__name__
    return reason[:LIMIT]


@dataclass
class StartErrors:
    """Distinct start-failure reasons in the order first seen, with the slots each hit."""

    reasons: dict[str, list[str]] = field(default_factory=dict)  # reason -> slot names

    def add(self, slot_name: str, reason: str) -> None:
        names = self.reasons.setdefault(reason, [])
        if slot_name not in names:
            names.append(slot_name)

    def summary(self, limit: int = 3) -> str:
        """``"Type: message (w0, w1)"`` per distinct reason; "" when none was seen."""
        parts = [f"{reason} ({', '.join(sorted(names))})" for reason, names in list(self.reasons.items())[:limit]]
        more = len(self.reasons) - limit
        return "; ".join(parts) + (f"; and {more} other reason(s)" if more > 0 else "")

    def all_failed_message(self) -> str:
        """The exit-2 line when no worker could be started."""
        why = self.summary()
        return ("every worker failed to start: " + why) if why else \
            "every worker failed to start; see the log for the actors' errors"


__all__ = ["StartErrors", "start_error"]
