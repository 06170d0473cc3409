"""Model architecture facts read from a Hugging Face `config.json` (or YAML with the same keys)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "fp4": 0.5}
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

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_params(self) -> int:
        d = self.hidden_size
        attn = d * (self.q_dim + 2 * self.kv_dim) + self.q_dim * d
        if self.is_moe:
            mlp = self.routed_expert_params() + 3 * d * self.shared_expert_intermediate_size + d * self.num_experts
        else:
            mlp = 3 * d * self.intermediate_size
        return attn + mlp + 2 * d

    def routed_expert_params(self) -> int:
        """Parameters of one layer's routed experts (gate, up, down of each: 3 x d x I); 0 for a dense model.

        These are what expert parallelism splits over EP ranks; the rest of the layer is TP-sharded.
        """
        return self.num_experts * 3 * self.hidden_size * self.moe_intermediate_size if self.is_moe else 0

    def total_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        return self.num_layers * self.layer_params() + emb + head + self.hidden_size

    def kv_bytes_per_token(self, dtype_bytes: float, layers: int | None = None) -> int:
        """K and V for one token over `layers` layers (all by default)."""
        n = self.num_layers if layers is None else layers
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
                "shared_expert_intermediate_size", "n_shared_experts"):
        _count(raw, key, path, required=False, minimum=0)
    if not raw.get("head_dim") and hidden % heads:
        raise ConfigError(f"{path}: hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads}) "
                          "and no head_dim is given")
    n_exp = int(raw.get("num_experts") or raw.get("num_local_experts") or raw.get("n_routed_experts") or 0)
    moe_inter = int(raw.get("moe_intermediate_size") or raw.get("intermediate_size") or 0) if n_exp else 0
    shared = int(raw.get("shared_expert_intermediate_size") or 0) or int(raw.get("n_shared_experts") or 0) * moe_inter
    dtype = _TORCH_DTYPES.get(str(raw.get("torch_dtype", "bfloat16")), "bf16")
    return ModelSpec(
        name=str(raw.get("_name_or_path") or raw.get("name") or path.stem),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
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
    )
