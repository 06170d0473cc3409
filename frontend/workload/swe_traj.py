"""SWE-bench trajectories of mini-swe-agent (`*.traj.json`) as agent programs with tool gaps.

The format (read from the project's documentation and saving code, nothing copied): one JSON object per run,
`{"info": {...model_stats, config, exit_status...}, "messages": [...], "trajectory_format": "mini-swe-agent-1"
| "mini-swe-agent-1.1"}`. `messages` is the chat in OpenAI form: `{"role", "content"}` with role system / user /
assistant (v2 tool-call models add `tool_calls` to assistant messages and answer with role `tool`; a final role
`exit` message may close the run). v2 adds an `extra` object per message: on a model call its `timestamp`
(time.time() when the response arrived) and `response` (the provider's response, with `usage.prompt_tokens` /
`usage.completion_tokens`), on an observation its `timestamp` (when the command finished).

Each trajectory becomes one program; each assistant message one turn:
* prompt: every message before it (the growing context); `extra.response.usage.prompt_tokens` when the file has it,
  else estimated from characters: ceil(chars / chars_per_token) per message, chars_per_token = 4 by default
  (`workload.chars_per_token`); the characters of a message are its text content (string or the `text` of each
  part) plus, for an assistant message, the names and arguments of its tool calls;
* output: `usage.completion_tokens`, else the same estimate of the assistant message (at least 1);
* turn k+1 extends turn k's context (context parent) when its prompt is at least turn k's prompt + output, so
  consecutive turns share their prefix in the KV cache, as in frontend/agents/generators.py sessions_to_programs;
* the edge k -> k+1 is the tool run between the calls (the first tool call's function name, else `bash`,
  mini-swe-agent's only tool); its duration is the last observation's `extra.timestamp` minus the call's
  `extra.timestamp` when both are present, else sampled from `workload.tools.<tool>` (default DEFAULT_SWE_TOOLS:
  bash lognormal, mean 2000 ms, sigma 1.0). A distribution named in `workload.tools` replaces the measured gaps
  of that tool (frontend/agents/tools.py).
* arrival: the run's first timestamp (the earliest message timestamp before its first call, else that call's
  response time) relative to the earliest run read, x time_scale; runs without timestamps arrive at 0.

A file holds one trajectory (pretty-printed JSON, as mini-swe-agent writes it) or one per line (JSONL); a directory
is read as every `*.traj.json` / `*.traj` under it, in name order. The `trace` options apply per program: the
time window (`start_s`/`end_s`, seconds from the earliest run's start), seeded `sample`, `num_requests` (here:
at most that many programs) and `time_scale`. `astraserve convert` writes each call as a flat request.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from frontend.workload.jsonl import MAX_TIME_NS, MAX_TOKENS, WorkloadError
from frontend.workload.sources import TraceRow, register_trace_format

CHARS_PER_TOKEN = 4.0
DEFAULT_TOOL = "bash"
DEFAULT_SWE_TOOL_DIST = {"dist": "lognormal", "mean_ms": 2000.0, "sigma": 1.0}
TRAJ_SUFFIXES = (".traj.json", ".traj")
CONTEXT_ROLES_SKIPPED = ("exit",)  # a closing message no model call reads


def default_swe_tools() -> dict:
    from frontend.config.schema import ToolDist

    return {DEFAULT_TOOL: ToolDist(**DEFAULT_SWE_TOOL_DIST)}


@dataclass(slots=True)
class Call:
    """One model call of a trajectory."""

    msg: int  # index of its assistant message
    prompt_tokens: int
    output_tokens: int
    counted: bool  # tokens from the file's usage (else estimated from characters)
    done_s: float | None  # extra.timestamp: when the response arrived
    release_s: float | None  # when the call was issued: the last observation before it (or the run's start)
    tool: str = DEFAULT_TOOL  # the tool run after this call


@dataclass
class Trajectory:
    name: str
    where: str  # file (and line for JSONL) for messages
    line: int
    calls: list[Call] = field(default_factory=list)

    @property
    def start_s(self) -> float | None:
        if not self.calls:
            return None
        c = self.calls[0]
        return c.release_s if c.release_s is not None else c.done_s

    def gap_ns(self, k: int) -> int | None:
        """Measured duration of the tool between call k-1 and call k."""
        a, b = self.calls[k - 1].done_s, self.calls[k].release_s
        if a is None or b is None:
            return None
        return int(round((b - a) * 1e9))


def estimate_tokens(chars: int, chars_per_token: float) -> int:
    return math.ceil(chars / chars_per_token) if chars > 0 else 0


def _text_chars(v, where: str) -> int:
    if v is None:
        return 0
    if isinstance(v, str):
        return len(v)
    if isinstance(v, list):  # content parts: {"type": "text", "text": ...}, images and others count their JSON
        n = 0
        for j, part in enumerate(v):
            if isinstance(part, str):
                n += len(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                n += len(part["text"])
            elif isinstance(part, dict):
                n += len(json.dumps(part, separators=(",", ":")))
            else:
                raise WorkloadError(f"{where}[{j}]: expected a content part (an object or text)")
        return n
    raise WorkloadError(f"{where}: expected text or a list of content parts, got {type(v).__name__}")


def _number(v, where: str, lo: float = 0.0, hi: float = 1e13) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise WorkloadError(f"{where}: expected a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _count(v, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_TOKENS:
        raise WorkloadError(f"{where}: expected a token count in [0, {MAX_TOKENS}], got {v!r}")
    return v


def _usage(extra: dict, where: str) -> tuple[int | None, int | None]:
    resp = extra.get("response")
    usage = resp.get("usage") if isinstance(resp, dict) else None
    if usage is None:
        return None, None
    w = f"{where}.extra.response.usage"
    if not isinstance(usage, dict):
        raise WorkloadError(f"{w}: expected an object")
    out: list[int | None] = []
    for names in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
        name = next((n for n in names if usage.get(n) is not None), None)
        out.append(None if name is None else _count(usage[name], f"{w}.{name}"))
    return out[0], out[1]


def _tool_name(m: dict, where: str) -> str:
    calls = m.get("tool_calls")
    if not calls:
        return DEFAULT_TOOL
    if not isinstance(calls, list) or not isinstance(calls[0], dict):
        raise WorkloadError(f"{where}.tool_calls: expected a list of objects")
    fn = calls[0].get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    return name if isinstance(name, str) and name.strip() else DEFAULT_TOOL


def _tool_call_chars(m: dict) -> int:
    calls = m.get("tool_calls")
    if not isinstance(calls, list):
        return 0
    n = 0
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict):
            n += sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for k, v in fn.items()
                     if k in ("name", "arguments") and v is not None)
    return n


def parse_trajectory(obj, name: str, where: str, line: int = 1,
                     chars_per_token: float = CHARS_PER_TOKEN) -> Trajectory:
    """One trajectory object's model calls; a malformed field is a WorkloadError naming `where` and the field."""
    if not isinstance(obj, dict):
        raise WorkloadError(f"{where}: a trajectory must be a JSON object, got {type(obj).__name__}")
    msgs = obj.get("messages")
    if msgs is None:
        raise WorkloadError(f"{where}: missing field 'messages' (a mini-swe-agent trajectory's list of "
                            "{role, content} messages)")
    if not isinstance(msgs, list):
        raise WorkloadError(f"{where}: messages: expected a list, got {type(msgs).__name__}")
    traj = Trajectory(name, where, line)
    ctx = 0  # estimated tokens of the context so far
    last_obs_s: float | None = None  # last timestamp of a non-assistant message since the previous call
    first_s: float | None = None  # earliest timestamp before the first call
    for i, m in enumerate(msgs):
        w = f"{where}: messages[{i}]"
        if not isinstance(m, dict):
            raise WorkloadError(f"{w}: expected an object with 'role' and 'content'")
        role = m.get("role")
        if not isinstance(role, str):
            raise WorkloadError(f"{w}.role: missing or not text")
        if role in CONTEXT_ROLES_SKIPPED:
            continue
        extra = m.get("extra")
        if extra is not None and not isinstance(extra, dict):
            raise WorkloadError(f"{w}.extra: expected an object")
        extra = extra or {}
        ts = extra.get("timestamp")
        ts = None if ts is None else _number(ts, f"{w}.extra.timestamp")
        chars = _text_chars(m.get("content"), f"{w}.content")
        if role != "assistant":
            ctx += estimate_tokens(chars, chars_per_token)
            if ts is not None:
                last_obs_s = ts if last_obs_s is None else max(last_obs_s, ts)
                if not traj.calls:
                    first_s = ts if first_s is None else min(first_s, ts)
            continue
        chars += _tool_call_chars(m)
        est_out = estimate_tokens(chars, chars_per_token)
        p, o = _usage(extra, w)
        release = first_s if not traj.calls else last_obs_s
        if traj.calls and release is not None and traj.calls[-1].done_s is not None \
                and release < traj.calls[-1].done_s:
            raise WorkloadError(f"{w}: the observations before this call end at {release} s, before the previous "
                                f"call's extra.timestamp {traj.calls[-1].done_s} s (timestamps out of order)")
        if ts is not None and release is not None and ts < release:
            raise WorkloadError(f"{w}.extra.timestamp: {ts} s is before the observation it answers ({release} s)")
        traj.calls.append(Call(i, max(1, p if p is not None else ctx), max(1, o if o is not None else est_out),
                               p is not None and o is not None, ts, release, _tool_name(m, w)))
        ctx += est_out
        last_obs_s = None
    return traj


