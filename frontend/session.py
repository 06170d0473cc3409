"""Assemble a run from a resolved configuration: workload, backend, instances, engine."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astra_bridge.backend import Backend
from astra_bridge.embedded.backend import EmbeddedBackend
from astra_bridge.inputs import write_input_set
from chakra_gen.et_io import with_micro_durations
from frontend.compute.factory import make_compute_model
from frontend.config.loader import ResolvedRun
from frontend.engine import Engine, RunResult
from frontend.instance.runtime import InstanceRuntime, StepOutcome
from frontend.workload.jsonl import read_jsonl
from frontend.workload.request import Request
from frontend.workload.synthetic import synthetic_requests


def parse_iteration_spec(spec: str) -> set[int]:
    """'0,10,100-110' -> {0, 10, 100..110}."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError(f"iteration range {part!r} is reversed")
            out.update(range(lo, hi + 1))
        else:
            out.add(int(part))
    if any(i < 0 for i in out):
        raise ValueError("iteration indices must be >= 0")
    return out


def _resolve_path(run: ResolvedRun, path: str) -> Path:
    p = Path(path)
    if not p.is_absolute() and run.config.base_dir is not None and not p.exists():
        cand = run.config.base_dir / p
        if cand.exists():
            return cand
    return p


def load_workload(run: ResolvedRun, seed: int):
    """(flat requests, agent programs or None, tool distributions, notes)."""
    from frontend.agents.generators import default_tools, generate, read_dag_jsonl, sessions_to_programs

    wl = run.config.workload
    if wl.kind == "agents":
        if wl.trace:
            path = _resolve_path(run, wl.trace)
            first = path.read_text().split("\n", 1)[0] if path.is_file() else ""
            if '"turns"' in first:
                progs = read_dag_jsonl(path)
                return [], progs, dict(wl.tools), []
            reqs, sessions = read_jsonl(path, None, 1.0)
            return reqs, sessions_to_programs(sessions), dict(wl.tools), []
        return [], generate(wl, seed), default_tools(wl), []
    if wl.kind == "jsonl":
        reqs, sessions = read_jsonl(_resolve_path(run, wl.path), wl.num_requests, wl.time_scale)
        progs = sessions_to_programs(sessions) if sessions else None
        return reqs, progs, {}, []
    return synthetic_requests(wl, seed), None, {}, []


def load_requests(run: ResolvedRun, seed: int) -> tuple[list[Request], list[str]]:
    wl = run.config.workload
    notes: list[str] = []
    if wl.kind == "synthetic":
        return synthetic_requests(wl, seed), notes
    if wl.kind == "jsonl":
        path = Path(wl.path)
        if not path.is_absolute() and run.config.base_dir is not None and not path.exists():
            cand = run.config.base_dir / path
            if cand.exists():
                path = cand
        reqs, sessions = read_jsonl(path, wl.num_requests, wl.time_scale)
        if sessions:
            from frontend.workload.jsonl import WorkloadError

            raise WorkloadError(f"{path}: holds {len(sessions)} agentic session lines; run them with an "
                                "agents workload (workload.kind: agents, with the file as its trace)")
        return reqs, notes
    raise ValueError(f"workload kind {wl.kind!r} is run through the agent orchestrator")


def make_backend(run: ResolvedRun) -> Backend:
    b = run.config.backend
    if b.kind == "embedded":
        return EmbeddedBackend(cache=b.cache, cache_size=b.cache_size)
    from astra_bridge.astrasim import AstraSimBackend

    return AstraSimBackend(b.astra_sim, cache=b.cache)


@dataclass
class IterationHook:
    """Engine on_step hook that hands the chosen iterations (by index across the run) to take()."""

    wanted: set[int]
    counter: int = field(default=0, kw_only=True)

    def __call__(self, inst: InstanceRuntime, out: StepOutcome, start_ns: int) -> None:
        k = self.counter
        self.counter += 1
        if k in self.wanted:
            self.take(k, inst, out, start_ns)

    def take(self, k: int, inst: InstanceRuntime, out: StepOutcome, start_ns: int) -> None:
        raise NotImplementedError


