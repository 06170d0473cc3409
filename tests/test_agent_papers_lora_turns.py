"""Issue 19, second round: the agent generator's call-count distribution (Autellix's heavy-tailed programs),
per-agent LoRA adapters and ScaleSim's adapter prefetch / farthest-next-use adapter eviction."""

from __future__ import annotations

import numpy as np
import pytest

from frontend.agents.generators import coding_programs, generate
from frontend.config.loader import ConfigError, parse_config, resolve
from frontend.config.schema import AgentWorkload, Dist
from frontend.instance.lora import LoRACompute
from frontend.instance.plan import IterationPlan
from frontend.metrics.report import summarize
from frontend.session import simulate
from frontend.workload.request import Request
from frontend.workload.synthetic import sample_dist
from tests.conftest import small_run_dict


def test_pareto_sampled_mean_matches_its_formula():
    # E[X] = alpha x_m / (alpha - 1) with x_m = mean (alpha - 1) / alpha, i.e. `mean`; alpha 3: finite variance
    d = Dist(dist="pareto", mean=2000, alpha=3.0, max=10_000_000)
    x = sample_dist(d, np.random.default_rng(0), 400_000)
    assert x.mean() == pytest.approx(2000, rel=0.01)
    assert x.min() >= round(2000 * 2 / 3) - 1  # the scale x_m is the smallest value
    # the tail: P(X > t) = (x_m / t)^alpha
    t = 4000
    assert (x > t).mean() == pytest.approx((2000 * 2 / 3 / t) ** 3, rel=0.05)


def test_turns_distribution_sets_calls_per_program_seeded_and_bounded():
    wl = AgentWorkload(num_programs=4000, turns=Dist(dist="pareto", mean=20, alpha=1.5, max=400),
                       system_prompt_tokens=10)
    a = [len(p.turns) for p in coding_programs(wl, 7)]
    b = [len(p.turns) for p in coding_programs(wl, 7)]
    assert a == b  # same config + seed -> the same programs
    assert a != [len(p.turns) for p in coding_programs(wl, 8)]
    assert min(a) >= 1 and max(a) <= 400 and max(a) > 200  # the tail reaches the bound
    assert np.median(a) < np.mean(a) / 1.5  # heavy-tailed: most programs are short, the mean is in the tail
    # lognormal: sampled mean vs its formula (mean is the distribution's own), loose for the rounding
    wl2 = AgentWorkload(num_programs=6000, turns=Dist(dist="lognormal", mean=30, sigma=0.5, max=10_000),
                        system_prompt_tokens=10)
    assert np.mean([len(p.turns) for p in coding_programs(wl2, 1)]) == pytest.approx(30, rel=0.03)


def test_old_turns_min_max_form_is_unchanged():
    # pinned from the code before the turns distribution existed (uniform turns_min..turns_max, same rng draws)
    ps = coding_programs(AgentWorkload(num_programs=12, turns_min=1, turns_max=40, system_prompt_tokens=10), 5)
    assert [len(p.turns) for p in ps] == [8, 38, 17, 10, 9, 12, 21, 34, 23, 19, 10, 4]
    assert sum(t.output_tokens for p in ps for t in p.turns) == 30074 and ps[-1].arrival_ns == 7116821772


@pytest.mark.parametrize("turns, extra, msg", [
    ({"dist": "pareto", "mean": 8}, {}, "workload.turns: dist='pareto' needs alpha"),
    ({"dist": "pareto", "mean": 8, "alpha": 1.0}, {}, "workload.turns.alpha: Input should be greater than 1"),
    ({"dist": "pareto", "mean": 8, "alpha": 2, "max": 200_000}, {}, "workload.turns: max: at most 100000"),
    ({"dist": "pareto", "mean": 8, "alpha": 2}, {"turns_max": 9}, "either a turns distribution or turns_max"),
    ({"dist": "pareto", "mean": 8, "alpha": 2}, {"generator": "workflow"}, "workload.turns: only the coding"),
])
def test_turns_errors_name_the_field(turns, extra, msg):
    d = small_run_dict()
    d["workload"] = {"kind": "agents", "generator": "coding", "num_programs": 3, "turns": turns, **extra}
    with pytest.raises(ConfigError) as e:
        resolve(parse_config(d, "x.yaml"))
    assert msg in str(e.value)


