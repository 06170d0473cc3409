"""`workload.kind: trace` with agent-trace formats: a trace whose format is an agent format (one whose reader has
`load_programs`: mini-swe-agent trajectories, frontend/workload/swe_traj.py; Copilot OTel sessions,
frontend/workload/copilot_otel.py; TraceLab rounds, frontend/workload/tracelab.py) replays as agent programs with
tool gaps; any other format goes to the flat-request source of frontend/workload/trace.py unchanged.

This module is the built-in source of the `trace` kind (frontend/workload/sources.py); it wraps trace.py's
TraceSource instead of changing it. A directory as `workload.path` is read as a directory of trajectories.
"""

from __future__ import annotations

from pathlib import Path

from frontend.workload.jsonl import WorkloadError
from frontend.workload.sources import WorkloadParts, detect_format, get_trace_format, register_source
from frontend.workload.trace import TraceSource


def is_agent_format(fmt: str | None) -> bool:
    """True when the format's reader replays its files as agent programs."""
    return fmt is not None and hasattr(get_trace_format(fmt), "load_programs")


def resolve_trace_path(run, path: str, field: str = "workload.path") -> Path:
    """A trace file or directory as given, else beside the run file."""
    p = Path(path)
    if not p.is_absolute() and run.config.base_dir is not None and not p.exists():
        cand = run.config.base_dir / p
        if cand.exists():
            return cand
    if not path or not (p.is_file() or p.is_dir()):
        raise WorkloadError(f"{field}: {path!r} is not a workload file or directory")
    return p


@register_source("trace")
class TraceOrAgentSource:
    def load(self, run, seed: int) -> WorkloadParts:
        wl = run.config.workload
        path = resolve_trace_path(run, wl.path)
        fmt = wl.format
        if fmt is None:
            fmt = "swe_traj" if path.is_dir() else detect_format(path)
        if not is_agent_format(fmt):
            return TraceSource().load(run, seed)
        progs, tools, notes = get_trace_format(fmt).load_programs(
            path, chars_per_token=wl.chars_per_token, time_scale=wl.time_scale, start_s=wl.start_s, end_s=wl.end_s,
            sample=wl.sample, seed=seed, num_programs=wl.num_requests, tools=dict(wl.tools))
        return [], progs, tools, notes
