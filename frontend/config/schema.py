"""Run-file schema: everything a run needs, validated before anything runs.

Field names carry units. Unknown keys are errors (extra="forbid") so a typo
never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Topology = Literal["Ring", "FullyConnected", "Switch"]
Algorithm = Literal["ring", "direct", "halvingDoubling", "doubleBinaryTree"]


# Bounds that keep every derived integer far from int64 wrap-around and every loop bounded.
MAX_TOKENS = 10_000_000  # tokens in one prompt / output
MAX_COUNT = 100_000_000  # requests, programs, blocks


class Strict(BaseModel):
    # NaN and infinities (YAML .nan / .inf) are never valid settings
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NetworkDim(Strict):
    topology: Topology
    npus: int = Field(ge=2, le=1_000_000, description="NPUs along this dimension (ASTRA-sim requires > 1)")
    bw_gbps: float = Field(ge=1e-3, le=1e9, description="per-link bandwidth, GB/s with GB = 2^30 as ASTRA-sim reads it")
    latency_ns: float = Field(ge=0, le=1e12)
    algorithm: Algorithm = "ring"


class NetworkConfig(Strict):
    preset: str | None = None
    dims: list[NetworkDim] = Field(default_factory=list)


class SystemConfig(Strict):
    """ASTRA-sim system knobs that change timing."""

    preferred_dataset_splits: Annotated[int, Field(ge=1, le=4096)] | Literal["auto"] = Field(
        4, description="chunks per collective; 'auto': clamp(ceil(bytes / min_chunk_bytes), 1, max_dataset_splits) "
                       "for the iteration's largest collective (astra_bridge/embedded/network.py SystemKnobs)")
    max_dataset_splits: int = Field(4, ge=1, le=4096, description="upper bound of 'auto' splits")
    min_chunk_bytes: int = Field(4 << 20, ge=1, le=1 << 40,
                                 description="'auto' splits: smallest chunk (default NCCL_BUFFSIZE, 4 MiB)")
    endpoint_delay_ns: int = Field(10, ge=1, le=10**12)
    active_chunks_per_dimension: int = Field(1, ge=1, le=4096)
    local_mem_bw_gbps: float = Field(1600.0, ge=1e-3, le=1e9)
    scheduling_policy: Literal["LIFO", "FIFO"] = "LIFO"
    collective_optimization: Literal["baseline", "localBWAware"] = "localBWAware"
    p2p_route: Literal["lowest_dim", "all_dims"] = Field(
        "lowest_dim", description="lowest_dim: ASTRA-sim charges a send on the lowest differing dimension; "
                                  "all_dims: on every differing dimension (embedded backend only)")


class TierConfig(Strict):
    """A KV tier below HBM."""

    name: str
    kind: Literal["dram", "cxl"] = "dram"
    capacity_gib: float = Field(ge=0, le=1e7)
    bw_gbps: float = Field(ge=1e-3, le=1e9, description="GB/s (1e9) of the link the tier is reached over")
    latency_ns: int = Field(ge=0, le=10**12)
    scope: Literal["instance", "node", "pool"] = "node"
    shared_by: list[str] = Field(default_factory=list, description="pool: instance names it serves (empty = all)")


class KVConfig(Strict):
    tiers: list[TierConfig] = Field(default_factory=list)
    offload: Literal["none", "write_through", "write_back"] = "none"
    preemption: Literal["recompute", "swap"] = "recompute"
    layerwise_load: bool = True

    @model_validator(mode="after")
    def _check(self) -> KVConfig:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        if "hbm" in names:
            raise ValueError("'hbm' is the instance's own tier; name lower tiers differently")
        if self.offload != "none" and not self.tiers:
            raise ValueError(f"offload={self.offload!r} needs at least one lower tier")
        if self.preemption == "swap" and not any(t.kind == "dram" for t in self.tiers):
            raise ValueError("preemption='swap' needs a host DRAM tier to swap into")
        return self


class EngineConfig(Strict):
    """Serving-engine settings with vLLM's names and meanings."""

    max_num_seqs: int = Field(256, ge=1, le=1_000_000)
    max_num_batched_tokens: int = Field(2048, ge=1, le=MAX_TOKENS)
    block_size: int = Field(16, ge=1, le=65536)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    dtype: Literal["bf16", "fp16", "fp8", "fp32"] = "bf16"
    kv_cache_dtype: Literal["auto", "bf16", "fp16", "fp8"] = "auto"
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    max_model_len: int | None = Field(None, ge=1, le=2 * MAX_TOKENS)
    num_gpu_blocks_override: int | None = Field(None, ge=1, le=MAX_COUNT)
    activation_reserve_gib: float | None = Field(None, ge=0)
    scheduler_reserve_full_isl: bool = Field(
        True, description="admit a waiting request only if blocks for its whole remaining prompt are free (vLLM >= 0.11)")
    scheduler_overhead_ns: int = Field(0, ge=0, le=10**12, description="host time per iteration not overlapped with the GPU")
    speculative_tokens: int = Field(
        0, ge=0, le=64, description="speculative decoding: draft tokens K proposed per decode step and verified in one "
                                    "pass of width K+1 (0: off)")
    speculative_method: Literal["eagle", "mtp", "ngram", "draft_model"] = Field(
        "eagle", description="eagle: a one-layer draft head (EAGLE, arXiv 2401.15077) run K times per step on the "
                             "accelerator; mtp: the model's own multi-token-prediction modules (DeepSeek-V3, arXiv "
                             "2412.19437 sec. 2.2; the model entry's num_nextn_predict_layers / mtp_modules); "
                             "ngram: prompt-lookup drafts found on the CPU (no accelerator cost); "
                             "draft_model: a smaller model (speculative_draft_model) with its own weights and KV")
    speculative_mtp_reuse: bool = Field(
        False, description="mtp: allow speculative_tokens above the model's MTP modules by running them again in "
                           "turn (position i uses module i mod D), as vLLM does when K is a multiple of D")
    speculative_draft_model: str | None = Field(
        None, description="draft_model: the draft model (a catalog name or an HF config.json), same TP as the target")
    speculative_acceptance: Annotated[float, Field(gt=0, lt=1)] | list[Annotated[float, Field(ge=0, le=1)]] = Field(
        0.7, description="probability that a draft token is accepted given the ones before it were: one rate for "
                         "every position, or one per position 1..K; a step emits 1 + (accepted prefix) tokens, "
                         "(1 - a^(K+1)) / (1 - a) on average for one rate")
    speculative_acceptance_trace: str | None = Field(
        None, description="per-request acceptance rates: JSONL {request_id, acceptance} (relative to the run file); "
                          "requests it does not name use speculative_acceptance")
    @model_validator(mode="after")
    def _draft_model_named(self) -> EngineConfig:
        if self.speculative_tokens and self.speculative_method == "draft_model" and not self.speculative_draft_model:
            raise ValueError("speculative_method: draft_model needs speculative_draft_model")
        if self.speculative_mtp_reuse and self.speculative_method != "mtp":
            raise ValueError("speculative_mtp_reuse: only with speculative_method: mtp")
        a = self.speculative_acceptance
        if isinstance(a, list) and self.speculative_tokens and len(a) != self.speculative_tokens:
            raise ValueError(f"speculative_acceptance: {len(a)} per-position rates for speculative_tokens = "
                             f"{self.speculative_tokens}")
        return self

    enforce_eager: bool = Field(
        False, description="vLLM --enforce-eager: no CUDA graphs. With CUDA graphs (vLLM's default) the members of "
                           "a DP group pad their batches to the group's largest token count (vLLM's DP padding, "
                           "gpu_model_runner get_dp_padding), so every member runs the same graph size")
    async_scheduling: bool = Field(
        True, description="vLLM's async scheduling (default in 0.19, as the reference runs' resolved config shows): "
                          "step N+2 is planned when step N ends, so a request arriving during a step joins the "
                          "batch one step later and finished requests free their seats one step later")


