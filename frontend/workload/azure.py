"""Azure LLM inference traces (2023 / 2024): CSV `TIMESTAMP,ContextTokens,GeneratedTokens`.

TIMESTAMP is a datetime like `2023-11-16 18:15:46.6805900` (fractional seconds to any precision, read
exactly to the ns); the trace clock is ns from the earliest row. Rows with 0 context or 0 generated
tokens cannot be simulated and are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from frontend.workload.jsonl import MAX_TIME_NS, WorkloadError
from frontend.workload.sources import TraceRow, register_trace_format
from frontend.workload.trace import csv_header_has, csv_rows, parse_count

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_timestamp(v: str, where: str) -> int:
    """ns since the epoch of `YYYY-MM-DD HH:MM:SS[.fraction][Z|+HH:MM]` (naive times read as UTC)."""
    s = v.strip()
    frac = ""
    tz = ""
    for sep in ("+", "Z"):
        k = s.find(sep, 19)
        if k >= 0:
            s, tz = s[:k], s[k:]
            break
    if "." in s[19:]:
        s, frac = s[:19], s[20:]
    try:
        if frac and not frac.isdigit():
            raise ValueError
        dt = datetime.fromisoformat(s + ("+00:00" if tz in ("", "Z") else tz))
    except ValueError:
        raise WorkloadError(f"{where}: field 'TIMESTAMP' must be a date and time like 2023-11-16 18:15:46.68, "
                            f"got {v!r}") from None
    secs = (dt - _EPOCH) // timedelta(seconds=1)
    ns = secs * 1_000_000_000 + (int(frac[:9].ljust(9, "0")) if frac else 0)
    if not 0 <= ns <= MAX_TIME_NS * 4:
        raise WorkloadError(f"{where}: field 'TIMESTAMP' {v!r} is out of range")
    return ns


@register_trace_format("azure")
class AzureTrace:
    def detect(self, first_line: str) -> bool:
        return csv_header_has(first_line, COLUMNS)

    def rows(self, path: Path) -> Iterator[TraceRow]:
        for line, row, rec in csv_rows(path, COLUMNS, "Azure"):
            where = f"{path}:{line}"
            t = parse_timestamp(rec["TIMESTAMP"], where)
            inp = parse_count(rec["ContextTokens"], where, "ContextTokens")
            out = parse_count(rec["GeneratedTokens"], where, "GeneratedTokens")
            skip = "ContextTokens 0" if inp == 0 else "GeneratedTokens 0" if out == 0 else None
            yield TraceRow(line, row, t, inp, out, skip=skip)
