"""`workload.kind: trace`: production traces replayed as flat requests, one module per format
(frontend/workload/azure.py, burstgpt.py, mooncake.py register themselves in frontend/workload/sources.py).

Options common to every format (TraceWorkload in frontend/config/schema.py): the format (detected from the
file's header / first line when omitted), a time window `start_s`/`end_s` on the trace's own clock (seconds
from the first row for Azure, the Timestamp column for BurstGPT, timestamp/1000 for Mooncake), a seeded
`sample` fraction, a `num_requests` limit and `time_scale`. The first request of the window arrives at
(its time - the window start) x time_scale, where the window start is `start_s`, else the trace's earliest
row read. Rows are taken in file order: window, then sample, then the limit (reading stops there).
Request ids are `req-<row>` (the 0-based data row of the file), so a window or a sample keeps the trace's ids.

CSV helpers for the formats live here too; every bad row or field is a WorkloadError naming `file:line`
and the field.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

from frontend.workload.jsonl import MAX_TIME_NS, MAX_TOKENS, WorkloadError
from frontend.workload.request import Request, TokenContent
from frontend.workload.sources import (
    TraceRow,
    WorkloadParts,
    detect_format,
    get_trace_format,
    register_source,
    resolve_path,
)

NS_PER_S = 1_000_000_000
ID_STRIDE = 10_000_000  # token ids a converted segment (key, n) gets: key * ID_STRIDE + j, j < n <= MAX_TOKENS


def resolve_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        get_trace_format(fmt)
        return fmt
    found = detect_format(path)
    if found is None:
        from frontend.workload.sources import first_line

        head = first_line(path).strip()[:80]
        raise WorkloadError(f"{path}:1: cannot tell the trace format from the first line ({head!r}); name it "
                            f"(workload.format / --workload-format)")
    return found


def read_trace(path: str | Path, fmt: str | None = None, *, num_requests: int | None = None,
               time_scale: float = 1.0, start_s: float | None = None, end_s: float | None = None,
               sample: float = 1.0, seed: int = 0, use_trace_models: bool = False
               ) -> tuple[list[Request], list[str]]:
    """The trace's requests (sorted by arrival) and notes on what was skipped or left out."""
    p = Path(path)
    if not p.is_file():
        raise WorkloadError(f"{path}: no such workload file")
    if not 0 < time_scale <= 1e6:
        raise WorkloadError(f"{path}: time_scale must be in (0, 1e6], got {time_scale}")
    if not 0 < sample <= 1:
        raise WorkloadError(f"{path}: sample must be in (0, 1], got {sample}")
    name = resolve_format(p, fmt)
    reader = get_trace_format(name)
    # the window is in seconds from the trace's first row, whatever its clock (Azure's are dates)
    lo_s = None if start_s is None else int(Decimal(repr(start_s)) * NS_PER_S)
    hi_s = None if end_s is None else int(Decimal(repr(end_s)) * NS_PER_S)
    lo = hi = None
    rng = random.Random(seed) if sample < 1 else None
    kept: list[TraceRow] = []
    skipped: Counter[str] = Counter()
    total = outside = unsampled = 0
    origin: int | None = None
    for r in reader.rows(p):
        total += 1
        if total == 1:
            lo = None if lo_s is None else r.t_ns + lo_s
            hi = None if hi_s is None else r.t_ns + hi_s
            origin = lo
        if lo is None and (origin is None or r.t_ns < origin):
            origin = r.t_ns
        if r.skip is not None:
            skipped[r.skip] += 1
            continue
        if (lo is not None and r.t_ns < lo) or (hi is not None and r.t_ns >= hi):
            outside += 1
            continue
        if rng is not None and rng.random() >= sample:
            unsampled += 1
            continue
        kept.append(r)
        if num_requests is not None and len(kept) >= num_requests:
            break  # like the JSONL reader: a limit reads no further
    if total == 0:
        raise WorkloadError(f"{p}: no rows")
    reqs: list[Request] = []
    base = origin or 0
    for r in kept:
        t = (r.t_ns - base) * time_scale
        if t > MAX_TIME_NS:
            raise WorkloadError(f"{p}:{r.line}: arrival x time_scale = {t:.3g} ns is beyond the simulable "
                                f"{MAX_TIME_NS:.0e} ns")
        content = r.content if r.content is not None else TokenContent()
        reqs.append(Request(request_id=f"req-{r.row}", arrival_ns=int(t), input_tokens=r.input_tokens,
                            output_tokens=r.output_tokens, content=content, seq=r.row,
                            model=r.model if use_trace_models else None))
    reqs.sort(key=lambda q: (q.arrival_ns, q.seq))
    for i, q in enumerate(reqs):
        q.seq = i
    notes = [f"{name} trace {p.name}: {len(reqs)} of {total} rows replayed"
             + "".join(f"; {n} skipped: {why}" for why, n in sorted(skipped.items()))
             + (f"; {outside} outside the time window" if outside else "")
             + (f"; {unsampled} not sampled (sample {sample:g}, seed {seed})" if unsampled else "")]
    if not reqs:
        raise WorkloadError(f"{p}: no requests to replay ({notes[0]})")
    return reqs, notes