def _stem(p: Path) -> str:
    name = p.name
    for suf in (*TRAJ_SUFFIXES, ".jsonl", ".json"):
        if name.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def trajectory_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TRAJ_SUFFIXES))
        if not files:
            raise WorkloadError(f"{path}: no trajectory files (*.traj.json, *.traj) in this directory")
        return files
    if not path.is_file():
        raise WorkloadError(f"{path}: no such workload file")
    return [path]


def _objects(path: Path) -> Iterator[tuple[int, object]]:
    """(line, object) per trajectory of a file: the whole file as one JSON value, else one per line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise WorkloadError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        yield 1, json.loads(text, parse_constant=_no_constant(path))
        return
    except json.JSONDecodeError as whole:
        first = text.lstrip().split("\n", 1)[0].strip()
        if first == "{" or not first.startswith("{"):  # pretty-printed JSON (or not JSON): report where it broke
            raise WorkloadError(f"{path}:{whole.lineno}: not valid JSON ({whole.msg})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line, parse_constant=_no_constant(f"{path}:{lineno}"))
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def _no_constant(where):
    def f(name):
        raise WorkloadError(f"{where}: {name} is not a JSON number")

    return f


def read_trajectories(path: str | Path, chars_per_token: float = CHARS_PER_TOKEN) -> list[Trajectory]:
    """Every trajectory of a file or a directory, in file (then line) order, with unique names."""
    if not 0 < chars_per_token <= 100:
        raise WorkloadError(f"{path}: chars_per_token must be in (0, 100], got {chars_per_token}")
    out: list[Trajectory] = []
    seen: dict[str, int] = {}
    for f in trajectory_files(Path(path)):
        objs = list(_objects(f))
        if not objs:
            raise WorkloadError(f"{f}: empty file (expected a mini-swe-agent trajectory)")
        array = isinstance(objs[0][1], list)
        if array:  # a JSON array of trajectories
            objs = [(1, o) for o in objs[0][1]]
        for k, (line, obj) in enumerate(objs):
            where = f"{f}[{k}]" if array else f"{f}:{line}" if len(objs) > 1 else str(f)
            iid = obj.get("instance_id") if isinstance(obj, dict) else None
            name = iid if isinstance(iid, str) and iid else (_stem(f) if len(objs) == 1 else f"{_stem(f)}-{k}")
            if name in seen:
                seen[name] += 1
                name = f"{name}#{seen[name]}"
            else:
                seen[name] = 0
            out.append(parse_trajectory(obj, name, where, line, chars_per_token))
    return out


def to_programs(trajs: list[Trajectory], time_scale: float = 1.0, origin: float | None = None):
    """One ProgramSpec per trajectory with at least one call (see the module docstring); arrivals count from
    `origin` (default: the earliest start among `trajs`)."""
    from frontend.agents.program import Edge, ProgramSpec, TurnSpec

    if origin is None:
        starts = [t.start_s for t in trajs if t.start_s is not None]
        origin = min(starts) if starts else 0.0
    progs = []
    for traj in trajs:
        if not traj.calls:
            continue
        pid = traj.name
        turns: list[TurnSpec] = []
        for k, c in enumerate(traj.calls):
            spec = TurnSpec(f"{pid}.t{k}", pid, k, c.prompt_tokens, c.output_tokens,
                            full_input_tokens=c.prompt_tokens)
            if k:
                prev = traj.calls[k - 1]
                spec.parents = [Edge(turns[-1].turn_id, prev.tool, traj.gap_ns(k))]
                ctx = prev.prompt_tokens + prev.output_tokens
                if c.prompt_tokens >= ctx:
                    spec.context_parent = turns[-1].turn_id
                    spec.new_tokens = c.prompt_tokens - ctx
            turns.append(spec)
        s = traj.start_s
        arrival = 0 if s is None else max(0, int(round((s - origin) * 1e9 * time_scale)))
        if arrival > MAX_TIME_NS:
            raise WorkloadError(f"{traj.where}: arrival x time_scale = {arrival:.3g} ns is beyond the simulable "
                                f"{MAX_TIME_NS:.0e} ns")
        prog = ProgramSpec(pid, arrival, turns)
        prog.validate()
        progs.append(prog)
    return progs


def load_programs(path: str | Path, *, chars_per_token: float = CHARS_PER_TOKEN, time_scale: float = 1.0,
                  start_s: float | None = None, end_s: float | None = None, sample: float = 1.0, seed: int = 0,
                  num_programs: int | None = None, tools: dict | None = None):
    """(programs, tool distributions, notes) of a trajectory file or directory."""
    trajs = read_trajectories(path, chars_per_token)
    starts = [t.start_s for t in trajs if t.start_s is not None]
    origin = min(starts) if starts else 0.0
    empty = sum(1 for t in trajs if not t.calls)
    rng = random.Random(seed) if sample < 1 else None
    kept: list[Trajectory] = []
    outside = unsampled = 0
    for t in trajs:
        if not t.calls:
            continue
        rel = 0.0 if t.start_s is None else t.start_s - origin
        if (start_s is not None and rel < start_s) or (end_s is not None and rel >= end_s):
            outside += 1
            continue
        if rng is not None and rng.random() >= sample:
            unsampled += 1
            continue
        kept.append(t)
        if num_programs is not None and len(kept) >= num_programs:
            break
    progs = to_programs(kept, time_scale, None if start_s is None else origin + start_s)
    if not progs:
        raise WorkloadError(f"{path}: no trajectories to replay ({len(trajs)} read, {empty} without model calls, "
                            f"{outside} outside the time window, {unsampled} not sampled)")
    calls = [c for t in kept for c in t.calls]
    n_est = sum(1 for c in calls if not c.counted)
    measured = sum(1 for t in kept for k in range(1, len(t.calls)) if t.gap_ns(k) is not None)
    gaps = sum(len(t.calls) - 1 for t in kept)
    cfg_tools = dict(tools or {})
    used_unmeasured = {t.calls[k - 1].tool for t in kept for k in range(1, len(t.calls)) if t.gap_ns(k) is None}
    defaults = default_swe_tools()
    out_tools = dict(cfg_tools)
    for name in sorted(used_unmeasured - set(cfg_tools)):
        out_tools[name] = defaults.get(name, defaults[DEFAULT_TOOL])
    notes = [f"swe_traj {Path(path).name}: {len(progs)} of {len(trajs)} trajectories replayed as programs, "
             f"{len(calls)} model calls"
             + (f"; {empty} without model calls skipped" if empty else "")
             + (f"; {outside} outside the time window" if outside else "")
             + (f"; {unsampled} not sampled (sample {sample:g}, seed {seed})" if unsampled else ""),
             f"swe_traj tokens: {len(calls) - n_est} calls from usage counts, {n_est} estimated at "
             f"{chars_per_token:g} characters per token",
             f"swe_traj tool gaps: {measured} of {gaps} from timestamps"
             + (f", the rest sampled from workload.tools ({', '.join(sorted(used_unmeasured))})"
                if measured < gaps else "")]
    overridden = sorted({t.calls[k - 1].tool for t in kept for k in range(1, len(t.calls))
                         if t.gap_ns(k) is not None} & {n for n, d in out_tools.items() if d.dist != "trace"})
    if overridden:
        notes.append(f"swe_traj: measured gaps of {', '.join(overridden)} replaced by the configured distribution")
    return progs, out_tools, notes


@register_trace_format("swe_traj")
class SweTrajFormat:
    """mini-swe-agent trajectories; as flat rows (convert, plain trace replay) each model call is one request
    arriving when it was issued (0 when the file has no timestamps)."""

    def detect(self, first_line: str) -> bool:
        s = first_line.strip()
        if s == "{":  # pretty-printed JSON, as mini-swe-agent saves a trajectory (a JSONL line is never a bare '{')
            return True
        return s.startswith("{") and '"messages"' in s and ('"trajectory_format"' in s or '"info"' in s)

    def rows(self, path: Path) -> Iterator[TraceRow]:
        row = 0
        for t in read_trajectories(path):
            for c in t.calls:
                s = c.release_s if c.release_s is not None else c.done_s
                yield TraceRow(t.line, row, 0 if s is None else int(round(s * 1e9)), c.prompt_tokens, c.output_tokens)
                row += 1

    def load_programs(self, path: Path, **kw):
        return load_programs(path, **kw)
