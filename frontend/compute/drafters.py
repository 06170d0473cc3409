"""Speculative drafters that run on the accelerator: what one draft position costs, and what they keep in HBM.

A drafter proposes the K draft tokens of a decode step one position at a time, one token per decode
sequence each time, over the sequence's context (`once` is one position at the step's decode batch;
`SpeculativeCompute` multiplies it by K into the step's `spec_draft` operator). The registry `DRAFTERS`
maps `engine.speculative_method` to its drafter; n-gram lookup runs on the CPU and has none.

- eagle (EAGLE-1/2: Li et al., arXiv 2401.15077 sec. 4, and arXiv 2406.16858, which keeps EAGLE-1's draft
  model): the feature and the next token's embedding are concatenated and reduced by `fc` (2d -> d), then
  one decoder layer of the target's shape runs and the target's own LM head (shared, EAGLE-1 sec. 4: the
  embedding and LM head are the target's) scores the vocabulary. Resident: fc (2d x d; vLLM keeps it a
  plain replicated nn.Linear without bias, llama_eagle.py) and the layer, TP-sharded like the target's;
  the layer's attention caches its own KV (vLLM allocates the drafter's attention layers in the same
  block table), one layer's KV per block. EAGLE-3 (arXiv 2503.01840) fuses three feature levels (fc 3d -> d)
  and has its own, smaller-vocabulary LM head: not this method.
- mtp (DeepSeek-V3 technical report, arXiv 2412.19437 sec. 2.2): D sequential modules; module k takes
  the previous depth's hidden state and the embedding of the next token, RMSNorms both, projects the
  concatenation 2d -> d (M_k), runs one transformer block of the model (for DeepSeek-V3 an MoE layer, the
  model's repeated layer) and the shared output head (its final RMSNorm and the LM head). Embedding and
  output head are shared with the main model, so resident per module: the two RMSNorms, M_k (2d x d,
  replicated on every rank: vLLM's and SGLang's eh_proj is a plain nn.Linear), the block (TP-sharded, its
  routed experts split over EP ranks under expert parallelism), the head's RMSNorm; its attention caches
  KV like a target layer. DeepSeek-V3's checkpoint stores 14B MTP parameters (report sec. 1), which
  includes copies of the 0.93B-parameter embedding and LM head that the paper says are shared.
- draft_model: a smaller model runs its whole forward pass per position (its weights and KV are added by
  the config loader from its own catalog entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from frontend.compute.batch import BatchShape, OpCost
from frontend.compute.roofline import Roofline
from frontend.config.models import ModelSpec


class Drafter(Protocol):
    def once(self, inner, shape: BatchShape) -> list[OpCost]:
        """The operators of one draft position over `shape` (one new token per decode sequence)."""
        ...


def roofline_of(cm) -> Roofline:
    """The roofline model under a stack of compute-model layers (the profile model keeps one as `roof`)."""
    seen = 0
    while not isinstance(cm, Roofline):
        nxt = cm.__dict__.get("roof") or cm.__dict__.get("inner")
        if nxt is None or seen > 16:
            raise TypeError(f"no roofline model under {type(cm).__name__}")
        cm, seen = nxt, seen + 1
    return cm


def _head_ops(inner, shape: BatchShape, names: tuple[str, ...]) -> list[OpCost]:
    return [o for o in inner.epilogue_ops(shape) if o.name in names]


class EagleHead:
    """EAGLE-1/2's draft head: fc (2d -> d), one decoder layer of the target, the target's LM head."""

    def once(self, inner, shape: BatchShape) -> list[OpCost]:
        roof = roofline_of(inner)
        t, d = shape.num_tokens, roof.d
        return [roof._gemm("eagle_fc", t, 2 * d, d), *inner.layer_ops(shape), *_head_ops(inner, shape, ("lm_head",))]


class MtpModules:
    """One DeepSeek-V3 MTP module per draft position (module docstring)."""

    def once(self, inner, shape: BatchShape) -> list[OpCost]:
        roof = roofline_of(inner)
        t, d = shape.num_tokens, roof.d
        emb = [o for o in inner.prologue_ops(shape) if o.name == "embedding"]  # the shared embedding
        return [*emb, roof._elementwise("mtp_norms", 2 * t * d, 4, 2), roof._gemm("mtp_eh_proj", t, 2 * d, d),
                *inner.layer_ops(shape), *_head_ops(inner, shape, ("final_layernorm", "lm_head"))]


@dataclass
class DraftModel:
    """A separate draft model: its whole forward pass per draft position."""

    model: Roofline

    def once(self, inner, shape: BatchShape) -> list[OpCost]:
        d = self.model
        return d.prologue_ops(shape) + d.model.num_layers * d.layer_ops(shape) + d.epilogue_ops(shape)


DRAFTERS: dict[str, type] = {"eagle": EagleHead, "mtp": MtpModules}


# ---- HBM ----
@dataclass(frozen=True)
class HeadMemory:
    """What a draft head keeps resident per NPU: its weights, and how many decoder layers of KV it caches
    beside the target's (each KV block holds them too)."""

    weight_bytes_per_npu: int
    kv_layers: int


def _layer_bytes(model: ModelSpec, dtype_bytes: float, tp: int, ep: int, enable_expert_parallel: bool) -> float:
    """One repeated decoder layer (the MoE layer of a MoE model) on one NPU: TP-sharded, routed experts over EP."""
    params = model.layer_params()
    routed = model.routed_expert_params()
    if enable_expert_parallel:
        return (params - routed) * dtype_bytes / tp + routed * dtype_bytes / ep
    return params * dtype_bytes / tp


def head_memory(method: str, model: ModelSpec, dtype_bytes: float, tp: int, ep: int = 1,
                enable_expert_parallel: bool = False) -> HeadMemory:
    """Resident weights and KV layers of an `eagle` or `mtp` drafter (module docstring); none for the others."""
    d = model.hidden_size
    layer = _layer_bytes(model, dtype_bytes, tp, ep, enable_expert_parallel)
    if method == "eagle":
        return HeadMemory(int(2 * d * d * dtype_bytes + layer), 1)
    if method == "mtp":
        n = model.mtp_modules
        per_module = (2 * d + 2 * d * d + d) * dtype_bytes + layer  # enorm + hnorm, eh_proj, head norm; the block
        return HeadMemory(int(n * per_module), n)
    return HeadMemory(0, 0)


def mtp_module_params(model: ModelSpec) -> int:
    """Parameters of one MTP module without the shared embedding and head (DeepSeek-V3: 11.7B)."""
    d = model.hidden_size
    return 2 * d + 2 * d * d + d + model.layer_params()
