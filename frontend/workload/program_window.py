"""The `trace` options of agent-session formats (copilot_otel, tracelab) applied per session: a time window on
the trace's clock (`start_s`/`end_s`, seconds from the earliest session's start), a seeded `sample` and a limit,
in that order, sessions taken in start order (reading stops at the limit)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

NS_PER_S = 1_000_000_000
T = TypeVar("T")


@dataclass
class Selection:
    kept: list
    origin_ns: int  # arrivals count from here: the window's start, else the earliest session's start
    outside: int = 0
    unsampled: int = 0

    def note(self, sample: float, seed: int) -> str:
        return ((f"; {self.outside} sessions outside the time window" if self.outside else "")
                + (f"; {self.unsampled} not sampled (sample {sample:g}, seed {seed})" if self.unsampled else ""))


def select(sessions: Sequence[T], start_ns: Callable[[T], int], *, start_s: float | None, end_s: float | None,
           sample: float, seed: int, limit: int | None) -> Selection:
    """`sessions` sorted by start; the kept ones and the counts of those left out."""
    first = min((start_ns(s) for s in sessions), default=0)
    lo = None if start_s is None else first + int(Decimal(repr(start_s)) * NS_PER_S)
    hi = None if end_s is None else first + int(Decimal(repr(end_s)) * NS_PER_S)
    rng = random.Random(seed) if sample < 1 else None
    out = Selection([], first if lo is None else lo)
    for s in sessions:
        t = start_ns(s)
        if (lo is not None and t < lo) or (hi is not None and t >= hi):
            out.outside += 1
            continue
        if rng is not None and rng.random() >= sample:
            out.unsampled += 1
            continue
        out.kept.append(s)
        if limit is not None and len(out.kept) >= limit:
            break
    return out
