"""Mooncake traces: JSONL `{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}`.

`hash_ids` holds one id per 512-token block of the prompt (the last block may be partial). A request's
token content is one segment per hash id, keyed by the id, so requests that share leading hash ids share
those prefix blocks exactly and the prefix cache hits as in the trace (any engine block size dividing 512
sees whole shared blocks). Prompt tokens beyond the hashed blocks get a key of their own request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from frontend.workload.jsonl import MAX_TOKENS, WorkloadError, numbered_lines, object_lines
from frontend.workload.request import TokenContent
from frontend.workload.sources import TraceRow, register_trace_format
from frontend.workload.trace import parse_count, parse_time

BLOCK_TOKENS = 512
MAX_HASH_ID = 10**12  # segment keys stay far from the per-request tail keys (negative) and other key spaces


def content_for(hash_ids: list[int], input_length: int, row: int) -> TokenContent:
    segs: list[tuple[int, int]] = []
    left = input_length
    for h in hash_ids:
        n = min(BLOCK_TOKENS, left)
        segs.append((h, n))
        left -= n
    if left:
        segs.append((-(row + 1), left))  # tokens the trace did not hash: this request's own
    return TokenContent(segments=segs)


@register_trace_format("mooncake")
class MooncakeTrace:
    def detect(self, first_line: str) -> bool:
        s = first_line.strip()
        return s.startswith("{") and '"input_length"' in s and ('"hash_ids"' in s or '"timestamp"' in s)

    def rows(self, path: Path) -> Iterator[TraceRow]:
        row = 0
        for line, where, obj in object_lines(numbered_lines(path), path):
            for k in ("timestamp", "input_length", "output_length"):
                if k not in obj:
                    raise WorkloadError(f"{where}: missing field {k!r}")
            t = parse_time(obj["timestamp"], where, "timestamp", 1_000_000)
            inp = parse_count(obj["input_length"], where, "input_length", MAX_TOKENS)
            out = parse_count(obj["output_length"], where, "output_length", MAX_TOKENS)
            ids = obj.get("hash_ids", [])
            if not isinstance(ids, list) or not all(
                    isinstance(h, int) and not isinstance(h, bool) and 0 <= h <= MAX_HASH_ID for h in ids):
                raise WorkloadError(f"{where}: field 'hash_ids' must be a list of integers in 0..{MAX_HASH_ID:.0e}")
            blocks = -(-inp // BLOCK_TOKENS)
            if len(ids) > blocks:
                raise WorkloadError(f"{where}: field 'hash_ids' has {len(ids)} ids but input_length {inp} "
                                    f"spans {blocks} blocks of {BLOCK_TOKENS} tokens")
            skip = "output_length 0" if out == 0 else "input_length 0" if inp == 0 else None
            content = content_for(ids, inp, row) if skip is None else None
            yield TraceRow(line, row, t, inp, out, content=content, skip=skip)
            row += 1

