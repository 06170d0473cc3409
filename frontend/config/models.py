"""Model architecture facts read from a Hugging Face `config.json` (or YAML with the same keys)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "fp4": 0.5}
# Hugging Face keys of multi-head latent attention (DeepSeek-V2/V3); ModelSpec has fields of the same names
_MLA_KEYS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
_TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8": "fp8"}


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions of a decoder-only transformer (dense or MoE)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    # shared experts' total intermediate width (every token runs them; vLLM TP-shards them, never EP-splits):
    # HF `shared_expert_intermediate_size` (Qwen2-MoE) or `n_shared_experts * moe_intermediate_size` (DeepSeek)
    shared_expert_intermediate_size: int = 0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 131072
    default_dtype: str = "bf16"
    model_type: str = ""  # Hugging Face `model_type` (the family: llama, qwen3, qwen3_moe, mixtral, ...)
    # Multi-head latent attention (DeepSeek-V2/V3, arXiv 2405.04434 sec. 2.1); all 0 for GQA/MHA models.
    # q_lora_rank 0 with kv_lora_rank > 0 is MLA without the query compression (q_proj from the hidden state).
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # leading decoder layers with a dense MLP (intermediate_size) before the MoE layers (DeepSeek's
    # `first_k_dense_replace`; vLLM: layer i is MoE iff i >= first_k_dense_replace); 0 for all-MoE models
    first_k_dense_replace: int = 0
    # multi-token-prediction modules shipped with the checkpoint (DeepSeek-V3 tech. report, arXiv 2412.19437
    # sec. 2.2: D sequential modules, each a projection 2d -> d and one transformer block; embedding and output
    # head shared with the main model): HF `num_nextn_predict_layers` (DeepSeek-V3: 1), or a catalog entry's
    # own `mtp_modules`; 0 when the model has none
    mtp_modules: int = 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention: the KV cache holds one compressed latent per token."""
        return self.kv_lora_rank > 0

    @property
    def qk_head_dim(self) -> int:
        """Query/key width per head: MLA's nope + rope parts, else head_dim."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def dense_prefix_layers(self) -> int:
        """Leading layers with a dense MLP in a MoE model (DeepSeek's first_k_dense_replace); 0 otherwise."""
        return min(self.first_k_dense_replace, self.num_layers) if self.is_moe else 0

    @property
    def num_moe_layers(self) -> int:
        """Decoder layers whose MLP is the sparse MoE block (0 for a dense model)."""
        return self.num_layers - self.dense_prefix_layers if self.is_moe else 0

    def attention_params(self) -> int:
        """One layer's attention weights (projections; MLA's two latent RMSNorms included).

        GQA/MHA: q, k, v and o projections. MLA (DeepSeek-V2/V3, vLLM's DeepseekV2MLAAttention):
        q_a_proj (d x q_lora) + q_a_layernorm + q_b_proj (q_lora x H*(nope+rope)), or q_proj
        (d x H*(nope+rope)) without q_lora; kv_a_proj_with_mqa (d x (kv_lora+rope)) + kv_a_layernorm;
        kv_b_proj (kv_lora x H*(nope+v)); o_proj (H*v x d).
        """
        d = self.hidden_size
        if not self.is_mla:
            return d * (self.q_dim + 2 * self.kv_dim) + self.q_dim * d
        h, qk = self.num_heads, self.qk_head_dim
        if self.q_lora_rank:
            q = d * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * h * qk
        else:
            q = d * h * qk
        kv = (d * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
              + self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim))
        return q + kv + h * self.v_head_dim * d

    def dense_layer_params(self) -> int:
        """One decoder layer with the dense MLP (gate, up, down of intermediate_size): a dense model's
        layer, or one of a MoE model's first_k_dense_replace leading layers."""
        d = self.hidden_size
        return self.attention_params() + 3 * d * self.intermediate_size + 2 * d

    def layer_params(self) -> int:
        """One decoder layer: the MoE layer of a MoE model (router, routed and shared experts), else the dense one.

        A MoE model with first_k_dense_replace > 0 also has dense layers: see dense_layer_params,
        layer_params_at and all_layer_params.
        """
        if not self.is_moe:
            return self.dense_layer_params()
        d = self.hidden_size
        mlp = self.routed_expert_params() + 3 * d * self.shared_expert_intermediate_size + d * self.num_experts
        return self.attention_params() + mlp + 2 * d

    def layer_params_at(self, index: int) -> int:
        """Parameters of decoder layer `index` (0-based): dense for the leading first_k_dense_replace layers."""
        if not 0 <= index < self.num_layers:
            raise IndexError(f"layer {index} of a {self.num_layers}-layer model")
        return self.dense_layer_params() if index < self.dense_prefix_layers else self.layer_params()

    def all_layer_params(self) -> int:
        """Parameters of all decoder layers: dense-prefix layers plus MoE layers (num_layers x layer_params
        when there is no dense prefix)."""
        return self.dense_prefix_layers * self.dense_layer_params() + (self.num_layers - self.dense_prefix_layers) \
            * self.layer_params()

    def routed_expert_params(self) -> int:
        """Parameters of one layer's routed experts (gate, up, down of each: 3 x d x I); 0 for a dense model.

        These are what expert parallelism splits over EP ranks; the rest of the layer is TP-sharded.
        Per MoE layer; a dense-prefix layer has none (all_routed_expert_params sums the MoE layers).
        """
        return self.num_experts * 3 * self.hidden_size * self.moe_intermediate_size if self.is_moe else 0

    def all_routed_expert_params(self) -> int:
        """Routed-expert parameters over all MoE layers (what EP splits, whole model)."""
        return self.num_moe_layers * self.routed_expert_params()

    def total_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        return self.all_layer_params() + emb + head + self.hidden_size

    def active_params(self, embedding: bool = True) -> int:
        """Parameters one token runs through: every layer's attention and norms, dense MLPs, router, shared
        experts and experts_per_token routed experts per MoE layer, the final norm and lm_head; the input
        embedding table too unless `embedding` is False (DeepSeek's "37B activated" leaves it out; Qwen's
        "3.3B / 22B activated" count it). Equal to total_params for a dense model (with the embedding)."""
        d = self.hidden_size
        emb = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else emb
        if not self.is_moe:
            layers = self.all_layer_params()
        else:
            moe_layer = (self.layer_params() - self.routed_expert_params()
                         + self.experts_per_token * 3 * d * self.moe_intermediate_size)
            layers = self.dense_prefix_layers * self.dense_layer_params() + self.num_moe_layers * moe_layer
        if not embedding:
            return layers + (head or emb) + d
        return layers + emb + head + d

    def kv_bytes_per_token_per_layer(self, dtype_bytes: float, tp: int = 1) -> int:
        """KV-cache bytes one NPU stores per token per layer at tensor parallelism `tp`.

        GQA/MHA: K and V of the NPU's KV heads, 2 x max(1, kv_heads // tp) x head_dim x bytes (KV heads are
        split over TP, replicated when tp > kv_heads). MLA: the compressed latent plus the decoupled RoPE
        key, (kv_lora_rank + qk_rope_head_dim) x bytes, one copy per token (not per head, no separate V),
        the same on every TP rank: vLLM's MLA backends keep the whole latent cache on each rank
        (head size kv_lora_rank + qk_rope_head_dim = 576 for DeepSeek-V3, one KV head).
        """
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        if self.is_mla:
            return int((self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes)
        return int(2 * max(1, self.num_kv_heads // tp) * self.head_dim * dtype_bytes)

    def kv_bytes_per_token(self, dtype_bytes: float, layers: int | None = None) -> int:
        """KV-cache bytes of one token over `layers` layers (all by default), unsharded.

        GQA/MHA: K and V of all KV heads. MLA: the latent (kv_lora_rank + qk_rope_head_dim) per layer.
        """
        n = self.num_layers if layers is None else layers
        if self.is_mla:
            return int((self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes * n)
        return int(2 * self.kv_dim * dtype_bytes * n)


def _count(raw: dict, key: str, path: Path, required: bool = True, minimum: int = 1) -> int:
    """A positive integer field of a model config; ConfigError naming the file and the field otherwise."""
    from frontend.errors import ConfigError

    v = raw.get(key)
    if v is None:
        if required:
            raise ConfigError(f"{path}: missing required Hugging Face field {key!r}")
        return 0
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or int(v) != v:
        raise ConfigError(f"{path}: field {key!r} must be an integer, got {v!r}")
    if not minimum <= v <= 10**9:
        raise ConfigError(f"{path}: field {key!r} must be in [{minimum}, 1e9], got {v}")
    return int(v)


def load_model_spec(path: Path) -> ModelSpec:
    from frontend.errors import ConfigError

    path = Path(path)
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read model config ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a mapping of config fields")
    hidden = _count(raw, "hidden_size", path)
    heads = _count(raw, "num_attention_heads", path)
    layers = _count(raw, "num_hidden_layers", path)
    _count(raw, "vocab_size", path)
    kvh = _count(raw, "num_key_value_heads", path, required=False)
    if kvh and heads % kvh:
        raise ConfigError(f"{path}: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kvh})")
    for key in ("head_dim", "intermediate_size", "num_experts", "num_local_experts", "n_routed_experts",
                "num_experts_per_tok", "moe_intermediate_size", "max_position_embeddings",
                "shared_expert_intermediate_size", "n_shared_experts", "num_nextn_predict_layers", "mtp_modules"):
        _count(raw, key, path, required=False, minimum=0)
    mla = {k: _count(raw, k, path, required=False, minimum=0) for k in _MLA_KEYS}
    if mla["kv_lora_rank"]:
        missing = [k for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim") if not mla[k]]
        if missing:
            raise ConfigError(f"{path}: multi-head latent attention (kv_lora_rank={mla['kv_lora_rank']}) needs "
                              f"positive {', '.join(missing)}")
    elif any(mla.values()):
        given = [k for k, v in mla.items() if v]
        raise ConfigError(f"{path}: MLA field(s) {given} are given without kv_lora_rank (the latent KV width); "
                          "set kv_lora_rank for an MLA model or remove them")
    if not raw.get("head_dim") and hidden % heads and not mla["kv_lora_rank"]:
        raise ConfigError(f"{path}: hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads}) "
                          "and no head_dim is given")
    n_exp = int(raw.get("num_experts") or raw.get("num_local_experts") or raw.get("n_routed_experts") or 0)
    first_dense = _count(raw, "first_k_dense_replace", path, required=False, minimum=0)
    if first_dense and n_exp:
        if first_dense >= layers:
            raise ConfigError(f"{path}: first_k_dense_replace ({first_dense}) must be less than num_hidden_layers "
                              f"({layers}): it is the number of leading dense layers before the MoE layers")
        if not raw.get("intermediate_size"):
            raise ConfigError(f"{path}: first_k_dense_replace ({first_dense}) needs intermediate_size, the width of "
                              "the leading dense layers' MLP")
    for key in ("moe_layer_freq", "decoder_sparse_step"):
        if n_exp and _count(raw, key, path, required=False, minimum=0) > 1:
            raise ConfigError(f"{path}: {key}={raw[key]} (MoE only every few layers) is not modelled; only "
                              "leading dense layers (first_k_dense_replace) are")
    if n_exp and raw.get("mlp_only_layers"):
        raise ConfigError(f"{path}: mlp_only_layers={raw['mlp_only_layers']!r} (dense layers among the MoE layers) "
                          "is not modelled; only leading dense layers (first_k_dense_replace) are")
    moe_inter = int(raw.get("moe_intermediate_size") or raw.get("intermediate_size") or 0) if n_exp else 0
    shared = int(raw.get("shared_expert_intermediate_size") or 0) or int(raw.get("n_shared_experts") or 0) * moe_inter
    dtype = _TORCH_DTYPES.get(str(raw.get("torch_dtype", "bfloat16")), "bf16")
    return ModelSpec(
        name=str(raw.get("_name_or_path") or raw.get("name") or path.stem),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or (mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"] if mla["kv_lora_rank"]
                                              else hidden // heads)),
        intermediate_size=int(raw.get("intermediate_size") or 4 * hidden),
        vocab_size=int(raw["vocab_size"]),
        num_experts=n_exp,
        experts_per_token=int(raw.get("num_experts_per_tok") or 0) if n_exp else 0,
        moe_intermediate_size=moe_inter,
        shared_expert_intermediate_size=shared if n_exp else 0,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        max_position_embeddings=int(raw.get("max_position_embeddings") or 131072),
        default_dtype=dtype,
        model_type=str(raw.get("model_type") or ""),
        first_k_dense_replace=first_dense if n_exp else 0,
        mtp_modules=int(raw["mtp_modules"] if raw.get("mtp_modules") is not None
                        else raw.get("num_nextn_predict_layers") or 0),
        **mla,
    )
