"""Assemble a run from a resolved configuration: workload, backend, instances, engine."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frontend.compute.factory import make_compute_model
from frontend.compute.roofline import Roofline
from frontend.engine import Engine, RunResult
from frontend.instance.runtime import InstanceRuntime, StepOutcome
from frontend.workload.request import Request

if TYPE_CHECKING:
    from astra_bridge.backend import Backend
    from frontend.config.loader import ResolvedRun

# Start-up: the workload readers (numpy for synthetic ones), the .et writer (protobuf) and the astra-sim
# bridge are imported where a run needs them, not when this module loads.

MAX_DUMP_ITERATIONS = 100_000


def parse_iteration_spec(spec: str, flag: str = "--dump-iterations") -> set[int]:
    """'0,10,100-110' -> {0, 10, 100..110}; ConfigError naming `flag` for anything else."""
    from frontend.config.loader import ConfigError

    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0],
                                                                             part[1:].split("-", 1)[1])
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ConfigError(f"{flag}: iteration range {part!r} is reversed")
                if lo < 0:
                    raise ConfigError(f"{flag}: iteration indices must be >= 0 (got {part!r})")
                if hi - lo + 1 + len(out) > MAX_DUMP_ITERATIONS:
                    raise ConfigError(f"{flag}: more than {MAX_DUMP_ITERATIONS:,} iterations asked for")
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{flag}: {part!r} is not an iteration index or range (e.g. 0,10,100-110)") from None
    if any(i < 0 for i in out):
        raise ConfigError(f"{flag}: iteration indices must be >= 0")
    if not out:
        raise ConfigError(f"{flag}: no iterations given")
    return out


def _resolve_path(run: ResolvedRun, path: str, field: str) -> Path:
    """A workload file as given, else beside the run file; a missing one is an error naming its field."""
    from frontend.workload.sources import resolve_path

    return resolve_path(run, path, field)


def load_workload(run: ResolvedRun, seed: int):
    """(flat requests, agent programs or None, tool distributions, notes): the source registered for the run's
    workload kind (frontend/workload/sources.py) loads it."""
    from frontend.workload.sources import load_workload as load

    return load(run, seed)


def _first_line(path: Path) -> str:
    from frontend.workload.sources import first_line

    return first_line(path)


def bundle_path(inst, cfg, base_dir: Path | None) -> Path | None:
    """The profile bundle an instance uses (compute.profile / --profile, else its hardware entry), if any."""
    if cfg.kind != "profile":
        return None
    path = cfg.profile
    if path is None:
        key = f"{inst.model.name}/{inst.engine.dtype}/tp{inst.tp}"
        path = inst.hardware.profiles.get(key) or inst.hardware.profiles.get(inst.model.name)
        if path is None:
            return None
    p = Path(path)
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    return p


def check_bundles(run: ResolvedRun, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Check every bundle the run will read (BundleError naming the file); per instance what it uses."""
    from frontend.compute.bundle_check import check_bundle, read_meta

    used = []
    for ri in run.instances:
        p = bundle_path(ri, run.config.compute, run.config.base_dir)
        entry: dict[str, Any] = {"instance": ri.name, "configured": run.config.compute.kind}
        if p is not None and not p.is_dir():
            from frontend.compute.bundle_check import BundleError

            where = "compute.profile" if run.config.compute.profile else f"hardware {ri.hardware.name} profiles"
            raise BundleError(f"{where}: profile bundle {p} is not a directory (a bundle's model folder)")
        if p is not None:
            for w in check_bundle(p, ri.engine.dtype, ri.tp, ri.hardware.name):
                if warn is not None:
                    warn(w)
            meta = read_meta(p / ri.engine.dtype)
            entry["bundle"] = {"path": str(p.resolve()), "dtype": ri.engine.dtype, "tp": ri.tp,
                               **{k: str(meta[k]) for k in ("hardware", "gpu", "model", "vllm_version",
                                                             "profiled_at") if k in meta}}
        used.append(entry)
    return used