class InstanceConfig(Strict):
    name: str = "inst"
    hardware: str
    model: str | None = None
    replicas: int = Field(1, ge=1, le=4096)
    tp: int = Field(1, ge=1, le=65536)
    pp: int = Field(1, ge=1, le=65536)
    node: int | None = Field(None, ge=0, description="node index for node-scoped tiers (default: own node)")
    network: NetworkConfig | None = None
    engine: EngineConfig | None = None
    # Mixture-of-experts parallelism with vLLM's meanings (vLLM docs, "Expert Parallel Deployment";
    # vllm/config/parallel.py): `--data-parallel-size` engine cores of tp x pp GPUs each, and with
    # `--enable-expert-parallel` the experts are split over EP = TP x DP ranks instead of TP-sharded.
    dp: int = Field(1, ge=1, le=65536, description="data-parallel size (vLLM --data-parallel-size): engine "
                                                   "cores of tp x pp GPUs each, stepping in lockstep for MoE")
    enable_expert_parallel: bool = Field(
        False, description="vLLM --enable-expert-parallel: whole experts per rank over EP ranks (no TP sharding)")
    ep: int | None = Field(None, ge=1, le=65536, description="expert-parallel size; default tp x dp when "
                                                             "enable_expert_parallel, as vLLM derives it")
    role: Literal["mixed", "prefill", "decode"] = Field(
        "mixed", description="prefill/decode disaggregation (frontend/pd.py): a prefill instance computes prompts "
                             "and hands their KV to a decode instance; mixed serves whole requests")
    expert_placement: Literal["linear", "round_robin"] | None = Field(
        None, description="vLLM --expert-placement-strategy: linear (rank r holds a contiguous block of "
                          "experts) or round_robin (expert e on rank e mod ep); default linear")


