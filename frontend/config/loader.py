"""Load a run file, validate it and resolve catalog references.

Every failure becomes a ConfigError whose message names the field path and the
reason; the CLI prints it and exits 2.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from frontend.config.hardware import HardwareSpec, load_hardware
from frontend.config.models import DTYPE_BYTES, ModelSpec, load_model_spec
from frontend.config.schema import EngineConfig, InstanceConfig, NetworkDim, RunConfig, TierConfig
from frontend.errors import ConfigError

__all__ = ["ConfigError", "ResolvedInstance", "ResolvedRun", "load_and_resolve", "load_config", "resolve"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
GIB = 1 << 30
# CUDA context, cuBLAS/NCCL workspaces and graph pools that vLLM's profiling
# counts as non-torch memory; ~0.5 GiB on recent drivers.
NON_TORCH_OVERHEAD_BYTES = 512 * (1 << 20)
# the simulator holds ~100 bytes per KV block: bound blocks per instance and over the whole cluster
MAX_BLOCKS = 4_000_000
MAX_CLUSTER_BLOCKS = 16_000_000


def _workload_kinds() -> frozenset[str]:
    from typing import get_args

    from frontend.config.schema import Workload

    union = get_args(Workload)[0]
    return frozenset(get_args(c.model_fields["kind"].annotation)[0] for c in get_args(union))


_WORKLOAD_KINDS = _workload_kinds()


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif parts and parts[-1] == "workload" and p in _WORKLOAD_KINDS:  # pydantic's union tag, not a field
            continue
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def format_validation_error(e: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in e.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check spelling)"
        lines.append(f"  {_fmt_loc(tuple(err['loc']))}: {msg}")
    return "\n".join(lines)


def find_catalog_file(ref: str, kind: str, base_dir: Path | None) -> Path:
    """A catalog entry by name (configs/<kind>/<name>.*) or by path."""
    candidates: list[Path] = []
    p = Path(ref)
    if base_dir is not None:
        candidates.append(base_dir / p)
    candidates.append(Path.cwd() / p)
    candidates.append(REPO_ROOT / p)
    for ext in ("", ".yaml", ".yml", ".json"):
        candidates.append(CONFIGS / kind / f"{ref}{ext}")
    for c in candidates:
        if c.is_file():
            return c
    avail = sorted(x.stem for x in (CONFIGS / kind).glob("*")) if (CONFIGS / kind).is_dir() else []
    raise ConfigError(f"{kind} {ref!r} not found as a file or in configs/{kind}/ (available: {', '.join(avail)})")


@dataclass
class ResolvedInstance:
    name: str
    hardware: HardwareSpec
    model: ModelSpec
    engine: EngineConfig
    tp: int
    pp: int
    dims: list[NetworkDim]
    node: int
    num_gpu_blocks: int
    kv_block_bytes: int  # per NPU (its layers, its KV heads)
    weight_bytes_per_npu: int
    activation_reserve_bytes: int
    tiers: list[TierConfig] = field(default_factory=list)
    # MoE parallelism (vLLM meanings; see InstanceConfig): defaults are a dense-style instance
    dp: int = 1
    enable_expert_parallel: bool = False
    ep: int = 1
    expert_placement: str = "linear"
    # DP group membership (dp > 1): the group's name (the configured instance name, with a replica index),
    # this member's DP rank, and the network of the whole group (dp x tp NPUs, TP dimensions first); `dims`
    # above are then this member's TP dimensions only
    role: str = "mixed"  # prefill | decode | mixed (prefill/decode disaggregation)
    draft_model: ModelSpec | None = None  # speculative decoding with a draft model (its weights and KV are here too)
    offloaded_weight_bytes_per_npu: int = 0  # placement: layer weights kept in `weights_tier`, streamed each step
    weights_tier: str | None = None
    kv_layer_tiers: dict[int, str] = field(default_factory=dict)  # placement.kv_layers: layer -> lower tier
    kv_layer_share_bytes: dict[str, int] = field(default_factory=dict)  # tier -> its share of one block (per NPU)
    weight_layer_tiers: dict[int, str] = field(default_factory=dict)  # placement.weights_layers: layer -> tier
    weight_layer_bytes: int = 0  # one layer's weights per NPU (placement.weights_layers)
    pim: Any = None  # placement.pim: (PIMDevice, PIMPlacementConfig) when the KV cache lives on a PIM device
    dp_group: str | None = None
    dp_rank: int = 0
    group_dims: list[NetworkDim] = field(default_factory=list)

    @property
    def num_npus(self) -> int:
        """NPUs of one DP member (one engine core); a DP group holds dp times as many."""
        return self.tp * self.pp

    @property
    def dtype_bytes(self) -> float:
        return DTYPE_BYTES[self.engine.dtype]


@dataclass
class ResolvedRun:
    config: RunConfig
    instances: list[ResolvedInstance]
    source: str

    @property
    def model(self) -> ModelSpec:
        return self.instances[0].model


def activation_reserve_bytes(model: ModelSpec, engine: EngineConfig, tp: int) -> int:
    """Peak transient memory of vLLM's profiling forward pass (documented estimate).

    vLLM sizes the KV cache after a dummy forward of max_num_batched_tokens
    tokens and a sampler pass over max_num_seqs sequences: the largest
    activations are the MLP's gate/up output and its activation (3 x I per
    token) plus a few hidden-sized buffers; the sampler holds fp32 logits and
    two same-sized temporaries (probs, sorted copy). Add NON_TORCH_OVERHEAD_BYTES.
    """
    b = DTYPE_BYTES[engine.dtype]
    t = engine.max_num_batched_tokens
    inter = (model.moe_intermediate_size * max(1, model.experts_per_token)) if model.is_moe else model.intermediate_size
    act = t * (3 * inter / tp + 4 * model.hidden_size) * b
    logits = engine.max_num_seqs * model.vocab_size / tp * 4 * 3
    return int(act + logits + NON_TORCH_OVERHEAD_BYTES)


def _instance_errors(prefix: str, inst: InstanceConfig, model: ModelSpec, hw: HardwareSpec,
                     engine: EngineConfig) -> None:
    if model.num_heads % inst.tp:
        raise ConfigError(f"{prefix}.tp: tp={inst.tp} does not divide the model's {model.num_heads} attention heads")
    if model.num_kv_heads % inst.tp and inst.tp % model.num_kv_heads:
        raise ConfigError(f"{prefix}.tp: tp={inst.tp} and {model.num_kv_heads} KV heads: one must divide the other")
    if inst.pp > model.num_layers:
        raise ConfigError(f"{prefix}.pp: pp={inst.pp} exceeds the model's {model.num_layers} layers")
    if engine.dtype not in hw.peak_tflops:
        raise ConfigError(f"engine.dtype: {hw.name} has no {engine.dtype} peak (has {sorted(hw.peak_tflops)})")


def _moe_parallel(prefix: str, inst: InstanceConfig, model: ModelSpec) -> tuple[int, str]:
    """EP size and expert placement of an instance, validated; (1, 'linear') when EP is off.

    vLLM derives the expert-parallel size, never takes it: with --enable-expert-parallel the MoE
    layers run over EP = TP x DP ranks (vllm/model_executor/layers/fused_moe/config.py,
    FusedMoEParallelConfig: ep_size = dp_size * tp_size, and the experts' own TP size becomes 1),
    so an explicit `ep` must equal tp x dp. EP must divide the routed experts so every rank holds
    the same number of whole experts (what the per-rank memory below and the routing model assume).
    """
    if not inst.enable_expert_parallel:
        for key in ("ep", "expert_placement"):
            if getattr(inst, key) is not None:
                raise ConfigError(f"{prefix}.{key}: set only with enable_expert_parallel: true")
        return 1, "linear"
    if not model.is_moe:
        raise ConfigError(f"{prefix}.enable_expert_parallel: model {model.name} is dense (no experts to split)")
    ep = inst.tp * inst.dp
    if inst.ep is not None and inst.ep != ep:
        raise ConfigError(f"{prefix}.ep: ep={inst.ep} but vLLM's expert-parallel size is tp x dp = "
                          f"{inst.tp} x {inst.dp} = {ep}; set ep: {ep} or leave it out")
    if model.num_experts % ep:
        raise ConfigError(f"{prefix}.ep: ep={ep} (tp x dp) does not divide the model's {model.num_experts} experts")
    return ep, inst.expert_placement or "linear"


def weight_bytes_per_npu(model: ModelSpec, dtype_bytes: float, tp: int, pp: int, ep: int = 1,
                         enable_expert_parallel: bool = False) -> int:
    """Weights one NPU holds: its pipeline stage's layers, TP-sharded, plus the (un)embedding.

    Without EP every layer is split over TP (vLLM's dense and TP-sharded MoE layers). With EP the
    routed experts are whole experts split over EP ranks (E / EP each, vLLM's FusedMoE with
    use_ep) while attention, norms, router and shared experts stay TP-sharded:
    per layer = (layer - routed experts) / TP + routed experts / EP.
    """
    layers_per_stage = math.ceil(model.num_layers / pp)
    emb = model.vocab_size * model.hidden_size * dtype_bytes / tp
    prefix = model.dense_prefix_layers  # DeepSeek's leading dense layers: no routed experts

    def layer_bytes(i: int) -> float:
        params = model.layer_params_at(i)
        routed = model.routed_expert_params() if (model.is_moe and i >= prefix) else 0
        if enable_expert_parallel:
            return (params - routed) * dtype_bytes / tp + routed * dtype_bytes / ep
        return params * dtype_bytes / tp

    # the heaviest pipeline stage (with a dense prefix the first stage is lighter than the others)
    stage = max(sum(layer_bytes(i) for i in range(s, min(model.num_layers, s + layers_per_stage)))
                for s in range(0, model.num_layers, layers_per_stage))
    return int(stage + emb * (1 if pp > 1 else (1 if model.tie_word_embeddings else 2)))


def _catalog_entry(catalog: dict[tuple[str, Path], Any] | None, kind: str, path: Path, load: Any) -> Any:
    """A catalog file parsed once per resolve (16 replicas of one instance read their hardware entry once)."""
    if catalog is None:
        return load(path)
    key = (kind, path.resolve())
    hit = catalog.get(key)
    if hit is None:
        hit = catalog[key] = load(path)
    return hit


def resolve_instance(prefix: str, inst: InstanceConfig, name: str, cfg: RunConfig, node: int,
                     catalog: dict[tuple[str, Path], Any] | None = None) -> ResolvedInstance:
    base = cfg.base_dir
    hw = _catalog_entry(catalog, "hardware", find_catalog_file(inst.hardware, "hardware", base), load_hardware)
    model = _catalog_entry(catalog, "models", find_catalog_file(inst.model or cfg.model, "models", base),
                           load_model_spec)
    if not any(v > 0 for v in hw.peak_tflops.values()):
        raise ConfigError(f"{prefix}.hardware: {hw.name} has no positive peak_tflops")
    engine = inst.engine or cfg.engine
    _instance_errors(prefix, inst, model, hw, engine)
    ep, placement = _moe_parallel(prefix, inst, model)
    if model.dense_prefix_layers and inst.pp > 1:
        raise ConfigError(f"{prefix}.pp: model {model.name} has {model.dense_prefix_layers} leading dense layers; "
                          "pipeline stages of such a model are not simulated (use pp: 1)")
    npus = inst.tp * inst.pp
    dims: list[NetworkDim] = []
    if inst.network is not None:
        if inst.network.preset and inst.network.dims:
            raise ConfigError(f"{prefix}.network: give either 'preset' or 'dims', not both")
        if inst.network.preset:
            dims = list(_catalog_entry(catalog, "networks", find_catalog_file(inst.network.preset, "networks", base),
                                       load_network_preset))
        else:
            dims = list(inst.network.dims)
    group_dims: list[NetworkDim] = []
    if inst.dp > 1:
        dims, group_dims = _split_dp_dims(prefix, inst, dims), dims
    if npus > 1:
        if not dims:
            raise ConfigError(f"{prefix}.network: an instance of {npus} NPUs (tp={inst.tp}, pp={inst.pp}) needs a network")
        prod = math.prod(d.npus for d in dims)
        if prod != npus:
            raise ConfigError(f"{prefix}.network: dimensions hold {prod} NPUs but tp*pp = {npus}")
        if inst.pp > 1 and inst.tp > 1:
            inner = 1
            for d in dims:
                if inner >= inst.tp:
                    break
                inner *= d.npus
            if inner != inst.tp:
                raise ConfigError(
                    f"{prefix}.network.dims: TP groups span the innermost dimensions, so the first dimensions' NPUs "
                    f"must multiply to tp={inst.tp} (got {[d.npus for d in dims]}); list the TP dimensions first")
    for j, d in enumerate(dims):
        if d.algorithm == "doubleBinaryTree" and cfg.backend.kind == "embedded":
            raise ConfigError(
                f"{prefix}.network.dims[{j}].algorithm: doubleBinaryTree has no validated embedded model (it "
                "differs from ASTRA-sim's binary by up to 60%); use ring, direct or halvingDoubling, or "
                "backend.kind: astra-sim")
    b = DTYPE_BYTES[engine.dtype]
    kv_b = DTYPE_BYTES[engine.dtype if engine.kv_cache_dtype == "auto" else engine.kv_cache_dtype]
    layers_per_stage = math.ceil(model.num_layers / inst.pp)
    # per NPU: its KV heads (GQA), or MLA's compressed latent, which every TP rank holds whole
    block_bytes = int(engine.block_size * model.kv_bytes_per_token_per_layer(kv_b, inst.tp) * layers_per_stage)
    weights = weight_bytes_per_npu(model, b, inst.tp, inst.pp, ep, inst.enable_expert_parallel)
    draft = None
    if engine.speculative_tokens and engine.speculative_method == "draft_model":
        # the draft model runs beside the target with the same TP (vLLM's default draft TP): its weights are
        # resident and every block holds its KV too (one block table for both models)
        if inst.pp > 1:
            raise ConfigError(f"{prefix}.pp: a draft model with pipeline parallelism is not simulated")
        draft = _catalog_entry(catalog, "models", find_catalog_file(engine.speculative_draft_model, "models", base),
                               load_model_spec)
        if draft.num_heads % inst.tp or (draft.num_kv_heads % inst.tp and inst.tp % draft.num_kv_heads):
            raise ConfigError(f"engine.speculative_draft_model: {draft.name}'s heads do not split over tp={inst.tp}")
        weights += weight_bytes_per_npu(draft, b, inst.tp, 1)
        block_bytes += int(engine.block_size * draft.kv_bytes_per_token_per_layer(kv_b, inst.tp) * draft.num_layers)
    if engine.speculative_tokens and engine.speculative_method in ("eagle", "mtp"):
        # the draft head's weights are resident and each block holds its layers' KV too (frontend/compute/drafters.py)
        from frontend.compute.drafters import head_memory

        if engine.speculative_method == "mtp":
            _check_mtp(engine, model)
        head = head_memory(engine.speculative_method, model, b, inst.tp, ep, inst.enable_expert_parallel)
        weights += head.weight_bytes_per_npu
        block_bytes += int(engine.block_size * model.kv_bytes_per_token_per_layer(kv_b, inst.tp) * head.kv_layers)
    offloaded = 0
    pl = cfg.placement
    if pl.weights_fraction > 0:
        if pl.weights_tier not in {t.name for t in cfg.kv.tiers}:
            raise ConfigError(f"placement.weights_tier: {pl.weights_tier!r} is not a kv.tiers entry (have "
                              f"{[t.name for t in cfg.kv.tiers]})")
        if inst.dp > 1 or inst.pp > 1:
            raise ConfigError(f"{prefix}: placement of weights in a lower tier is simulated for tp-only instances")
        # the layers' weights (not the embeddings) per NPU: the whole minus the embedding / LM head share
        emb = model.vocab_size * model.hidden_size * b / inst.tp * (1 if model.tie_word_embeddings else 2)
        offloaded = int(pl.weights_fraction * (weights - emb))
        weights -= offloaded
    weight_layers: dict[int, str] = {}
    weight_layer_bytes = 0
    if pl.weights_layers:
        from frontend.instance.kv_layers import layer_tiers

        if inst.dp > 1 or inst.pp > 1 or model.dense_prefix_layers or pl.pim is not None:
            raise ConfigError(f"{prefix}: placement.weights_layers is simulated for tp-only instances of models "
                              "without leading dense layers, without placement.pim")
        weight_layers = layer_tiers(pl.weights_layers, model.num_layers, {t.name for t in cfg.kv.tiers})
        emb = model.vocab_size * model.hidden_size * b / inst.tp * (1 if model.tie_word_embeddings else 2)
        weight_layer_bytes = int((weights - emb) // model.num_layers)  # one layer's weights per NPU
        weights -= weight_layer_bytes * len(weight_layers)
    reserve = (int(engine.activation_reserve_gib * GIB) if engine.activation_reserve_gib is not None
               else activation_reserve_bytes(model, engine, inst.tp))
    if cfg.lora.adapters:  # LoRA adapter slots reserved at start-up (frontend/instance/lora.py)
        from frontend.instance.lora import slot_bytes_per_npu

        reserve += slot_bytes_per_npu(model, inst.tp, inst.pp, cfg.lora, b)
    usable = hw.hbm_capacity_gib * GIB * engine.gpu_memory_utilization
    free = usable - weights - reserve
    pim = None
    if pl.pim is not None:
        pim = _pim_placement(prefix, pl.pim, inst, model, engine, cfg, catalog)
        if free <= 0:
            raise ConfigError(f"{prefix}: model {model.name} does not fit: {weights / GIB:.1f} GiB of weights + "
                              f"{reserve / GIB:.1f} GiB activation reserve exceed {usable / GIB:.1f} GiB of {hw.name}")
        # the KV cache lives on the PIM device(s): their capacity, not the accelerator's HBM, holds the blocks
        free = pl.pim.devices * pim[0].capacity_gib * GIB
    kv_layers: dict[int, str] = {}
    shares: dict[str, int] = {}
    if pl.kv_layers:
        kv_layers, shares = _kv_layer_placement(prefix, inst, model, engine, cfg, pl.pim is not None, block_bytes,
                                                layers_per_stage)
    if engine.num_gpu_blocks_override is not None:
        blocks = engine.num_gpu_blocks_override
    elif kv_layers:
        hbm_share = block_bytes - sum(shares.values())
        blocks = int(free // hbm_share) if hbm_share > 0 else MAX_BLOCKS
        max_len = engine.max_model_len or model.max_position_embeddings
        for t in cfg.kv.tiers:
            if t.name in shares:
                fit = int(t.capacity_gib * GIB // (shares[t.name] * npus))
                if fit * engine.block_size < max_len:
                    raise ConfigError(
                        f"placement.kv_layers: tier {t.name!r} ({t.capacity_gib} GiB) holds the KV of "
                        f"{fit * engine.block_size:,} tokens of its layers for {name!r}, less than one "
                        f"max_model_len sequence ({max_len:,} tokens); raise kv.tiers {t.name}.capacity_gib or place "
                        "fewer layers there")
                blocks = min(blocks, fit)
    else:
        blocks = int(free // block_bytes)
    if blocks > MAX_BLOCKS:
        raise ConfigError(f"{prefix}: {blocks:,} KV blocks per instance (more than {MAX_BLOCKS:,}, about "
                          f"{MAX_BLOCKS * 100 / 1e9:.1f} GB of simulator memory); check the hardware's hbm_capacity_gib "
                          "and engine.block_size / num_gpu_blocks_override")
    if blocks <= 0:  # without an override, free <= 0 gives blocks <= 0 too
        raise ConfigError(
            f"{prefix}: model {model.name} does not fit: {weights / GIB:.1f} GiB of weights per NPU + "
            f"{reserve / GIB:.1f} GiB activation reserve exceed {usable / GIB:.1f} GiB "
            f"({hw.name} {hw.hbm_capacity_gib} GiB x gpu_memory_utilization {engine.gpu_memory_utilization}); "
            f"raise tp/pp or use a larger device")
    tiers = []
    for t in cfg.kv.tiers:
        if t.scope == "pool" and t.shared_by and name not in t.shared_by and inst.name not in t.shared_by:
            continue
        tiers.append(t)
    if offloaded and pl.weights_tier not in {t.name for t in tiers}:
        raise ConfigError(f"placement.weights_tier: pool tier {pl.weights_tier!r} is not shared with {name!r} "
                          "(kv.tiers shared_by)")
    return ResolvedInstance(name=name, hardware=hw, model=model, engine=engine, tp=inst.tp, pp=inst.pp, dims=dims,
                            node=node, num_gpu_blocks=blocks, kv_block_bytes=block_bytes, weight_bytes_per_npu=weights,
                            activation_reserve_bytes=reserve, tiers=tiers, dp=inst.dp,
                            enable_expert_parallel=inst.enable_expert_parallel, ep=ep, expert_placement=placement,
                            group_dims=group_dims, role=inst.role, draft_model=draft,
                            offloaded_weight_bytes_per_npu=offloaded, weights_tier=pl.weights_tier if offloaded else None,
                            pim=pim, kv_layer_tiers=kv_layers, kv_layer_share_bytes=shares,
                            weight_layer_tiers=weight_layers, weight_layer_bytes=weight_layer_bytes)


def _kv_layer_placement(prefix: str, inst: InstanceConfig, model: ModelSpec, engine: EngineConfig, cfg: RunConfig,
                        pim: bool, block_bytes: int, layers: int) -> tuple[dict[int, str], dict[str, int]]:
    """placement.kv_layers resolved: layer -> lower tier, and each tier's share of a block (per NPU)."""
    from frontend.instance.kv_layers import layer_tiers

    why = []
    if inst.pp != 1 or inst.dp != 1:
        why.append("pp = dp = 1")
    if pim:
        why.append("no placement.pim")
    if model.dense_prefix_layers:
        why.append("a model without leading dense layers")
    if engine.speculative_tokens and engine.speculative_method == "draft_model":
        why.append("no draft model")
    if why:
        raise ConfigError(f"{prefix}: placement.kv_layers is simulated with " + "; ".join(why))
    placed = layer_tiers(cfg.placement.kv_layers, layers, {t.name for t in cfg.kv.tiers})
    per_layer = block_bytes // layers
    shares: dict[str, int] = {}
    for t in placed.values():
        shares[t] = shares.get(t, 0) + per_layer
    return placed, shares


def _pim_placement(prefix: str, pc: Any, inst: InstanceConfig, model: ModelSpec, engine: EngineConfig,
                   cfg: RunConfig, catalog: dict[tuple[str, Path], Any] | None) -> tuple:
    """The PIM device of placement.pim, after the checks of what the PIM path simulates."""
    from frontend.compute.pim import PIM_MODELS, load_pim_device

    dev = _catalog_entry(catalog, "pim", find_catalog_file(pc.device, "pim", cfg.base_dir), load_pim_device)
    why = []
    if inst.tp != 1 or inst.pp != 1 or inst.dp != 1:
        why.append("tp = pp = dp = 1 (the PIM device is rank 1 beside a single accelerator)")
    if model.is_mla:
        why.append("a non-MLA model")
    if engine.speculative_tokens:
        why.append("no speculative decoding")
    if cfg.kv.tiers:
        why.append("no kv.tiers (the KV cache lives on the PIM device)")
    if cfg.placement.weights_fraction > 0:
        why.append("no weight offload")
    if why:
        raise ConfigError(f"{prefix}: placement.pim is simulated with " + "; ".join(why))
    if pc.model not in PIM_MODELS:
        raise ConfigError(f"placement.pim.model: {pc.model!r} is not a PIM timing model (have {sorted(PIM_MODELS)})")
    return dev, pc


def _check_mtp(engine: EngineConfig, model: ModelSpec) -> None:
    """speculative_method: mtp drafts with the model's own MTP modules: K of them, or reused in turn.

    vLLM accepts num_speculative_tokens above the modules' count n_predict only as a multiple of it and then
    runs module i mod n_predict for position i (vllm/config/speculative.py: "Ensure divisibility for MTP
    module reuse"). A reused module was trained for a different depth, so its acceptance is the user's to
    state: reuse is opt-in here (speculative_mtp_reuse), with vLLM's divisibility rule.
    """
    k, n = engine.speculative_tokens, model.mtp_modules
    if n == 0:
        raise ConfigError(f"engine.speculative_method: mtp needs multi-token-prediction modules, but model {model.name} "
                          "has none (num_nextn_predict_layers or mtp_modules in its catalog entry)")
    if k <= n:
        return
    if not engine.speculative_mtp_reuse:
        raise ConfigError(f"engine.speculative_tokens: {k} draft tokens but model {model.name} has {n} MTP module(s); "
                          f"use speculative_tokens <= {n}, or speculative_mtp_reuse: true to run the modules again in "
                          "turn (as vLLM does)")
    if k % n:
        raise ConfigError(f"engine.speculative_tokens: with speculative_mtp_reuse, {k} must be a multiple of the model's "
                          f"{n} MTP modules (vLLM's rule)")


def _split_dp_dims(prefix: str, inst: InstanceConfig, dims: list[NetworkDim]) -> list[NetworkDim]:
    """The TP dimensions of a DP group's network: the group spans dp x tp NPUs, TP ranks innermost (vLLM
    orders ranks DP-major: global rank = dp_rank * tp + tp_rank), so the first dimensions must hold
    exactly tp NPUs and the rest dp. Returns the TP dimensions (empty for tp = 1)."""
    if inst.pp > 1:
        raise ConfigError(f"{prefix}.pp: dp={inst.dp} with pp={inst.pp}: data-parallel groups of pipelined engines "
                          "are not simulated; use pp: 1 with dp")
    group = inst.tp * inst.dp
    if not dims:
        raise ConfigError(f"{prefix}.network: a DP group of {group} NPUs (tp={inst.tp} x dp={inst.dp}) needs a network "
                          "spanning all of them")
    prod = math.prod(d.npus for d in dims)
    if prod != group:
        raise ConfigError(f"{prefix}.network: dimensions hold {prod} NPUs but the DP group has tp*dp = {group}")
    inner = 1
    k = 0
    while inner < inst.tp and k < len(dims):
        inner *= dims[k].npus
        k += 1
    if inner != inst.tp:
        raise ConfigError(f"{prefix}.network.dims: TP ranks span the innermost dimensions, so the first dimensions' "
                          f"NPUs must multiply to tp={inst.tp} (got {[d.npus for d in dims]}); list the TP dimensions first")
    return list(dims[:k])


def _check_dp_group(prefix: str, inst: InstanceConfig, ri: ResolvedInstance, cfg: RunConfig) -> None:
    """What a DP group of MoE engines needs that the simulator does not model is refused by name."""
    if not ri.model.is_moe:
        return  # dense DP members are independent engines (no collective ties them); see frontend/cluster.py
    if not inst.enable_expert_parallel:
        raise ConfigError(f"{prefix}.enable_expert_parallel: dp={inst.dp} with MoE model {ri.model.name} and TP-sharded "
                          "experts (vLLM then shards every expert over tp x dp ranks) is not simulated; set "
                          "enable_expert_parallel: true")
    if ri.tiers:
        raise ConfigError(f"{prefix}: kv.tiers with a DP group (dp={inst.dp}) are not simulated; drop the tiers or dp")
    if ri.engine.speculative_tokens:
        raise ConfigError(f"{prefix}: speculative decoding in a DP group of MoE engines (dp={inst.dp}) is not simulated "
                          "(the group's lockstep step does not cost the draft); use dp: 1 or speculative_tokens: 0")


def resolve(cfg: RunConfig, source: str = "<config>") -> ResolvedRun:
    instances: list[ResolvedInstance] = []
    node = 0
    all_names = []
    owner: dict[str, int] = {}
    catalog: dict[tuple[str, Path], Any] = {}
    for i, inst in enumerate(cfg.instances):
        for r in range(inst.replicas):
            name = inst.name if inst.replicas == 1 else f"{inst.name}{r}"
            if name in owner:
                j = owner[name]
                raise ConfigError(
                    f"instances[{i}].name: instance name {name!r} (after expanding replicas to <name><index>) is also "
                    f"the name of an instance of instances[{j}] ({cfg.instances[j].name!r}); rename one of them")
            owner[name] = i
            all_names.append(name)
            n = inst.node if inst.node is not None else node
            ri = resolve_instance(f"instances[{i}]", inst, name, cfg, n, catalog)
            if inst.dp == 1:
                instances.append(ri)
            else:
                _check_dp_group(f"instances[{i}]", inst, ri, cfg)
                for d in range(inst.dp):
                    member = f"{name}-dp{d}"
                    if member in owner:
                        raise ConfigError(f"instances[{i}].name: DP member name {member!r} is also an instance name; "
                                          "rename one of them")
                    owner[member] = i
                    instances.append(dataclasses.replace(ri, name=member, dp_group=name, dp_rank=d))
            node = n + 1
    roles = {i.role for i in instances}
    if "prefill" in roles and "decode" not in roles:
        raise ConfigError("instances: prefill instances need at least one role: decode instance to hand their KV to")
    if "decode" in roles and not roles & {"prefill", "mixed"}:
        raise ConfigError("instances: decode instances need a role: prefill (or mixed) instance to take new requests")
    if cfg.cluster is not None:
        if "prefill" not in roles:
            raise ConfigError("cluster: the cluster network carries the KV of prefill/decode hand-offs; no instance "
                              "has role: prefill, so nothing would cross it (remove `cluster:` or add roles)")
        from frontend.network.cluster_net import place, topology_of

        topology_of(cfg.cluster, max(i.node for i in instances) + 1)
        place(instances, cfg.cluster.npus_per_node)
    if "prefill" in roles and any(i.dp_group is not None and i.model.is_moe for i in instances):
        raise ConfigError("instances: prefill/decode disaggregation with DP groups of MoE engines is not simulated")
    if "prefill" in roles and len({i.model.name for i in instances}) > 1:
        raise ConfigError("instances: prefill/decode disaggregation between instances of different models is not "
                          "simulated (a decode instance must serve the prefill instance's model)")
    total_blocks = sum(i.num_gpu_blocks for i in instances)
    if total_blocks > MAX_CLUSTER_BLOCKS:
        raise ConfigError(f"instances: {len(instances)} instances hold {total_blocks:,} KV blocks in all (more than "
                          f"{MAX_CLUSTER_BLOCKS:,}); lower replicas or engine.num_gpu_blocks_override")
    for j, t in enumerate(cfg.kv.tiers):
        unknown = [s for s in t.shared_by if s not in all_names and s not in {x.name for x in cfg.instances}]
        if unknown:
            raise ConfigError(f"kv.tiers[{j}].shared_by: unknown instances {unknown} (have {all_names})")
        if t.scope != "pool" and t.shared_by:
            raise ConfigError(f"kv.tiers[{j}].shared_by: only a scope='pool' tier is shared")
    return ResolvedRun(config=cfg, instances=instances, source=source)


def _yaml_load(text: str) -> Any:
    """yaml.safe_load with libyaml's parser when PyYAML has it (same documents, several times faster)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader


def load_network_preset(path: Path) -> list[NetworkDim]:
    try:
        raw = _yaml_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read network preset ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_where(e)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("dims"), list) or not raw["dims"]:
        raise ConfigError(f"{path}: a network preset needs 'dims', a non-empty list of dimensions")
    dims = []
    for j, d in enumerate(raw["dims"]):
        try:
            dims.append(NetworkDim.model_validate(d))
        except ValidationError as e:
            raise ConfigError(one_line_validation(e, f"{path}: dims[{j}]")) from None
    return dims


def _yaml_where(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark is not None else str(what)


def load_yaml_entry(path: Path, model, what: str):
    """A catalog entry file (hardware, PIM device, ...) validated as `model`; every failure a ConfigError naming
    the file: unreadable, not YAML (with the line), not a mapping, or invalid (the field path)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read {what} ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_where(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} must be a YAML mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line_validation(e, str(path))) from None


def one_line_validation(e: ValidationError, source: str) -> str:
    parts = []
    for err in e.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check spelling)"
        loc = _fmt_loc(tuple(err["loc"]))
        parts.append(f"{loc}: {msg}" if loc != "(top level)" else msg)
    return f"{source}: " + "; ".join(parts)


