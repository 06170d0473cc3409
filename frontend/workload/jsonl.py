"""JSONL replay: flat requests and agentic sessions (LLMServingSim's formats).

Flat line: {"input_toks", "output_toks", "arrival_time_ns", "input_tok_ids"?, "output_tok_ids"?}
Session line: {"session_id", "arrival_time_ns", "sub_requests": [{input_toks, output_toks,
tool_duration_ns, input_tok_ids?, output_tok_ids?}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontend.workload.request import Request, TokenContent


class WorkloadError(ValueError):
    pass


@dataclass
class SessionSpec:
    session_id: str
    arrival_ns: int
    turns: list[dict[str, Any]] = field(default_factory=list)


def _int_field(obj: dict[str, Any], key: str, where: str, minimum: int = 0) -> int:
    if key not in obj:
        raise WorkloadError(f"{where}: missing field {key!r}")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise WorkloadError(f"{where}: field {key!r} must be an integer, got {v!r}")
    if v < minimum:
        raise WorkloadError(f"{where}: field {key!r} must be >= {minimum}, got {v}")
    return int(v)


def _ids(obj: dict[str, Any], key: str, where: str, expect: int) -> list[int] | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, int) for x in v):
        raise WorkloadError(f"{where}: {key!r} must be a list of integers")
    if len(v) != expect:
        raise WorkloadError(f"{where}: {key!r} has {len(v)} ids but the token count is {expect}")
    return v


def parse_flat(obj: dict[str, Any], where: str, idx: int) -> Request:
    inp = _int_field(obj, "input_toks", where, 1)
    out = _int_field(obj, "output_toks", where, 1)
    arr = _int_field(obj, "arrival_time_ns", where, 0)
    ids = _ids(obj, "input_tok_ids", where, inp)
    oids = _ids(obj, "output_tok_ids", where, out)
    return Request(request_id=str(obj.get("request_id", f"req-{idx}")), arrival_ns=arr, input_tokens=inp,
                   output_tokens=out, content=TokenContent(ids=ids), output_content=TokenContent(ids=oids), seq=idx)


def read_jsonl(path: str | Path, limit: int | None = None, time_scale: float = 1.0
               ) -> tuple[list[Request], list[SessionSpec]]:
    p = Path(path)
    if not p.is_file():
        raise WorkloadError(f"{path}: no such workload file")
    reqs: list[Request] = []
    sessions: list[SessionSpec] = []
    with p.open() as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(reqs) + len(sessions) >= limit:
                break
            line = line.strip()
            if not line:
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise WorkloadError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise WorkloadError(f"{where}: each line must be a JSON object")
            if "sub_requests" in obj:
                arr = _int_field(obj, "arrival_time_ns", where, 0)
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
                                  "tool_duration_ns": _int_field(s, "tool_duration_ns", w, 0) if "tool_duration_ns" in s else 0,
                                  "input_tok_ids": _ids(s, "input_tok_ids", w, inp),
                                  "output_tok_ids": _ids(s, "output_tok_ids", w, out),
                                  "tool": s.get("tool", "tool")})
                sessions.append(SessionSpec(str(obj.get("session_id", f"session-{lineno}")),
                                            int(arr * time_scale), turns))
            else:
                r = parse_flat(obj, where, len(reqs))
                r.arrival_ns = int(r.arrival_ns * time_scale)
                reqs.append(r)
    if not reqs and not sessions:
        raise WorkloadError(f"{path}: no requests")
    reqs.sort(key=lambda r: (r.arrival_ns, r.seq))
    for i, r in enumerate(reqs):
        r.seq = i
    return reqs, sessions