def test_lora_per_program_gives_each_agent_its_own_adapter():
    wl = AgentWorkload(generator="multiagent", num_agents=40, active_fraction=0.2, steps=3,
                       system_prompt_tokens=10, lora_per_program=True)
    for p in generate(wl, 2):
        assert p.lora == int(p.program_id.removeprefix("agent-"))
    wl = AgentWorkload(num_programs=5, turns_min=2, turns_max=3, system_prompt_tokens=10, lora_per_program=True)
    assert [p.lora for p in generate(wl, 2)] == [0, 1, 2, 3, 4]
    d = small_run_dict()
    d["workload"] = {"kind": "agents", "generator": "coding", "num_programs": 5, "lora_per_program": True}
    d["lora"] = {"adapters": 4}
    with pytest.raises(ConfigError, match="lora: workload.lora_per_program gives each of the 5 programs"):
        resolve(parse_config(d, "x.yaml"))


def _lora(max_loras: int = 3, bw: float = 10.0) -> LoRACompute:
    d = small_run_dict()
    d["lora"] = {"adapters": 8, "rank": 8, "max_loras": max_loras, "host_bw_gbps": bw}
    run = resolve(parse_config(d, "x.yaml"))
    ri = run.instances[0]
    return LoRACompute(object(), ri.model, 1, 1, run.config.lora, 2)


def _plan(*adapters: int) -> IterationPlan:
    reqs = [Request(request_id=f"r{a}", arrival_ns=0, input_tokens=16, output_tokens=1, lora=a) for a in adapters]
    return IterationPlan("x", reqs, [16] * len(reqs), [0] * len(reqs))