def load_requests(run: ResolvedRun, seed: int) -> tuple[list[Request], list[str]]:
    from frontend.workload.jsonl import read_jsonl
    from frontend.workload.synthetic import synthetic_requests

    wl = run.config.workload
    notes: list[str] = []
    if wl.kind == "synthetic":
        return synthetic_requests(wl, seed), notes
    if wl.kind == "jsonl":
        path = _resolve_path(run, wl.path, "workload.path")
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
        from astra_bridge.embedded.backend import EmbeddedBackend

        return EmbeddedBackend(cache=b.cache, cache_size=b.cache_size)
    from astra_bridge.astrasim import AstraSimBackend

    return AstraSimBackend(b.astra_sim, cache=b.cache)


@dataclass
class IterationHook:
    """Engine on_step hook that hands the chosen iterations (by index across the run) to take()."""

    wanted: set[int]
    counter: int = field(default=0, kw_only=True)
    transfers: int = field(default=0, kw_only=True)  # KV transfers seen (prefill/decode disaggregation)

    def __call__(self, inst: InstanceRuntime, out: StepOutcome, start_ns: int) -> None:
        unit = inst.unit
        if unit is not None and unit.members[0] is not inst:
            return  # a lockstep group's step is one set of graphs: counted once, at its first member
        k = self.counter
        self.counter += 1
        if k in self.wanted:
            self.take(k, inst, out, start_ns)

    def take(self, k: int, inst: InstanceRuntime, out: StepOutcome, start_ns: int) -> None:
        raise NotImplementedError

    def transfer(self, k: int, req, system, graphs: list, start_ns: int, finish_ns: list[int] | None = None) -> None:
        """The k-th KV transfer of a prefill/decode deployment (frontend/pd.py): its own graphs (with `finish_ns`
        when the cluster network timed them: congestion-aware messages). Default: ignored."""

    def on_transfer(self, req, system, graphs: list, start_ns: int, finish_ns: list[int] | None = None) -> None:
        k = self.transfers
        self.transfers += 1
        if k in self.wanted:
            self.transfer(k, req, system, graphs, start_ns, finish_ns)


@dataclass
class ChakraDumper(IterationHook):
    out_dir: Path
    written: list[int] = field(default_factory=list)

    def take(self, k: int, inst: InstanceRuntime, out: StepOutcome, start_ns: int) -> None:
        from astra_bridge.inputs import write_input_set
        from chakra_gen.et_io import with_micro_durations

        d = self.out_dir / f"iter{k}"
        system = inst.timing_system  # a lockstep group's step covers all its ranks
        write_input_set(d, system, out.graphs, metadata={"instance": inst.name, "iteration": k})
        from astra_bridge.embedded.backend import make_executor

        micro = [with_micro_durations(g) for g in out.graphs]
        r = make_executor(system).run(micro)
        (d / "embedded.json").write_text(json.dumps({
            "instance": inst.name, "iteration": k, "start_ns": start_ns,
            "per_rank_finish_ns": r.per_rank_finish_ns,
            "duration_ns": r.duration_ns,
            "duration_ns_exact": out.result.duration_ns,
            "note": "per_rank_finish_ns executes the graphs as written to the .et files "
                    "(compute durations rounded to whole microseconds, as ASTRA-sim reads them)",
        }, indent=2) + "\n")
        self.written.append(k)

    def transfer(self, k: int, req, system, graphs: list, start_ns: int, finish_ns: list[int] | None = None) -> None:
        """KV transfers go to iter-kv<k>/ (the k-th transfer of the run), ASTRA-sim input sets like iterations.
        Transfers over a cluster network (`finish_ns` given) are congestion-aware message sets: run them with
        AstraSim_Analytical_Congestion_Aware."""
        from astra_bridge.embedded.backend import make_executor
        from astra_bridge.inputs import write_input_set

        d = self.out_dir / f"iter-kv{k}"
        write_input_set(d, system, graphs, metadata={"transfer": k, "request": req.request_id})
        if finish_ns is None:
            r = make_executor(system).run(graphs)
            finish, binary = r.per_rank_finish_ns, "AstraSim_Analytical_Congestion_Unaware"
        else:
            finish, binary = finish_ns, "AstraSim_Analytical_Congestion_Aware"
        (d / "embedded.json").write_text(json.dumps({
            "transfer": k, "request": req.request_id, "start_ns": start_ns, "binary": binary,
            "per_rank_finish_ns": finish, "duration_ns": max(finish)}, indent=2) + "\n")


