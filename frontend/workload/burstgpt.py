"""BurstGPT traces: CSV `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`.

Timestamp is seconds on the trace's clock. Failed requests (Response tokens 0) are skipped and counted in
the run's notes, as are rows with no request tokens. The Model column becomes the request's `model` only
with `workload.use_trace_models: true`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from frontend.workload.jsonl import WorkloadError
from frontend.workload.sources import TraceRow, register_trace_format
from frontend.workload.trace import NS_PER_S, csv_header_has, csv_rows, parse_count, parse_time

COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens")


@register_trace_format("burstgpt")
class BurstGPTTrace:
    def detect(self, first_line: str) -> bool:
        return csv_header_has(first_line, COLUMNS)

    def rows(self, path: Path) -> Iterator[TraceRow]:
        for line, row, rec in csv_rows(path, COLUMNS, "BurstGPT"):
            where = f"{path}:{line}"
            t = parse_time(rec["Timestamp"], where, "Timestamp", NS_PER_S)
            inp = parse_count(rec["Request tokens"], where, "Request tokens")
            out = parse_count(rec["Response tokens"], where, "Response tokens")
            model = rec["Model"]
            if not model:
                raise WorkloadError(f"{where}: field 'Model' is empty")
            skip = "failed (Response tokens 0)" if out == 0 else "Request tokens 0" if inp == 0 else None
            yield TraceRow(line, row, t, inp, out, model=model, skip=skip)