@register_source("trace")
class TraceSource:
    def load(self, run, seed: int) -> WorkloadParts:
        wl = run.config.workload
        reqs, notes = read_trace(resolve_path(run, wl.path, "workload.path"), wl.format,
                                 num_requests=wl.num_requests, time_scale=wl.time_scale, start_s=wl.start_s,
                                 end_s=wl.end_s, sample=wl.sample, seed=seed, use_trace_models=wl.use_trace_models)
        return reqs, None, {}, notes


def segment_ids(content) -> list[int] | None:
    """Explicit token ids equivalent to segment content for prefix caching: equal (key, offset) give equal ids."""
    if content is None or content.segments is None:
        return content.ids if content is not None else None
    out: list[int] = []
    for key, n in content.segments:
        out.extend(range(key * ID_STRIDE, key * ID_STRIDE + n))
    return out


def convert_to_jsonl(src: str | Path, dst: str | Path, fmt: str | None = None,
                     num_requests: int | None = None) -> tuple[int, list[str]]:
    """Write a trace as the project's flat JSONL (request_id, arrival_time_ns, input_toks, output_toks and,
    when the trace carries prefix structure, input_tok_ids); returns (requests written, notes)."""
    reqs, notes = read_trace(src, fmt, num_requests=num_requests)
    out = Path(dst)
    if out.is_dir():
        raise WorkloadError(f"{dst}: is a directory (expected a JSONL file path)")
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w") as f:
        for r in reqs:
            line = {"request_id": r.request_id, "arrival_time_ns": r.arrival_ns, "input_toks": r.input_tokens,
                    "output_toks": r.output_tokens}
            ids = segment_ids(r.content if r.content.has_content else None)
            if ids is not None:
                line["input_tok_ids"] = ids
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    tmp.replace(out)
    return len(reqs), notes


# ---- CSV helpers for the formats ----

def csv_header_has(first_line: str, columns: tuple[str, ...]) -> bool:
    """Format detection of a CSV trace: its header line names all of `columns`."""
    return set(columns) <= {c.strip() for c in first_line.strip().split(",")}


def csv_rows(path: Path, required: tuple[str, ...], fmt: str) -> Iterator[tuple[int, int, dict[str, str]]]:
    """(line, data row index, {column: value}) per data row; the header must hold `required`."""
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        rd = csv.reader(f)
        try:
            header = next(rd, None)
            if header is None:
                raise WorkloadError(f"{path}:1: empty file (expected a {fmt} header: {','.join(required)})")
            cols = [c.strip() for c in header]
            missing = [c for c in required if c not in cols]
            if missing:
                raise WorkloadError(f"{path}:1: {fmt} header lacks column(s) {', '.join(map(repr, missing))} "
                                    f"(header: {','.join(cols)[:120]})")
            idx = {c: cols.index(c) for c in required}
            row = 0
            prev = rd.line_num
            for rec in rd:
                line = prev + 1  # first physical line of the record
                prev = rd.line_num
                if not rec or all(not v.strip() for v in rec):
                    continue
                if len(rec) != len(cols):
                    raise WorkloadError(f"{path}:{line}: {len(rec)} fields, the header has {len(cols)}")
                yield line, row, {c: rec[i].strip() for c, i in idx.items()}
                row += 1
        except UnicodeDecodeError as e:
            raise WorkloadError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except csv.Error as e:
            raise WorkloadError(f"{path}:{rd.line_num}: not valid CSV ({e})") from None


def parse_count(v: object, where: str, field: str, maximum: int = MAX_TOKENS) -> int:
    """A token count (a non-negative integer; '12.0' is 12)."""
    try:
        d = Decimal(str(v).strip()) if not isinstance(v, bool) and isinstance(v, (int, float, str)) else None
    except InvalidOperation:
        d = None
    if d is None or not d.is_finite() or d != d.to_integral_value():
        raise WorkloadError(f"{where}: field {field!r} must be an integer, got {v!r}")
    if d < 0:
        raise WorkloadError(f"{where}: field {field!r} must be >= 0, got {v}")
    if d > maximum:
        raise WorkloadError(f"{where}: field {field!r} must be <= {maximum:.0e}, got {v}")
    return int(d)


def parse_time(v: object, where: str, field: str, ns_per_unit: int) -> int:
    """A non-negative time in some unit (seconds, milliseconds) as integer ns."""
    try:
        d = Decimal(str(v).strip()) if not isinstance(v, bool) and isinstance(v, (int, float, str)) else None
    except InvalidOperation:
        d = None
    if d is None or not d.is_finite():
        raise WorkloadError(f"{where}: field {field!r} must be a number, got {v!r}")
    if d < 0:
        raise WorkloadError(f"{where}: field {field!r} must be >= 0, got {v}")
    t = int(d * ns_per_unit)
    if t > MAX_TIME_NS:
        raise WorkloadError(f"{where}: field {field!r} = {v} is beyond the simulable {MAX_TIME_NS:.0e} ns")
    return t