def _acceptance_trace(run: ResolvedRun, path: str) -> dict[str, float]:
    """engine.speculative_acceptance_trace: JSONL {request_id, acceptance in [0, 1)}, relative to the run file."""
    from frontend.workload.jsonl import WorkloadError, json_objects
    from frontend.workload.sources import resolve_path

    field = "engine.speculative_acceptance_trace"
    out: dict[str, float] = {}
    for where, obj in json_objects(resolve_path(run, path, field), field):
        a = obj.get("acceptance") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or "request_id" not in obj or isinstance(a, bool) \
                or not isinstance(a, (int, float)) or not 0 <= a < 1:
            raise WorkloadError(f"{field}: {where}: expected {{request_id, acceptance}} with acceptance in [0, 1)")
        out[str(obj["request_id"])] = float(a)
    return out


def _expert_trace(run: ResolvedRun, path: str, num_experts: int):
    """moe.expert_trace, relative to the run file; a bad file is a WorkloadError naming file:line and field."""
    from frontend.compute.moe_routing import ExpertTrace
    from frontend.workload.jsonl import WorkloadError
    from frontend.workload.sources import resolve_path

    where = resolve_path(run, path, "moe.expert_trace")
    try:
        return ExpertTrace(where, num_experts)
    except WorkloadError:
        raise  # already names the field and the line
    except ValueError as e:
        raise WorkloadError(f"moe.expert_trace: {e}") from None


def build_instances(run: ResolvedRun, backend: Backend, warn: Callable[[str], None] | None = None,
                    seed: int | None = None) -> list[InstanceRuntime]:
    from frontend.instance.tiers import build_tiers

    tiers = build_tiers(run.config.kv.tiers, run.instances)
    insts = []
    traces: dict = {}  # model name -> its expert trace (moe.routing: trace), read once
    accept = None  # request id -> speculative acceptance rate (engine.speculative_acceptance_trace), read once
    for ri in run.instances:
        cm = make_compute_model(ri, run.config.compute, base_dir=run.config.base_dir, warn=warn)
        if ri.enable_expert_parallel:
            from frontend.compute.expert_parallel import ExpertParallelCompute

            moe = run.config.moe
            trace = None
            if moe.routing == "trace":
                trace = traces.get(ri.model.name)
                if trace is None:
                    trace = traces[ri.model.name] = _expert_trace(run, moe.expert_trace, ri.model.num_experts)
            cm = ExpertParallelCompute(cm, ri.model.num_experts, ri.model.experts_per_token, ri.ep, ri.expert_placement,
                                       moe.routing, moe.zipf_s, run.config.seed if seed is None else seed,
                                       ri.dp_group or ri.name, dp=ri.dp, expert_trace=trace)
        if run.config.lora.adapters:
            from frontend.instance.lora import LoRACompute

            cm = LoRACompute(cm, ri.model, ri.tp, ri.pp, run.config.lora, ri.dtype_bytes)
        k = ri.engine.speculative_tokens
        if k and ri.engine.speculative_method != "ngram":  # n-gram lookup runs on the CPU
            from frontend.compute.speculative import SpeculativeCompute

            draft = None
            if ri.draft_model is not None:
                draft = Roofline(ri.draft_model, ri.hardware, ri.engine.dtype, ri.tp,
                                 None if ri.engine.kv_cache_dtype == "auto" else ri.engine.kv_cache_dtype)
            cm = SpeculativeCompute(cm, k, draft, ri.engine.speculative_method)
        rt = InstanceRuntime(ri, cm, backend, run.config.backend.system, tiers=tiers[ri.name], kv_cfg=run.config.kv)
        if k:  # the draft acceptance draws: the run's seed and the instance
            rt.scheduler.spec_rng.seed(f"{run.config.seed if seed is None else seed}:{ri.name}:speculative")
            if ri.engine.speculative_acceptance_trace:
                if accept is None:
                    accept = _acceptance_trace(run, ri.engine.speculative_acceptance_trace)
                rt.scheduler.spec_accept_by_request = accept
        if run.config.lora.adapters:
            rt.scheduler.max_loras = run.config.lora.max_loras
        insts.append(rt)
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
             requests: list[Request] | None = None, warn: Callable[[str], None] | None = None,
             stream_dir: Path | None = None, run_ahead: bool = True) -> tuple[RunResult, dict[str, Any]]:
    """Run the simulation. With `stream_dir`, requests.csv and iterations.csv are written there while the
    run goes and no per-request record is kept (memory flat in the number of requests); without it, the
    result keeps every request and iteration row (result.requests, result.iterations.rows). `run_ahead`
    lets the engine advance runs of unchanged decode batches in one step (same outputs, see Engine)."""
    with _few_gc_passes():
        if stream_dir is None:
            return _simulate(run, seed, progress, dump, requests, warn, None, run_ahead)
        with (Path(stream_dir) / "requests.csv").open("w", newline="") as rf, \
                (Path(stream_dir) / "iterations.csv").open("w", newline="") as itf:
            return _simulate(run, seed, progress, dump, requests, warn, (rf, itf), run_ahead)