def parse_config(raw: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the run file must be a YAML mapping")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    cfg.base_dir = base_dir
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{path}: is a directory, not a run file")
    if not p.is_file():
        raise ConfigError(f"{path}: no such run file")
    try:
        raw = _yaml_load(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the run file ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_where(e)}") from None
    raw = _apply_engine_meta(raw, p.parent)
    if overrides:
        raw = dict(raw or {})
        wl = overrides.get("workload")
        if isinstance(wl, dict) and "kind" in wl:  # a different workload replaces the config's whole
            raw.pop("workload", None)
        raw = deep_merge(raw, overrides)
        w = raw.get("workload")
        if isinstance(w, dict) and w.get("kind") == "agents" and "num_requests" in w:
            w["num_programs"] = w.pop("num_requests")  # --num-requests counts programs for agent workloads
    return parse_config(raw, str(path), p.parent)


def _apply_engine_meta(raw: Any, base_dir: Path) -> Any:
    """`engine_meta:` (a vLLM run's meta.json, relative to the run file) fills `engine:` from that run.

    Settings the meta carries replace the run file's; `--engine-meta` on the command line arrives as
    an `engine:` override and wins over both.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("engine_meta"), str):
        return raw
    from frontend.validation.reference import engine_from_meta

    meta = Path(raw["engine_meta"])
    if not meta.is_absolute():
        meta = base_dir / meta
    eng = raw.get("engine") if isinstance(raw.get("engine"), dict) else {}
    return {**raw, "engine": {**eng, **engine_from_meta(meta)}}


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_and_resolve(path: str | Path, overrides: dict[str, Any] | None = None) -> ResolvedRun:
    cfg = load_config(path, overrides)
    try:
        return resolve(cfg, str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
