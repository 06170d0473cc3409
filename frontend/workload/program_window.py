"""What agent-session formats (copilot_otel, tracelab) share: the `trace` options applied per session (a time
window on the trace's clock, `start_s`/`end_s` seconds from the earliest session's start, a seeded `sample` and a
limit, in that order, sessions taken in start order, reading stops at the limit), and sessions of LLM calls turned
into agent programs (one turn per call, the tool gap before it as the edge from the previous turn)."""

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


def select_sessions(path, sessions: Sequence[T], start_ns: Callable[[T], int], *, start_s: float | None,
                    end_s: float | None, sample: float, seed: int, limit: int | None) -> Selection:
    """`select`, and an error naming the file when no session is left to replay."""
    from frontend.workload.jsonl import WorkloadError

    sel = select(sessions, start_ns, start_s=start_s, end_s=end_s, sample=sample, seed=seed, limit=limit)
    if not sel.kept:
        raise WorkloadError(f"{path}: no sessions to replay ({len(sessions)} read, {sel.outside} outside the "
                            f"time window, {sel.unsampled} not sampled)")
    return sel


def sessions_to_programs(sessions: Sequence, calls_of: Callable, time_scale: float, origin_ns: int) -> list:
    """One ProgramSpec per session: turn k is call k (`calls_of(session)`: items with prompt_tokens,
    output_tokens, line); from the second call on, an edge from the previous turn named `session.edge_tool(k)`
    with gap `session.gap_ns(k)`, and the previous turn as context parent when this call's prompt holds its whole
    context (prompt + output), only the rest being new tokens."""
    from frontend.agents.program import Edge, ProgramSpec, TurnSpec
    from frontend.workload.jsonl import MAX_TIME_NS, WorkloadError

    progs = []
    for sess in sessions:
        pid = sess.name
        calls = calls_of(sess)
        turns: list[TurnSpec] = []
        for k, c in enumerate(calls):
            spec = TurnSpec(f"{pid}.t{k}", pid, k, c.prompt_tokens, c.output_tokens, full_input_tokens=c.prompt_tokens)
            if k:
                prev = calls[k - 1]
                spec.parents = [Edge(turns[-1].turn_id, sess.edge_tool(k), sess.gap_ns(k))]
                ctx = prev.prompt_tokens + prev.output_tokens
                if c.prompt_tokens >= ctx:
                    spec.context_parent = turns[-1].turn_id
                    spec.new_tokens = c.prompt_tokens - ctx
            turns.append(spec)
        arrival = round(max(0, sess.start_ns - origin_ns) * time_scale)
        if arrival > MAX_TIME_NS:
            raise WorkloadError(f"line {calls[0].line}: session {pid}: arrival x time_scale = {arrival:.3g} ns "
                                f"is beyond the simulable {MAX_TIME_NS:.0e} ns")
        prog = ProgramSpec(pid, int(arrival), turns)
        prog.validate()
        progs.append(prog)
    return progs
