"""Tool-call durations: from the trace, or sampled per tool name (seeded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from frontend.config.schema import ToolDist
from frontend.workload.jsonl import WorkloadError

MAX_TOOL_NS = 10**15


class ToolSimulator:
    def __init__(self, tools: dict[str, ToolDist], seed: int, base_dir: Path | None = None) -> None:
        self.tools = tools
        self.rng = np.random.default_rng(seed + 7919)
        self._empirical: dict[str, np.ndarray] = {}
        for name, d in tools.items():
            if d.dist == "empirical":
                if not d.file:
                    raise WorkloadError(f"tool {name}: empirical needs 'file' (one duration in ms per line)")
                p = Path(d.file)
                if not p.is_absolute() and base_dir is not None:
                    p = base_dir / p
                try:
                    vals = np.array([float(x) for x in p.read_text().split() if x.strip()])
                except (OSError, UnicodeDecodeError) as e:
                    raise WorkloadError(f"tool {name}: cannot read {p} ({e})") from None
                except ValueError as e:
                    raise WorkloadError(f"tool {name}: {p} holds a value that is not a number ({e})") from None
                if vals.size == 0 or (vals < 0).any() or not np.isfinite(vals).all() or (vals > 1e9).any():
                    raise WorkloadError(f"tool {name}: {p} must hold non-negative durations in ms")
                self._empirical[name] = vals

    def mean_ns(self, tool: str) -> float | None:
        """The configured mean (a property of the tool, known before any call), if any."""
        d = self.tools.get(tool)
        if d is None:
            return None
        if d.dist == "empirical":
            return float(self._empirical[tool].mean()) * 1e6
        return float(d.mean_ms) * 1e6 if d.mean_ms is not None else None

    def gap_ns(self, tool: str, trace_gap_ns: int | None) -> int:
        g = self._gap_ns(tool, trace_gap_ns)
        if not 0 <= g <= MAX_TOOL_NS:
            raise WorkloadError(f"tool {tool!r}: a call lasting {g} ns (beyond {MAX_TOOL_NS:.0e} ns, about 11 days); "
                                f"check workload.tools.{tool} (mean_ms, sigma) or the trace's durations")
        return g

    def _gap_ns(self, tool: str, trace_gap_ns: int | None) -> int:
        d = self.tools.get(tool)
        if d is None or d.dist == "trace":
            if trace_gap_ns is None:
                raise WorkloadError(f"workload.tools.{tool}: tool {tool!r} has no configured distribution and the "
                                    "trace gives no duration (set workload.tools.<name> or delay_ns in the trace)")
            return int(trace_gap_ns)
        if d.dist == "constant":
            return int(float(d.mean_ms or 0) * 1e6)
        if d.dist == "exponential":
            return int(self.rng.exponential(float(d.mean_ms or 0)) * 1e6)
        if d.dist == "lognormal":
            s = float(d.sigma or 0.0)
            mu = np.log(max(float(d.mean_ms or 0), 1e-9)) - s * s / 2
            return int(self.rng.lognormal(mu, s) * 1e6)
        return int(self.rng.choice(self._empirical[tool]) * 1e6)