class Dist(Strict):
    dist: Literal["constant", "lognormal", "uniform", "exponential", "empirical", "pareto"] = "lognormal"
    mean: float | None = Field(None, gt=0, le=1e12)
    sigma: float | None = Field(None, ge=0, le=20)
    alpha: float | None = Field(None, gt=1, le=100, description="pareto: tail index (shape); the scale is "
                                "mean x (alpha - 1) / alpha so that `mean` is the untruncated mean (alpha > 1)")
    value: float | None = Field(None, gt=0, le=1e12)
    low: float | None = Field(None, ge=0, le=1e12)
    high: float | None = Field(None, gt=0, le=1e12)
    values: list[Annotated[float, Field(ge=0, le=1e12)]] | None = Field(None, min_length=1)
    min: int = Field(1, ge=1, le=MAX_TOKENS)
    max: int = Field(32768, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _check(self) -> Dist:
        need = {"constant": ["value"], "lognormal": ["mean", "sigma"], "uniform": ["low", "high"],
                "exponential": ["mean"], "empirical": ["values"], "pareto": ["mean", "alpha"]}[self.dist]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dist={self.dist!r} needs {', '.join(missing)}")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        if self.dist == "uniform" and self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"uniform: low ({self.low:g}) exceeds high ({self.high:g})")
        return self


class Arrival(Strict):
    process: Literal["poisson", "gamma", "constant", "burst"] = "poisson"
    rate_per_s: float = Field(10.0, gt=0, le=1e12)
    cv: float = Field(1.0, gt=0, le=1000, description="gamma: coefficient of variation of inter-arrival times")


class SyntheticWorkload(Strict):
    kind: Literal["synthetic"] = "synthetic"
    num_requests: int = Field(1000, ge=1, le=MAX_COUNT)
    arrival: Arrival = Field(default_factory=Arrival)
    prompt_tokens: Dist = Field(default_factory=lambda: Dist(dist="lognormal", mean=900, sigma=1.0))
    output_tokens: Dist = Field(default_factory=lambda: Dist(dist="lognormal", mean=250, sigma=0.9))
    shared_prefix_tokens: int = Field(0, ge=0, le=MAX_TOKENS, description="system-prompt tokens shared by every request")
    model_mix: dict[str, Annotated[float, Field(gt=0, le=1e9)]] = Field(
        default_factory=dict, description="multi-model clusters: each request asks for one of these models, drawn "
                                          "with these relative weights (empty: requests name no model)")


class JsonlWorkload(Strict):
    kind: Literal["jsonl"] = "jsonl"
    path: str
    num_requests: int | None = Field(None, ge=1, le=MAX_COUNT)
    time_scale: float = Field(1.0, gt=0, le=1e6, description="multiply arrival times (e.g. 0.5 = twice the rate)")


class TraceWorkload(Strict):
    """A production trace replayed as flat requests (frontend/workload/trace.py and one module per format)."""

    kind: Literal["trace"] = "trace"
    format: Literal["azure", "burstgpt", "mooncake", "swe_traj", "copilot_otel", "tracelab"] | None = Field(
        None, description="azure (TIMESTAMP,ContextTokens,GeneratedTokens CSV), burstgpt (BurstGPT CSV), mooncake "
                          "(JSONL with hash_ids), swe_traj (mini-swe-agent .traj.json trajectories, a file or a "
                          "directory, replayed as agent programs), copilot_otel (GitHub Copilot Chat OpenTelemetry "
                          "JSON lines: sessions replayed as agent programs), tracelab (TraceLab Claude Code / Codex "
                          "round JSONL, optionally gzipped, replayed as agent programs); detected from the file's "
                          "first line when omitted")
    path: str
    num_requests: int | None = Field(None, ge=1, le=MAX_COUNT)
    time_scale: float = Field(1.0, gt=0, le=1e6, description="multiply arrival times (e.g. 0.5 = twice the rate)")
    start_s: float | None = Field(None, ge=0, le=1e9, description="time window: seconds from the trace's first row")
    end_s: float | None = Field(None, gt=0, le=1e9)
    sample: float = Field(1.0, gt=0, le=1, description="replay this fraction of the rows (seeded with the run seed)")
    use_trace_models: bool = Field(False, description="burstgpt: each request asks for its row's Model")
    chars_per_token: float = Field(4.0, gt=0, le=100, description="swe_traj: token estimate of a message without "
                                   "usage counts = ceil(characters / chars_per_token)")
    tools: dict[str, ToolDist] = Field(default_factory=dict, description="swe_traj: tool durations where the "
                                       "trajectory has no timestamps (default bash lognormal 2000 ms, sigma 1); "
                                       "swe_traj, copilot_otel and tracelab: a distribution named here replaces that tool's "
                                       "measured gaps")

    @model_validator(mode="after")
    def _check(self) -> TraceWorkload:
        if self.start_s is not None and self.end_s is not None and self.start_s >= self.end_s:
            raise ValueError(f"start_s ({self.start_s:g}) must be before end_s ({self.end_s:g})")
        return self


class ToolDist(Strict):
    dist: Literal["constant", "exponential", "lognormal", "empirical", "trace"] = "trace"
    mean_ms: float | None = Field(None, ge=0, le=1e9)
    sigma: float | None = Field(None, ge=0, le=20)
    file: str | None = None


class AgentWorkload(Strict):
    kind: Literal["agents"] = "agents"
    generator: Literal["coding", "research", "multiagent", "workflow"] = "coding"
    trace: str | None = Field(None, description="session JSONL (LLMServingSim) or DAG JSONL instead of a generator")
    num_programs: int = Field(100, ge=1, le=10_000_000)
    rate_per_s: float = Field(1.0, gt=0, le=1e12)
    turns_min: int = Field(5, ge=1, le=100_000)
    turns_max: int = Field(50, ge=1, le=100_000)
    turns: Dist | None = Field(None, description="coding: LLM calls per program drawn from this distribution "
                               "(e.g. {dist: pareto, mean: 8, alpha: 1.5, max: 500}; its min/max bound the count) "
                               "instead of uniform on turns_min..turns_max")
    system_prompt_tokens: int = Field(2000, ge=0, le=MAX_TOKENS)
    tool_output_tokens: Dist = Field(default_factory=lambda: Dist(dist="lognormal", mean=400, sigma=0.8))
    output_tokens: Dist = Field(default_factory=lambda: Dist(dist="lognormal", mean=150, sigma=0.7))
    tools: dict[str, ToolDist] = Field(default_factory=dict)
    fanout: int = Field(4, ge=1, le=100_000)
    num_agents: int = Field(5000, ge=2, le=10_000_000, description="an acting agent messages others: at least 2")
    steps: int = Field(20, ge=1, le=100_000)
    active_fraction: float = Field(0.05, gt=0, le=1)
    lora_per_program: bool = Field(False, description="every call of program i (agent i) names LoRA adapter i: "
                                   "each agent has its own adapter (ScaleSim's per-agent state); needs lora.adapters "
                                   ">= the number of programs (multiagent: num_agents)")

    @field_validator("turns")
    @classmethod
    def _check_turns(cls, v: Dist | None, info: ValidationInfo) -> Dist | None:
        if v is None:
            return v
        gen = info.data.get("generator")
        if gen != "coding":
            raise ValueError(f"only the coding generator draws a call count per program (generator is {gen!r})")
        if v.max > 100_000:
            raise ValueError(f"max: at most 100000 calls per program (got {v.max}; Dist's default max is 32768)")
        return v

    @model_validator(mode="after")
    def _check(self) -> AgentWorkload:
        if self.turns_min > self.turns_max:
            raise ValueError(f"turns_min ({self.turns_min}) exceeds turns_max ({self.turns_max})")
        both = sorted({"turns_min", "turns_max"} & self.model_fields_set)
        if self.turns is not None and both:
            raise ValueError(f"turns: give either a turns distribution or {' / '.join(both)}, not both")
        if self.trace is None:
            max_turns = self.turns.max if self.turns is not None else self.turns_max
            turns = {"coding": self.num_programs * max_turns, "research": self.num_programs * (self.fanout + 2),
                     "multiagent": int(self.num_agents * self.active_fraction * 1.5 + 1) * self.steps,
                     "workflow": self.num_programs * self.steps}[self.generator]
            if turns > MAX_COUNT:
                raise ValueError(f"the {self.generator} generator would create up to {turns:,} turns "
                                 f"(more than {MAX_COUNT:,}); lower the counts")
        return self


Workload = Annotated[SyntheticWorkload | JsonlWorkload | AgentWorkload | TraceWorkload, Field(discriminator="kind")]


class ComputeConfig(Strict):
    kind: Literal["roofline", "profile"] = "roofline"
    profile: str | None = None
    architecture: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ComputeConfig:
        if self.kind == "profile" and not self.profile:
            raise ValueError("kind='profile' needs 'profile' (a bundle's model folder)")
        return self


class AstraSimConfig(Strict):
    binary: str | None = None
    timeout_s: float = Field(120.0, gt=0, le=86400 * 7)
    workers: int = Field(1, ge=1, le=1024)
    work_dir: str | None = Field(None, description="keep every iteration's ASTRA-sim inputs here; by default a "
                                                   "temporary folder keeps only a failed iteration's")
    compute_time: Literal["exact", "micros"] = Field(
        "exact", description="exact: ns compute durations through the binary's roofline (chakra_gen/et_io.py); "
                             "micros: Chakra's whole-microsecond durations")


class BackendConfig(Strict):
    kind: Literal["embedded", "astra-sim"] = "embedded"
    cache: bool = True
    cache_size: int = Field(4096, ge=0, le=MAX_COUNT)
    system: SystemConfig = Field(default_factory=SystemConfig)
    astra_sim: AstraSimConfig = Field(default_factory=AstraSimConfig)


class RouterConfig(Strict):
    policy: Literal["round_robin", "least_loaded", "session_affinity", "kv_overlap", "dp_balance",
                    "lora_affinity"] | None = Field(
        None, description="default: dp_balance (vLLM's DP load balancer) when every instance is a DP member, "
                          "else round_robin")
    stats_interval_ms: float = Field(
        100.0, gt=0, le=1e9, description="dp_balance: how often the engines' waiting/running counts reach the "
                                         "balancer (vLLM's DP coordinator publishes them every 100 ms)")
    pressure_threshold: float = Field(0.9, gt=0, le=1.0)
    load_weight: float = Field(1.0, ge=0)


class MoEConfig(Strict):
    """Expert routing (gating) of MoE layers under expert parallelism (frontend/compute/moe_routing.py)."""

    routing: Literal["balanced", "random", "skewed", "round_robin", "trace"] = Field(
        "balanced", description="balanced: expected load of uniform routing (closed form); random: one seeded "
                                "uniform sample per iteration; skewed: Zipf(zipf_s) expert popularity, seeded; "
                                "round_robin: token i takes experts i*k .. i*k+k-1 (mod E); trace: each step's "
                                "requests' expert histograms from expert_trace")
    expert_trace: str | None = Field(
        None, description="routing trace: JSONL of per-request expert histograms ({request_id, experts: [counts] "
                          "or {id: count}}), relative to the run file")
    zipf_s: float = Field(1.0, ge=0, le=10, description="skewed routing: Zipf exponent of expert popularity")
    @model_validator(mode="after")
    def _trace_needs_a_file(self) -> MoEConfig:
        if self.routing == "trace" and not self.expert_trace:
            raise ValueError("routing: trace needs expert_trace (a JSONL of per-request expert histograms)")
        if self.expert_trace and self.routing != "trace":
            raise ValueError("expert_trace is read only with routing: trace")
        return self

    dispatch: Literal["allgather_reducescatter", "all_to_all"] = Field(
        "allgather_reducescatter",
        description="EP token exchange of a DP group: vLLM's default all-gather of hidden states and router logits "
                    "then reduce-scatter of the outputs, or a sparse all-to-all dispatch and combine (DeepEP-style "
                    "backends: a token goes only to the ranks holding its experts)")


class LinkConfig(Strict):
    bw_gbps: float = Field(gt=0, le=1e9, description="per-GPU bandwidth of the link, GB/s (1e9 B)")
    latency_ns: float = Field(ge=0, le=1e12)


def _nvlink4_link() -> LinkConfig:
    """H100 NVLink 4 through NVSwitch: 450 GB/s per direction per GPU, ~1 us (configs/networks/h100-nvlink-8.yaml)."""
    return LinkConfig(bw_gbps=450.0, latency_ns=1000.0)


def _ndr_nic_link() -> LinkConfig:
    """One ConnectX-7 400 Gb/s NDR InfiniBand NIC per GPU: 50 GB/s, ~2 us through NIC and switch
    (configs/networks/h100-2x4-ib.yaml)."""
    return LinkConfig(bw_gbps=50.0, latency_ns=2000.0)


class LoRAConfig(Strict):
    """LoRA adapters served by every instance (vLLM's --enable-lora / --max-loras / --max-lora-rank meanings)."""

    adapters: int = Field(0, ge=0, le=100_000, description="number of adapters a0..a{n-1} requests may name")
    rank: int = Field(16, ge=1, le=4096, description="rank of every adapter")
    target_modules: list[Literal["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]] = Field(
        default_factory=lambda: ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        description="the layer's projections each adapter adapts (vLLM's packed module names)")
    max_loras: int = Field(4, ge=1, le=4096, description="adapters resident in HBM at once per instance (slots "
                                                         "reserved at the max rank), and at most this many in a batch")
    max_lora_rank: int | None = Field(None, ge=1, le=4096, description="rank the slots are sized for (default: rank)")
    host_bw_gbps: float = Field(25.0, gt=0, le=1e6, description="host-to-GPU bandwidth a cold adapter loads at, "
                                                                 "GB/s (default: PCIe 4.0 x16 sustained, ~25 GB/s)")
    popularity_zipf_s: float = Field(1.0, ge=0, le=10, description="synthetic requests pick adapter i with weight "
                                                                    "1 / (i + 1)^s (0: uniform)")
    share: float = Field(1.0, ge=0, le=1, description="fraction of synthetic requests that name an adapter")


class PDConfig(Strict):
    """Prefill/decode disaggregation: how prompts' KV reaches the decode instances (frontend/pd.py)."""

    decode_router: Literal["round_robin", "least_loaded"] = Field(
        "least_loaded", description="which decode instance takes a prefilled request")
    kv_transfer: Literal["after_prefill", "layerwise"] = Field(
        "after_prefill", description="after_prefill: the decode side pulls the prompt's KV once its prefill ends "
                                     "(vLLM NixlConnector); layerwise: each prefill step pushes every layer's KV "
                                     "of its chunk as that layer finishes (DistServe / Mooncake style), over "
                                     "the cluster network (needs `cluster:`)")
    local_prefill_max_tokens: int = Field(
        0, ge=0, le=10**9, description="conditional disaggregation: a request whose prompt, less what the chosen "
                                       "decode instance has cached, is at most this many tokens is prefilled on "
                                       "the decode instance itself (0: never)")
    scale_up: LinkConfig = Field(
        default_factory=_nvlink4_link,
        description="GPU-to-GPU path between instances on one node (default: NVLink 4 through NVSwitch, 450 GB/s "
                    "per direction per GPU, as configs/networks/h100-nvlink-8.yaml)")
    scale_out: LinkConfig = Field(
        default_factory=_ndr_nic_link,
        description="per-GPU NIC path between nodes (default: one 400 Gb/s NDR InfiniBand NIC per GPU, as "
                    "configs/networks/h100-2x4-ib.yaml)")


class ClusterConfig(Strict):
    """The cluster network instances sit on (frontend/network/topology.py): nodes of NPUs with a scale-up
    switch each, one NIC per NPU into leaf switches, leaves joined by a spine. Messages between instances
    (prefill -> decode KV) take routes over its links and queue where they share one (ASTRA-sim's
    congestion-aware analytical semantics, frontend/network/linknet.py)."""

    npus_per_node: int = Field(8, ge=1, le=1024, description="NPUs in a node; an instance's NPUs are packed onto "
                                                             "its node (instances[].node) in listing order")
    num_nodes: int | None = Field(None, ge=1, le=100_000, description="nodes in the cluster (default: the highest "
                                                                     "node an instance uses + 1)")
    scale_up: LinkConfig = Field(
        default_factory=_nvlink4_link,
        description="each NPU's link into its node's switch (default: H100 NVLink 4 through NVSwitch, 450 GB/s "
                    "per direction, as configs/networks/h100-nvlink-8.yaml)")
    scale_out: LinkConfig = Field(
        default_factory=_ndr_nic_link,
        description="each NPU's NIC link into its leaf switch (default: one 400 Gb/s NDR InfiniBand NIC per GPU, "
                    "as configs/networks/h100-2x4-ib.yaml)")
    nodes_per_leaf: int = Field(0, ge=0, le=100_000, description="nodes under one leaf switch (0: one leaf holds "
                                                                 "every node, a single-tier fabric)")
    oversubscription: float = Field(1.0, ge=1.0, le=1000.0, description="a leaf's NIC bandwidth over its uplink to "
                                                                        "the spine (1: non-blocking fat tree)")


class PIMPlacementConfig(Strict):
    """A PIM device holding the instance's KV cache; decode attention runs there (frontend/compute/pim.py)."""

    device: str = Field(description="a configs/pim/ entry (or a file): the PIM device's DRAM parameters")
    devices: int = Field(1, ge=1, le=4096, description="identical devices (stacks / chips); their channels add up")
    model: str = Field("bank_parallel", description="PIM timing model (frontend/compute/pim.py PIM_MODELS)")
    interleave: bool = Field(False, description="NeuPIMs sub-batch interleaving: two sub-batches, the accelerator "
                                                "runs one's dense layers while the PIM device attends the other")
    link_bw_gbps: float | None = Field(None, gt=0, le=1e7, description="accelerator-PIM link bandwidth (default: "
                                       "devices x the device's bus width x data rate)")
    link_latency_ns: float | None = Field(None, ge=0, le=1e9, description="accelerator-PIM link latency (default: "
                                          "the device's t_rcd_ns + cl_ns, one row open and read)")


class LayerPlacement(Strict):
    """Where some layers' KV cache (kv_layers) or weights (weights_layers) live: a lower tier is streamed to HBM
    every iteration ahead of each placed layer's attention (frontend/instance/kv_layers.py)."""

    layers: str = Field(description="layer indices: ranges and lists, 'a-b' (inclusive), 'a-' (to the last), "
                                    "'n', 'a-b/s' (every s-th), comma-separated, e.g. '16-31' or '0-31/2'")
    tier: str = Field(description="'hbm' or a kv.tiers entry (host DRAM or CXL)")


class PlacementConfig(Strict):
    """Where the weights live: a fraction of every layer's weights in a lower memory tier (FlexGen's per-layer
    percentage placement, arXiv 2303.06865), streamed to HBM layer by layer every iteration."""

    weights_tier: str | None = Field(None, description="a kv.tiers entry (host DRAM or CXL) holding the offloaded part")
    weights_fraction: float = Field(0.0, ge=0, le=1, description="fraction of each layer's weights kept there "
                                                                 "(0: all weights in HBM)")
    pim: PIMPlacementConfig | None = Field(None, description="KV cache on a PIM device, decode attention there")
    kv_layers: list[LayerPlacement] = Field(default_factory=list, description="per-layer KV placement: layers not "
                                            "listed keep their KV in HBM")
    weights_layers: list[LayerPlacement] = Field(default_factory=list, description="per-layer weight placement: the "
                                                 "listed layers' weights live in the tier and stream every "
                                                 "iteration; the rest stay in HBM (not with weights_fraction)")

    @model_validator(mode="after")
    def _tier_named(self) -> PlacementConfig:
        if self.weights_fraction > 0 and not self.weights_tier:
            raise ValueError("weights_fraction > 0 needs weights_tier (the name of a kv.tiers entry)")
        if self.weights_fraction > 0 and self.weights_layers:
            raise ValueError("give either weights_fraction (a share of every layer) or weights_layers (whole layers)")
        return self


class PolicyConfig(Strict):
    scheduling: Literal["fcfs", "program_fcfs", "plas"] = "fcfs"
    retention: Literal["lru", "ttl_pin", "min_waste", "invocation_distance", "saga"] = Field(
        "lru", description="lru | ttl_pin | min_waste | invocation_distance | saga (frontend/policies/retention/)")
    ttl_ms: float = Field(2000.0, ge=0, le=1e12)
    ttl_policy: Literal["fixed", "utility"] = Field(
        "fixed", description="ttl_pin: 'fixed' pins for ttl_ms when the tool's mean is within it (Continuum's "
                             "released preview); 'utility' picks the TTL that maximises the expected benefit "
                             "of a pin minus its memory cost (the Continuum paper's TTL model)")
    prefetch: Literal["none", "invocation_distance", "invocation_distance_lora"] = Field(
        "none", description="none | invocation_distance (KVFlow: KV of the turns due next) | invocation_distance_lora "
                            "(ScaleSim: also the LoRA adapters of the agents due next, and adapter slots freed "
                            "farthest-next-use first) (frontend/policies/prefetch/)")
    prefetch_lookahead: int = Field(8, ge=0, le=1_000_000)


class OutputConfig(Strict):
    dir: str = "runs/out"
    timeline: bool = Field(False, description="not implemented: only false is accepted")
    plots: bool = Field(False, description="not implemented: `astraserve validate` draws the plots")

    @field_validator("timeline")
    @classmethod
    def _no_timeline(cls, v: bool) -> bool:
        if v:
            raise ValueError("no timeline output exists yet (iterations.csv holds every iteration's start/end); "
                             "remove the key or set it false")
        return v

    @field_validator("plots")
    @classmethod
    def _no_plots(cls, v: bool) -> bool:
        if v:
            raise ValueError("a run writes no plots; `astraserve validate` draws them against a reference")
        return v


class RunConfig(Strict):
    name: str = "run"
    seed: int = Field(0, ge=0, le=2**62, description="non-negative random seed")
    model: str
    instances: list[InstanceConfig] = Field(min_length=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    engine_meta: str | None = Field(
        None, description="a vLLM benchmark run's meta.json: its engine settings override `engine:`")
    kv: KVConfig = Field(default_factory=KVConfig)
    workload: Workload = Field(default_factory=SyntheticWorkload)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    moe: MoEConfig = Field(default_factory=MoEConfig)
    pd: PDConfig = Field(default_factory=PDConfig)
    cluster: ClusterConfig | None = Field(None, description="the cluster network between instances (default: none; "
                                                           "PD transfers then use pd.scale_up / pd.scale_out)")
    lora: LoRAConfig = Field(default_factory=LoRAConfig, validate_default=True)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    base_dir: Path | None = Field(None, exclude=True)

    @field_validator("instances")
    @classmethod
    def _unique_names(cls, v: list[InstanceConfig]) -> list[InstanceConfig]:
        names = [i.name for i in v]
        if len(set(names)) != len(names):
            raise ValueError(f"instance names must be unique, got {names}")
        return v

    @model_validator(mode="after")
    def _pd_network(self) -> RunConfig:
        if self.pd.kv_transfer == "layerwise" and self.cluster is None:
            raise ValueError("pd.kv_transfer: layerwise streams over the cluster network: add a `cluster:` section")
        if self.cluster is not None:
            given = sorted(self.pd.model_fields_set & {"scale_up", "scale_out"})
            if given:
                raise ValueError(f"pd.{given[0]}: with a `cluster:` network, transfers take the cluster's links "
                                 f"(cluster.scale_up / cluster.scale_out); remove pd.{given[0]}")
        return self

    @field_validator("lora")
    @classmethod
    def _adapter_per_program(cls, v: LoRAConfig, info: ValidationInfo) -> LoRAConfig:
        wl = info.data.get("workload")
        if isinstance(wl, AgentWorkload) and wl.lora_per_program and wl.trace is None:
            need = wl.num_agents if wl.generator == "multiagent" else wl.num_programs
            if v.adapters < need:
                raise ValueError(f"workload.lora_per_program gives each of the {need} "
                                 f"{'agents' if wl.generator == 'multiagent' else 'programs'} its own adapter, "
                                 f"but lora.adapters is {v.adapters}")
        return v
