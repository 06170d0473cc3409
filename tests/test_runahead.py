"""Decode run-ahead is exact: a run with it and the same run stepped one iteration at a time write the same
requests.csv, iterations.csv (and programs.csv) byte for byte and the same summary (wall time and the
backend's call counts aside: those count the simulator's work, which run-ahead is there to cut).

Every example config is run both ways (small sizes), the validation sets on both compute models, plus
targeted cases for what ends or shapes a run: async scheduling on and off, output token ids (blocks filled
during decode go into the prefix cache), KV tiers with write-back offload and swap preemption under block
pressure, a full batch with a waiting queue ordered by a program-priority policy, TP and PP.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frontend.config.loader import load_and_resolve
from frontend.engine import Engine
from frontend.metrics.report import summarize
from frontend.session import simulate
from tests.conftest import BUNDLE, LSS, REPO, small_run_dict

EXAMPLES = sorted((REPO / "configs" / "examples").glob("*.yaml"))
STUDIES = sorted((REPO / "configs" / "studies").glob("*.yaml"))
IGNORED_SUMMARY_KEYS = ("wall_s", "backend")


def _run(cfg: Path | str, overrides: dict | None, out: Path, run_ahead: bool) -> tuple[dict, dict]:
    out.mkdir(parents=True)
    res, extra = simulate(load_and_resolve(cfg, overrides), stream_dir=out, run_ahead=run_ahead)
    s = summarize(res, extra)
    return {k: v for k, v in s.items() if k not in IGNORED_SUMMARY_KEYS}, res.backend_stats


def assert_same_both_ways(cfg: Path | str, overrides: dict | None, tmp: Path) -> dict:
    """Run `cfg` with and without run-ahead; the outputs must match byte for byte. Returns the run-ahead
    run's backend stats (how many steps were timed in closed form)."""
    on, stats = _run(cfg, overrides, tmp / "on", True)
    off, stats_off = _run(cfg, overrides, tmp / "off", False)
    assert stats_off["closed_form"] == 0
    names = sorted(p.name for p in (tmp / "off").iterdir())
    assert names == sorted(p.name for p in (tmp / "on").iterdir())
    for name in names:
        assert (tmp / "on" / name).read_bytes() == (tmp / "off" / name).read_bytes(), name
    assert json.dumps(on, sort_keys=True) == json.dumps(off, sort_keys=True)
    return stats


