"""SLO targets, whether a run meets them, and goodput.

An SLO spec is `METRIC_QUANTILE_ms=TARGET`: METRIC one of ttft, tpot, e2e; QUANTILE one of mean, p50, p90, p99
(e.g. `ttft_p99_ms=2000`, `tpot_p50_ms=50`). A run meets a set of SLOs when each named quantile of its summary
is within its target. Goodput counts the requests that meet every target on their own (a request meets
`ttft_p99_ms=2000` when its own TTFT is <= 2000 ms; TPOT targets do not apply to one-token outputs, which
have no TPOT), per simulated second, per GPU, and per dollar when a GPU-hour price is given. Rejected requests
never count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from frontend.errors import ConfigError

METRICS = ("ttft", "tpot", "e2e")
QUANTILES = ("mean", "p50", "p90", "p99")
_SPEC = re.compile(r"^\s*([a-z0-9]+)_([a-z0-9]+)_ms\s*=\s*(\S+)\s*$")


@dataclass(frozen=True)
class SLO:
    metric: str  # ttft | tpot | e2e
    quantile: str  # mean | p50 | p90 | p99
    target_ms: float

    @property
    def name(self) -> str:
        return f"{self.metric}_{self.quantile}_ms"

    def __str__(self) -> str:
        return f"{self.name}={self.target_ms:g}"


def parse_slo(spec: str, flag: str = "--slo") -> SLO:
    m = _SPEC.match(spec)
    if m is None:
        raise ConfigError(f"{flag} {spec!r}: expected METRIC_QUANTILE_ms=TARGET, e.g. ttft_p99_ms=2000 "
                          f"(metrics {', '.join(METRICS)}; quantiles {', '.join(QUANTILES)})")
    metric, q, val = m.groups()
    if metric not in METRICS:
        raise ConfigError(f"{flag} {spec!r}: unknown metric {metric!r} (expected one of {', '.join(METRICS)})")
    if q not in QUANTILES:
        raise ConfigError(f"{flag} {spec!r}: unknown quantile {q!r} (expected one of {', '.join(QUANTILES)})")
    try:
        target = float(val)
    except ValueError:
        raise ConfigError(f"{flag} {spec!r}: target {val!r} is not a number (milliseconds)") from None
    if not 0 < target < float("inf"):
        raise ConfigError(f"{flag} {spec!r}: target must be a positive finite number of milliseconds")
    return SLO(metric, q, target)


def parse_slos(specs: Iterable[str], flag: str = "--slo") -> list[SLO]:
    out: list[SLO] = []
    seen: dict[str, SLO] = {}
    for spec in specs:
        s = parse_slo(spec, flag)
        if s.name in seen:
            raise ConfigError(f"{flag} {spec!r}: {s.name} given twice ({seen[s.name]} and {s})")
        seen[s.name] = s
        out.append(s)
    return out


def slo_checks(summary: dict[str, Any], slos: Sequence[SLO]) -> dict[str, bool]:
    """Per SLO: is the run's quantile within target (a metric with no samples fails)."""
    out = {}
    for s in slos:
        v = summary[f"{s.metric}_ms"][s.quantile]
        out[s.name] = v is not None and v <= s.target_ms
    return out


def meets(summary: dict[str, Any], slos: Sequence[SLO]) -> bool:
    """Whether the run meets every SLO. A run with rejected requests meets no SLO set."""
    if summary.get("rejected"):
        return False
    return all(slo_checks(summary, slos).values())


def request_thresholds(slos: Sequence[SLO]) -> dict[str, float]:
    """Per-request targets in ns: the tightest target per metric, quantile dropped."""
    t: dict[str, float] = {}
    for s in slos:
        t[s.metric] = min(t.get(s.metric, float("inf")), s.target_ms * 1e6)
    return t


def good_requests(requests: Iterable[Any], slos: Sequence[SLO]) -> int:
    """Finished requests whose own TTFT, TPOT and E2E meet the per-request targets."""
    th = request_thresholds(slos)
    ttft = th.get("ttft", float("inf"))
    tpot = th.get("tpot", float("inf"))
    e2e = th.get("e2e", float("inf"))
    n = 0
    for r in requests:
        if r.status != "finished":
            continue
        if r.first_token_ns - r.arrival_ns > ttft or r.finish_ns - r.arrival_ns > e2e:
            continue
        if r.output_tokens > 1 and (r.finish_ns - r.first_token_ns) / (r.output_tokens - 1) > tpot:
            continue
        n += 1
    return n


def num_gpus(resolved: Any) -> int:
    """GPUs of a resolved run: each instance's tp x pp (a DP group's members are instances already)."""
    return sum(i.num_npus for i in resolved.instances)


def goodput(good: int, duration_s: float, gpus: int, usd_per_gpu_hour: float | None = None) -> dict[str, Any]:
    """Goodput figures: good requests per second, per second per GPU, and per dollar."""
    rps = good / duration_s if duration_s > 0 else 0.0
    out: dict[str, Any] = {"good_requests": good, "goodput_rps": round(rps, 6),
                           "goodput_rps_per_gpu": round(rps / gpus, 6) if gpus else 0.0}
    if usd_per_gpu_hour is not None:
        usd = gpus * usd_per_gpu_hour * duration_s / 3600.0
        out["goodput_per_usd"] = round(good / usd, 3) if usd > 0 else 0.0
    return out