@dataclass
class ChakraDumper(IterationHook):
    out_dir: Path
    written: list[int] = field(default_factory=list)

    def take(self, k: int, inst: InstanceRuntime, out: StepOutcome, start_ns: int) -> None:
        d = self.out_dir / f"iter{k}"
        write_input_set(d, inst.system, out.graphs, metadata={"instance": inst.name, "iteration": k})
        from astra_bridge.embedded.backend import make_executor

        micro = [with_micro_durations(g) for g in out.graphs]
        r = make_executor(inst.system).run(micro)
        (d / "embedded.json").write_text(json.dumps({
            "instance": inst.name, "iteration": k, "start_ns": start_ns,
            "per_rank_finish_ns": r.per_rank_finish_ns,
            "duration_ns": r.duration_ns,
            "duration_ns_exact": out.result.duration_ns,
            "note": "per_rank_finish_ns executes the graphs as written to the .et files "
                    "(compute durations rounded to whole microseconds, as ASTRA-sim reads them)",
        }, indent=2) + "\n")
        self.written.append(k)


def build_instances(run: ResolvedRun, backend: Backend, warn: Callable[[str], None] | None = None
                    ) -> list[InstanceRuntime]:
    from frontend.instance.tiers import build_tiers

    tiers = build_tiers(run.config.kv.tiers, run.instances)
    insts = []
    for ri in run.instances:
        cm = make_compute_model(ri, run.config.compute, base_dir=run.config.base_dir, warn=warn)
        insts.append(InstanceRuntime(ri, cm, backend, run.config.backend.system, tiers=tiers[ri.name],
                                     kv_cfg=run.config.kv))
    return insts


@contextmanager
def _few_gc_passes() -> Iterator[None]:
    """A run allocates millions of small long-lived objects (requests, hash chains, iteration rows) and
    almost no reference cycles, so CPython's default thresholds re-scan the same live objects again and
    again (about 10% of a 10k-program run). Objects that exist before the run are frozen out of the
    scans and young ones are collected less often; both settings are restored afterwards."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def simulate(run: ResolvedRun, seed: int | None = None, progress=None, dump: ChakraDumper | None = None,
             requests: list[Request] | None = None, warn: Callable[[str], None] | None = None
             ) -> tuple[RunResult, dict[str, Any]]:
    with _few_gc_passes():
        return _simulate(run, seed, progress, dump, requests, warn)


def _simulate(run: ResolvedRun, seed: int | None, progress, dump: ChakraDumper | None,
              requests: list[Request] | None, warn: Callable[[str], None] | None
              ) -> tuple[RunResult, dict[str, Any]]:
    seed = run.config.seed if seed is None else seed
    notes: list[str] = []
    programs = None
    tools: dict = {}
    if requests is None:
        requests, programs, tools, notes = load_workload(run, seed)
    backend = make_backend(run)
    insts = build_instances(run, backend, warn)
    orch = None
    if programs:
        from frontend.agents.orchestrator import Orchestrator
        from frontend.agents.tools import ToolSimulator

        wl = run.config.workload
        sys_tokens = wl.system_prompt_tokens if wl.kind == "agents" and not wl.trace else 0
        orch = Orchestrator(programs, ToolSimulator(tools, seed, run.config.base_dir), insts[0].pool.block_size,
                            system_prompt_tokens=sys_tokens)
    engine = Engine(run, insts, backend, progress=progress, on_step=dump, orchestrator=orch)
    result = engine.run(requests)
    result.orchestrator = orch
    result.retention = engine.retention
    result.notes.extend(notes)
    requests = result.requests
    no_ids = sum(1 for r in requests if not r.content.has_content)
    extra: dict[str, Any] = {
        "name": run.config.name,
        "seed": seed,
        "instances": [{"name": i.name, "hardware": i.inst.hardware.name, "model": i.inst.model.name,
                       "tp": i.inst.tp, "pp": i.inst.pp, "kv_blocks": i.inst.num_gpu_blocks,
                       "iterations": i.iterations} for i in insts],
        "prefix_cache": _prefix_summary(insts, no_ids, len(requests)),
        "notes": result.notes,
    }
    return result, extra


def _prefix_summary(insts: list[InstanceRuntime], no_ids: int, total: int) -> dict[str, Any]:
    lookups = sum(i.pool.stats.lookup_blocks for i in insts)
    hits = sum(i.pool.stats.hit_blocks for i in insts)
    enabled = any(i.pool.enable_prefix_caching for i in insts)
    out: dict[str, Any] = {"enabled": enabled, "hbm_hit_rate": round(hits / lookups, 6) if lookups else 0.0,
                           "requests_without_token_ids": no_ids}
    if enabled and no_ids:
        out["warning"] = (f"{no_ids} of {total} requests carry no token ids or synthetic content and can never "
                          "hit the prefix cache; their hit rate of 0 is not a policy result")
    return out