def _write_cfg(tmp: Path, d: dict) -> Path:
    p = tmp / "run.yaml"
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize("cfg", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_is_identical_with_and_without_run_ahead(cfg: Path, tmp_path: Path):
    if cfg.stem.startswith("validate-") and not LSS.is_dir():
        pytest.skip("validation sets need the shared reference data")
    n = 12 if cfg.stem.startswith("agents-") else 60
    assert_same_both_ways(cfg, {"workload": {"num_requests": n}}, tmp_path)


@pytest.mark.parametrize("cfg", STUDIES, ids=[p.stem for p in STUDIES])
def test_agent_policy_studies_are_identical(cfg: Path, tmp_path: Path):
    """The paper studies' policies (pins held across tool calls, program priorities, swap preemption,
    background prefetch, farthest-first eviction) act between and inside decode runs."""
    assert_same_both_ways(cfg, {"workload": {"num_requests": 15}}, tmp_path)


@pytest.mark.parametrize("cfg", [p for p in EXAMPLES if p.stem.startswith("validate-")],
                         ids=lambda p: p.stem)
def test_validation_sets_on_the_roofline_model_too(cfg: Path, tmp_path: Path):
    if not LSS.is_dir():
        pytest.skip("validation sets need the shared reference data")
    assert_same_both_ways(cfg, {"workload": {"num_requests": 60}, "compute": {"kind": "roofline", "profile": None}},
                          tmp_path)


def test_profile_bundle_compute_model(tmp_path: Path):
    if not BUNDLE.is_dir():
        pytest.skip("needs the shared RTX4090 profile bundle")
    assert_same_both_ways(REPO / "configs/examples/rtx4090-llama3.1-8b.yaml",
                          {"workload": {"num_requests": 60}, "compute": {"kind": "profile", "profile": str(BUNDLE)}},
                          tmp_path)


def test_run_ahead_engages_and_times_most_decode_steps_in_closed_form(tmp_path: Path):
    stats = assert_same_both_ways(REPO / "configs/examples/quickstart.yaml", {"workload": {"num_requests": 150}},
                                  tmp_path)
    assert stats["closed_form"] > stats["simulated"] / 2  # not a vacuous comparison


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_async_scheduling_on_and_off(async_scheduling: bool, tmp_path: Path):
    d = small_run_dict(engine={"max_num_seqs": 16, "max_num_batched_tokens": 512, "block_size": 16,
                               "async_scheduling": async_scheduling})
    d["workload"]["num_requests"] = 80
    stats = assert_same_both_ways(_write_cfg(tmp_path, d), None, tmp_path)
    assert stats["closed_form"] > 0


def test_output_token_ids_fill_prefix_cache_blocks_during_decode(tmp_path: Path):
    """With output token ids every block a decode fills is registered in the prefix cache (and copied to a
    write-through tier): the run must make those registrations at the same steps, in the same order."""
    wl = tmp_path / "ids.jsonl"
    lines = []
    for i in range(40):
        shared = list(range(64))  # a common prefix, so later requests hit blocks earlier ones registered
        prompt = shared + [1000 + i * 7 + k for k in range(40 + (i * 13) % 90)]
        out = [50_000 + i * 300 + k for k in range(20 + (i * 29) % 120)]
        lines.append(json.dumps({"input_toks": len(prompt), "output_toks": len(out), "arrival_time_ns": i * 30_000_000,
                                 "input_tok_ids": prompt, "output_tok_ids": out}))
    wl.write_text("\n".join(lines) + "\n")
    d = small_run_dict(engine={"max_num_seqs": 16, "max_num_batched_tokens": 256, "block_size": 16})
    d["workload"] = {"kind": "jsonl", "path": str(wl)}
    d["kv"] = {"offload": "write_through",
               "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 1, "bw_gbps": 25, "latency_ns": 2000}]}
    stats = assert_same_both_ways(_write_cfg(tmp_path, d), None, tmp_path)
    assert stats["closed_form"] > 0


def test_block_pressure_write_back_and_swap_preemption(tmp_path: Path):
    """Few KV blocks: decode steps run out of blocks (a run must hand over before any allocation fails),
    evictions copy blocks down (write-back) and preemption swaps to DRAM."""
    d = small_run_dict(engine={"max_num_seqs": 32, "max_num_batched_tokens": 1024, "block_size": 16,
                               "num_gpu_blocks_override": 160})
    d["workload"]["num_requests"] = 60
    d["workload"]["output_tokens"] = {"dist": "lognormal", "mean": 150, "sigma": 0.5, "max": 400}
    d["kv"] = {"offload": "write_back", "preemption": "swap",
               "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 1, "bw_gbps": 25, "latency_ns": 2000}]}
    res, _ = simulate(load_and_resolve(_write_cfg(tmp_path, d)))
    assert res.request_log.preemptions > 0  # the case is exercised
    assert_same_both_ways(tmp_path / "run.yaml", None, tmp_path / "cmp")


@pytest.mark.parametrize("scheduling", ["plas", "program_fcfs"])
def test_full_batch_with_a_waiting_queue_under_program_priorities(scheduling: str, tmp_path: Path):
    """max_num_seqs is reached while turns wait: a run goes on (nobody can be admitted) and the waiting
    queue is still ordered by the policy at every step, as the general path orders it."""
    over = {"workload": {"num_requests": 30}, "engine": {"max_num_seqs": 4},
            "policy": {"scheduling": scheduling}}
    stats = assert_same_both_ways(REPO / "configs/examples/agents-coding-4x.yaml", over, tmp_path)
    assert stats["closed_form"] > 0


def test_tensor_and_pipeline_parallel_instances(tmp_path: Path):
    stats = assert_same_both_ways(REPO / "configs/examples/h100x8-llama3.1-70b-tp8.yaml",
                                  {"workload": {"num_requests": 60}}, tmp_path / "tp")
    assert stats["closed_form"] > 0  # TP chains (collectives) are timed in closed form
    assert_same_both_ways(REPO / "configs/examples/h100-2x4-llama3.1-70b-tp4pp2.yaml",
                          {"workload": {"num_requests": 60}}, tmp_path / "pp")


def test_backends_declare_whether_run_ahead_is_safe():
    from astra_bridge.astrasim import AstraSimBackend
    from astra_bridge.embedded.backend import EmbeddedBackend

    assert EmbeddedBackend.runahead_safe is True
    assert AstraSimBackend.runahead_safe is False  # the binary times every iteration as it comes

    class Opaque:  # a backend that says nothing is stepped one iteration at a time
        name = "opaque"

        def run(self, system, graphs, start_ns=0):
            raise AssertionError("not called")

        def stats(self):
            return {}

    run = load_and_resolve(REPO / "configs/examples/quickstart.yaml")
    from frontend.session import build_instances

    insts = build_instances(run, Opaque())
    eng = Engine(run, insts, Opaque(), run_ahead=True)
    assert not eng.run_ahead and not any(i.scheduler.run_ahead or i.run_ahead for i in insts)


def test_graphs_of_a_closed_form_step_are_the_ones_the_general_path_builds():
    """A hook that reads StepOutcome.graphs gets graphs (built on access) that time to the step's result."""
    from frontend.session import IterationHook

    seen: list[tuple[int, int]] = []

    class Check(IterationHook):
        def take(self, k, inst, out, start_ns):
            if out.plan.run_ahead and out._graphs is None:
                r = inst.backend.run(inst.system, out.graphs, start_ns=start_ns)
                seen.append((r.duration_ns, out.result.duration_ns))
                assert out.tensor_bytes == out.graphs[0].tensor_bytes_total()

    run = load_and_resolve(REPO / "configs/examples/quickstart.yaml", {"workload": {"num_requests": 40}})
    res, _ = simulate(run, dump=Check(set(range(0, 4000, 7))))  # type: ignore[arg-type]
    assert seen and all(a == b for a, b in seen)


def test_free_queue_pop_many_takes_what_popleft_would():
    """Large allocations (prefill chunks, runs' block boundaries) take blocks with pop_many: the same blocks in
    the same order, and the same queue afterwards, as one popleft() per block, stale entries included."""
    import random

    from frontend.instance.kv import FreeQueue

    rng = random.Random(3)
    n = 200
    a, b = FreeQueue(n), FreeQueue(n)
    refs_a, refs_b = [0] * n, [0] * n
    for _ in range(400):
        held = rng.sample(range(n), rng.randint(1, 30))  # leaves stale entries in both queues
        a.acquire(refs_a, held)
        b.acquire(refs_b, held)
        a.release(refs_a, held)
        b.release(refs_b, held)
        if rng.random() < 0.3:
            x = rng.choice(list(a))
            a.move_to_front(x)
            b.move_to_front(x)
        k = rng.randint(0, min(25, len(a)))
        got = a.pop_many(k)
        assert got == [b.popleft() for _ in range(k)]
        assert list(a) == list(b) and len(a) == len(b)
        a.release(refs_a, [])  # nothing
        for x in got:  # give them back in the same way
            refs_a[x] = refs_b[x] = 1
        a.release(refs_a, got)
        b.release(refs_b, got)