def test_adapter_prefetch_lands_in_the_background_and_evicts_the_farthest():
    lc = _lora(max_loras=3, bw=10.0)
    load_ns = int(lc.adapter_bytes / 10.0)
    lc.set_now(0)
    lc.begin_step(1, _plan(0, 1))  # two cold loads in the step (synchronous: the GPU waits)
    assert lc.loading == 2 and lc.loads == 2
    lc.begin_step(2, _plan(0))  # 1 left the batch (its adapter stays resident)
    lc.next_use = {0: (-1,), 1: (3,), 5: (0,), 6: (1,)}
    assert lc.prefetch(5, (0,))  # a free slot: copied in the background, ready one load later
    assert lc.ready_ns[5] == load_ns and lc.prefetches == 1
    # full: 6 (due at 1) may take the slot of 1 (due at 3), never that of 0 (in the batch) or 5 (landing)
    assert lc.prefetch(6, (1,))
    assert set(lc.resident) == {0, 5, 6} and lc.ready_ns[6] == 2 * load_ns  # the link is serial
    assert not lc.prefetch(7, (2,))  # nothing resident is needed later than 7
    # 5's turn is scheduled half-way through its copy: the step waits for the half still on the link
    lc.set_now(load_ns // 2)
    lc.begin_step(3, _plan(5))
    assert lc.loading == 0 and lc.stall_bytes == pytest.approx(lc.adapter_bytes / 2, rel=0.01)
    assert lc.prefetch_used == 1
    # a cold load with the hint frees the slot needed last (6, due at 4) rather than the LRU one (0, due at 0)
    assert list(lc.resident) == [0, 6, 5]
    lc.next_use = {0: (0,), 5: (1,), 6: (4,)}
    lc.set_now(10 * load_ns)
    lc.begin_step(4, _plan(2))
    assert set(lc.resident) == {0, 5, 2}


def test_lru_adapter_residency_is_unchanged_without_a_hint():
    lc = _lora(max_loras=2)
    for i, a in enumerate([0, 1, 2, 0, 3, 3]):
        lc.begin_step(i, _plan(a))
    assert lc.loads == 5 and list(lc.resident) == [0, 3] and lc.prefetches == 0


def _agents(prefetch: str) -> dict:
    return {"name": "s", "seed": 5, "model": "Llama-3.1-8B",
            "instances": [{"name": "i", "hardware": "H100-SXM", "replicas": 1}],
            "engine": {"max_num_seqs": 64, "max_num_batched_tokens": 4096, "block_size": 16,
                       "num_gpu_blocks_override": 600},
            "router": {"policy": "session_affinity"},
            "kv": {"offload": "write_through", "tiers": [{"name": "dram", "kind": "dram", "capacity_gib": 16,
                                                          "bw_gbps": 25, "latency_ns": 2000, "scope": "instance"}]},
            "lora": {"adapters": 60, "rank": 16, "max_loras": 12, "host_bw_gbps": 25},
            "policy": {"retention": "invocation_distance", "prefetch": prefetch, "prefetch_lookahead": 8},
            "workload": {"kind": "agents", "generator": "multiagent", "num_agents": 60, "active_fraction": 0.1,
                         "steps": 6, "system_prompt_tokens": 300, "lora_per_program": True,
                         "tool_output_tokens": {"dist": "constant", "value": 100},
                         "output_tokens": {"dist": "constant", "value": 20}}}


def test_scalesim_lora_prefetch_copies_adapters_of_agents_due_next():
    runs = {}
    for p in ("invocation_distance", "invocation_distance_lora"):
        res, extra = simulate(resolve(parse_config(_agents(p))))
        runs[p] = summarize(res, extra)
    kv_only, lora = runs["invocation_distance"]["lora"], runs["invocation_distance_lora"]["lora"]
    assert "prefetches" not in kv_only  # KVFlow's prefetch leaves adapters alone
    assert lora["prefetches"] > 0 and lora["prefetch_bytes"] == lora["prefetches"] * lora["adapter_bytes_per_npu"]
    # the adapters copied ahead are cold loads the steps no longer wait for; most copies are used before they
    # are evicted (a waiting request's adapter is needed now and is never a victim)
    assert lora["loads"] < kv_only["loads"]
    assert lora["prefetches_used"] >= 0.5 * lora["prefetches"]


def test_unserved_programs_adapters_are_ranked_only_on_the_sole_entry_instance():
    from types import SimpleNamespace

    from frontend.agents.orchestrator import Orchestrator
    from frontend.agents.program import Edge, ProgramSpec, TurnSpec
    from frontend.agents.tools import ToolSimulator
    from frontend.config.schema import PolicyConfig, ToolDist
    from frontend.policies import RetentionPolicy

    # two agents: b's first turn waits for a message from a's (running) turn, so it is one step away
    a0 = TurnSpec("a.t0", "a", 0, 32, 4)
    b0 = TurnSpec("b.t0", "b", 0, 32, 4, parents=[Edge("a.t0", "message")])
    progs = [ProgramSpec("a", 0, [a0], lora=0), ProgramSpec("b", 0, [b0], lora=1)]
    orch = Orchestrator(progs, ToolSimulator({"message": ToolDist(dist="constant", mean_ms=0)}, 1), 16)
    for r in orch.initial():
        r.status = "running"
    pol = RetentionPolicy(PolicyConfig(retention="invocation_distance", prefetch="invocation_distance_lora"),
                          orch, lambda t, f: None)
    pf = pol.prefetch_policy
    inst = SimpleNamespace(name="i0")
    pol.ctx.entry_instances = ["i0", "i1"]  # where b will run is not known yet
    assert pf._unserved_ahead(inst) == []
    pol.ctx.entry_instances = ["i0"]
    assert [tid for _, tid in pf._unserved_ahead(inst)] == ["b.t0"]
