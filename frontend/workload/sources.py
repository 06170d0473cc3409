"""Workload sources as plug-ins: one module per `workload.kind` behind one interface.

A source turns a resolved run's `workload:` section into what the engine replays:
`(flat requests, agent programs or None, tool distributions, notes)`. Each source module registers
itself with `@register_source("<kind>")`; `load_workload` looks the run's kind up here and never
dispatches on kinds itself. The built-in modules are imported on first use, so importing this module
costs nothing (no numpy, no pydantic).

Trace files (`workload.kind: trace`) have a second, smaller registry of formats (Azure, BurstGPT,
Mooncake, ...): each format module registers a `TraceFormat` with `@register_trace_format("<name>")`. An agent
format (mini-swe-agent trajectories, Copilot OTel sessions, TraceLab rounds) also has `load_programs(path, **options)` returning
(programs, tool distributions, notes); `kind: trace` replays it as agent programs (frontend/workload/agent_traces.py).
"""

from __future__ import annotations

import gzip
import importlib
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from frontend.config.loader import ResolvedRun
    from frontend.workload.request import Request, TokenContent

# (flat requests, agent programs or None, tool distributions by name, notes for summary.json)
WorkloadParts = tuple[list["Request"], list | None, dict, list[str]]


class WorkloadSource(Protocol):
    def load(self, run: ResolvedRun, seed: int) -> WorkloadParts: ...


@dataclass(slots=True)
class TraceRow:
    """One row of a trace on the trace's own clock; `skip` names why a row the trace holds is not replayed."""

    line: int  # 1-based line of the file (for messages)
    row: int  # 0-based data row: the request id is req-<row>, stable under windows and samples
    t_ns: int  # arrival on the trace's clock (ns)
    input_tokens: int
    output_tokens: int
    model: str | None = None
    content: TokenContent | None = None
    skip: str | None = None


class TraceFormat(Protocol):
    def detect(self, first_line: str) -> bool:
        """True when a file's first line (header or first record) is this format's."""
        ...

    def rows(self, path: Path) -> Iterator[TraceRow]:
        """The file's rows in file order; a malformed one raises WorkloadError naming `file:line` and field."""
        ...


S = TypeVar("S")
GZIP_MAGIC = b"\x1f\x8b"
_SOURCES: dict[str, WorkloadSource] = {}
_FORMATS: dict[str, TraceFormat] = {}
# built-in plug-ins, imported on first use
BUILTIN_SOURCES = {"synthetic": "frontend.workload.synthetic_source", "jsonl": "frontend.workload.jsonl_source",
                   "agents": "frontend.workload.agents_source", "trace": "frontend.workload.agent_traces"}
BUILTIN_FORMATS = {"azure": "frontend.workload.azure", "burstgpt": "frontend.workload.burstgpt",
                   "mooncake": "frontend.workload.mooncake", "swe_traj": "frontend.workload.swe_traj",
                   "copilot_otel": "frontend.workload.copilot_otel", "tracelab": "frontend.workload.tracelab"}


def _register(table: dict, name: str) -> Callable[[S], S]:
    def deco(obj: S) -> S:
        table[name] = obj() if isinstance(obj, type) else obj  # a class is registered as one instance
        return obj

    return deco


def register_source(name: str) -> Callable[[S], S]:
    """Class (or object) decorator: the source of `workload.kind: <name>`."""
    return _register(_SOURCES, name)


def register_trace_format(name: str) -> Callable[[S], S]:
    """Class (or object) decorator: the reader of trace files of format `<name>`."""
    return _register(_FORMATS, name)


def get_source(kind: str) -> WorkloadSource:
    mod = BUILTIN_SOURCES.get(kind)
    # the built-in module is loaded unless a source from outside frontend.workload took the kind (importing
    # frontend.workload.trace alone registers the flat part of `trace`, which agent_traces wraps)
    if mod is not None and mod not in sys.modules and (
            kind not in _SOURCES or type(_SOURCES[kind]).__module__.startswith("frontend.workload.")):
        importlib.import_module(mod)
    try:
        return _SOURCES[kind]
    except KeyError:
        raise ValueError(f"no workload source registered for kind {kind!r}") from None


def trace_formats() -> dict[str, TraceFormat]:
    """Every trace format, built-in ones loaded."""
    for name, mod in BUILTIN_FORMATS.items():
        if name not in _FORMATS:
            importlib.import_module(mod)
    return dict(_FORMATS)


def get_trace_format(name: str) -> TraceFormat:
    fmts = trace_formats()
    if name not in fmts:
        from frontend.workload.jsonl import WorkloadError

        raise WorkloadError(f"unknown trace format {name!r} (known: {', '.join(sorted(fmts))})")
    return fmts[name]


def detect_format(path: str | Path) -> str | None:
    """The trace format whose header / first record matches the file's first line; None when none does
    (e.g. the project's own JSONL)."""
    line = first_line(Path(path)).lstrip("\ufeff")
    for name, fmt in trace_formats().items():
        if fmt.detect(line):
            return name
    return None


def load_workload(run: ResolvedRun, seed: int) -> WorkloadParts:
    """(flat requests, agent programs or None, tool distributions, notes) of the run's workload."""
    return get_source(run.config.workload.kind).load(run, seed)


def resolve_path(run: ResolvedRun, path: str, field: str) -> Path:
    """A workload file as given, else beside the run file; a missing one is an error naming its field."""
    from frontend.workload.jsonl import WorkloadError

    p = Path(path)
    if not p.is_absolute() and run.config.base_dir is not None and not p.exists():
        cand = run.config.base_dir / p
        if cand.exists():
            return cand
    if not path or not p.is_file():
        raise WorkloadError(f"{field}: {path!r} is not a workload file")
    return p


def first_line(path: Path) -> str:
    from frontend.workload.jsonl import WorkloadError

    if not path.is_file():
        return ""
    try:
        with path.open("rb") as f:
            if f.read(2) != GZIP_MAGIC:
                f.seek(0)
                return f.readline(1 << 20).decode("utf-8", errors="replace")
        with gzip.open(path, "rb") as g:  # a gzipped trace (TraceLab's release) is detected by its first line too
            return g.readline(1 << 20).decode("utf-8", errors="replace")
    except (OSError, EOFError, zlib.error) as e:
        raise WorkloadError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


__all__ = ["TraceFormat", "TraceRow", "WorkloadParts", "WorkloadSource", "detect_format", "first_line",
           "get_source", "get_trace_format", "load_workload", "register_source", "register_trace_format",
           "resolve_path", "trace_formats"]