def _simulate(run: ResolvedRun, seed: int | None, progress, dump: ChakraDumper | None,
              requests: list[Request] | None, warn: Callable[[str], None] | None, files, run_ahead: bool = True
              ) -> tuple[RunResult, dict[str, Any]]:
    seed = run.config.seed if seed is None else seed
    notes: list[str] = []
    programs = None
    tools: dict = {}
    total = None
    bundles = check_bundles(run, warn)
    wl = run.config.workload
    if requests is None:
        if files is not None and wl.kind == "synthetic":
            from frontend.workload.synthetic import iter_synthetic_requests

            requests = iter_synthetic_requests(wl, seed)  # type: ignore[assignment]
            total = wl.num_requests
        else:
            requests, programs, tools, notes = load_workload(run, seed)
    backend = make_backend(run)
    insts = build_instances(run, backend, warn, seed)
    orch = None
    if programs:
        from frontend.agents.orchestrator import Orchestrator
        from frontend.agents.tools import ToolSimulator

        wl = run.config.workload
        sys_tokens = wl.system_prompt_tokens if wl.kind == "agents" and not wl.trace else 0
        orch = Orchestrator(programs, ToolSimulator(tools, seed, run.config.base_dir), insts[0].pool.block_size,
                            system_prompt_tokens=sys_tokens)
    engine = Engine(run, insts, backend, progress=progress, on_step=dump, orchestrator=orch,
                    keep_records=files is None, run_ahead=run_ahead)
    if dump is not None and engine.cluster.pd is not None:
        engine.cluster.pd.on_transfer = dump.on_transfer
    if files is not None:
        engine.request_log.attach(files[0])
        engine.log.attach(files[1])
    result = engine.run(requests, total=total)
    result.orchestrator = orch
    result.retention = engine.retention
    result.notes.extend(notes)
    log = result.request_log
    no_ids = log.without_content
    result.info = {
        "seed": seed,
        "backend": run.config.backend.kind,
        "compute": [{**b, "used": "roofline" if isinstance(getattr(i.compute, "inner", i.compute), Roofline)
                     else "profile"}
                    for b, i in zip(bundles, insts, strict=True)],
        "config": run.config.model_dump(mode="json"),
        "source": run.source,
    }
    extra: dict[str, Any] = {
        "name": run.config.name,
        "seed": seed,
        "instances": [{"name": i.name, "hardware": i.inst.hardware.name, "model": i.inst.model.name,
                       "tp": i.inst.tp, "pp": i.inst.pp, "kv_blocks": i.inst.num_gpu_blocks,
                       "iterations": i.iterations} for i in insts],
        "prefix_cache": _prefix_summary(insts, no_ids, log.total),
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
