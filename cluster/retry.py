"""The retry and quarantine policy of the actor pool, as a plain object (no Ray), unit-tested alone.

The pool (``cluster/pool.py``) asks it what to do with a failure and records nothing itself.
"""
from __future__ import annotations

from dataclasses import dataclass

from dreamfleet.engine.runner import WorkItem


@dataclass
class RetryDecision:
    retry: bool  # True: run the image again alone; False: quarantine it
    failures: int  # failed attempts so far, this one included


class RetryPolicy:
    """The retry and quarantine rules, without Ray: how many failures an image may have, and when.

    A failed shard of several images charges each image one failure and is split in halves; an
    image that fails alone is retried until it has failed ``retries + 1`` times, then quarantined.
    """

    def __init__(self, retries: int) -> None:
        if retries < 0:
            raise ValueError(f"--retries must be >= 0, got {retries}")
        self.retries = retries
        self.failures: dict[str, int] = {}

    def split(self, items: list[WorkItem]) -> list[list[WorkItem]]:
        """A failed shard of >1 images: each charged one failure; returns the two halves to requeue."""
        for rel in dict.fromkeys(item.rel for item in items):  # a video's segments: one failure for the video
            self.failures[rel] = self.failures.get(rel, 0) + 1
        half = len(items) // 2
        return [items[:half], items[half:]]

    def charge(self, rel: str) -> RetryDecision:
        """One more failure for the image ``rel`` alone: retry it, or quarantine it once over budget."""
        n = self.failures[rel] = self.failures.get(rel, 0) + 1
        return RetryDecision(retry=n <= self.retries, failures=n)

    def attempts(self, rel: str, succeeded: bool) -> int:
        """Attempts an image took: its failures, plus the one that succeeded."""
        return self.failures.get(rel, 0) + (1 if succeeded else 0)


__all__ = ["RetryDecision", "RetryPolicy"]
