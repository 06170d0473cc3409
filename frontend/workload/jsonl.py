"""JSONL replay: flat requests and agentic sessions (LLMServingSim's formats).

Flat line: {"input_toks", "output_toks", "arrival_time_ns", "input_tok_ids"?, "output_tok_ids"?}
Session line: {"session_id", "arrival_time_ns", "sub_requests": [{input_toks, output_toks,
tool_duration_ns, input_tok_ids?, output_tok_ids?}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontend.errors import UserError
from frontend.workload.request import Request, TokenContent

MAX_TIME_NS = 10**18  # far below int64 wrap-around (2^63 ns)
MAX_TOKENS = 10_000_000


class WorkloadError(UserError):
    """A workload file (JSONL, agent trace, tool file) is malformed; the message names `file:line`."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json_line(raw: bytes | str, where: str) -> Any:
    """One JSON value of a line; NaN / Infinity and non-UTF-8 bytes are errors naming `where`."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise WorkloadError(f"{where}: not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"{where}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise WorkloadError(f"{where}: not valid JSON ({e})") from None


def numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) of a file read as bytes, streamed; unreadable -> WorkloadError."""
    try:
        f = Path(path).open("rb")
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        yield from enumerate(f, 1)


def object_lines(lines: Iterable[tuple[int, bytes]], path, what: str = "") -> Iterator[tuple[int, str, dict]]:
    """(line number, "file:line", object) of each non-blank JSON line of a trace; a line that is not valid JSON
    or not an object is a WorkloadError naming file:line (`what` says what an object stands for)."""
    for line, raw in lines:
        if not raw.strip():
            continue
        where = f"{path}:{line}"
        obj = parse_json_line(raw, where)
        if not isinstance(obj, dict):
            raise WorkloadError(f"{where}: each line must be a JSON object{what}")
        yield line, where, obj


def json_objects(path: Path, what: str) -> Iterator[tuple[str, Any]]:
    """(file:line, value) of each non-blank line of a JSONL side file (expert histograms, acceptance rates);
    an unreadable file or a bad line is a WorkloadError naming `what` and where."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise WorkloadError(f"{what}: {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            where = f"{path}:{n}"
            yield where, parse_json_line(line, f"{what}: {where}")


@dataclass
class SessionSpec:
    session_id: str
    arrival_ns: int
    turns: list[dict[str, Any]] = field(default_factory=list)


def _int_field(obj: dict[str, Any], key: str, where: str, minimum: int = 0, maximum: int = MAX_TOKENS) -> int:
    if key not in obj:
        raise WorkloadError(f"{where}: missing field {key!r}")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")) \
            or int(v) != v:
        raise WorkloadError(f"{where}: field {key!r} must be an integer, got {v!r}")
    if v < minimum:
        raise WorkloadError(f"{where}: field {key!r} must be >= {minimum}, got {v}")
    if v > maximum:
        raise WorkloadError(f"{where}: field {key!r} must be <= {maximum:.0e}, got {v}")
    return int(v)


def _ids(obj: dict[str, Any], key: str, where: str, expect: int) -> list[int] | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise WorkloadError(f"{where}: {key!r} must be a list of integers")
    if len(v) != expect:
        raise WorkloadError(f"{where}: {key!r} has {len(v)} ids but the token count is {expect}")
    return v


def parse_flat(obj: dict[str, Any], where: str, idx: int) -> Request:
    inp = _int_field(obj, "input_toks", where, 1)
    out = _int_field(obj, "output_toks", where, 1)
    arr = _int_field(obj, "arrival_time_ns", where, 0, MAX_TIME_NS)
    ids = _ids(obj, "input_tok_ids", where, inp)
    oids = _ids(obj, "output_tok_ids", where, out)
    rid = obj.get("request_id", f"req-{idx}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise WorkloadError(f"{where}: field 'request_id' must be a string, got {rid!r}")
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise WorkloadError(f"{where}: field 'model' must be a non-empty string (a model an instance serves), "
                            f"got {model!r}")
    lora = obj.get("lora")
    if lora is not None and (isinstance(lora, bool) or not isinstance(lora, int) or lora < -1):
        raise WorkloadError(f"{where}: field 'lora' must be an adapter index >= 0 (or -1: the base model), got {lora!r}")
    return Request(request_id=str(rid), arrival_ns=arr, input_tokens=inp,
                   output_tokens=out, content=TokenContent(ids=ids), output_content=TokenContent(ids=oids), seq=idx,
                   model=model, lora=lora)


def read_jsonl(path: str | Path, limit: int | None = None, time_scale: float = 1.0
               ) -> tuple[list[Request], list[SessionSpec]]:
    p = Path(path)
    if not p.is_file():
        raise WorkloadError(f"{path}: no such workload file")
    reqs: list[Request] = []
    sessions: list[SessionSpec] = []
    if not time_scale > 0 or time_scale > 1e6:
        raise WorkloadError(f"{path}: time_scale must be in (0, 1e6], got {time_scale}")
    try:
        f = p.open("rb")
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(reqs) + len(sessions) >= limit:
                break
            line = line.strip()
            if not line:
                continue
            where = f"{path}:{lineno}"
            obj = parse_json_line(line, where)
            if not isinstance(obj, dict):
                raise WorkloadError(f"{where}: each line must be a JSON object")
            if "sub_requests" in obj:
                arr = _int_field(obj, "arrival_time_ns", where, 0, MAX_TIME_NS)
                subs = obj["sub_requests"]
                if not isinstance(subs, list) or not subs:
                    raise WorkloadError(f"{where}: 'sub_requests' must be a non-empty list")
                turns = []
                for k, s in enumerate(subs):
                    w = f"{where} sub_requests[{k}]"
                    if not isinstance(s, dict):
                        raise WorkloadError(f"{w}: must be an object")
                    inp = _int_field(s, "input_toks", w, 1)
                    out = _int_field(s, "output_toks", w, 1)
                    turns.append({"input_toks": inp, "output_toks": out,
                                  "tool_duration_ns": _int_field(s, "tool_duration_ns", w, 0, 10**15)
                                  if "tool_duration_ns" in s else 0,
                                  "input_tok_ids": _ids(s, "input_tok_ids", w, inp),
                                  "output_tok_ids": _ids(s, "output_tok_ids", w, out),
                                  "tool": str(s.get("tool", "tool"))})
                sessions.append(SessionSpec(str(obj.get("session_id", f"session-{lineno}")),
                                            _scaled(arr, time_scale, where), turns))
            else:
                r = parse_flat(obj, where, len(reqs))
                r.arrival_ns = _scaled(r.arrival_ns, time_scale, where)
                reqs.append(r)
    ids_seen: set[str] = set()
    for r in reqs:
        if r.request_id in ids_seen:
            raise WorkloadError(f"{path}: request_id {r.request_id!r} appears more than once")
        ids_seen.add(r.request_id)
    if not reqs and not sessions:
        raise WorkloadError(f"{path}: no requests")
    reqs.sort(key=lambda r: (r.arrival_ns, r.seq))
    for i, r in enumerate(reqs):
        r.seq = i
    return reqs, sessions


def _scaled(t_ns: int, time_scale: float, where: str) -> int:
    v = t_ns * time_scale
    if v > MAX_TIME_NS:
        raise WorkloadError(f"{where}: arrival_time_ns x time_scale = {v:.3g} ns is beyond the simulable "
                            f"{MAX_TIME_NS:.0e} ns")
    return int(v)
