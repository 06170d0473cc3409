"""One random-weight decoder layer, operator by operator, for timing.

Which operators are timed comes from the architecture file of the model's family
(`configs/architectures/<family>.yaml`, chosen from the Hugging Face `model_type` as the
compute model does: `frontend/compute/architecture.py`): the dense and per-sequence operators
one forward pass runs (a MoE model's sparse block replaces the dense MLP, so its bundle has no
gate_up_proj / act_fn / down_proj), attention, and for a MoE model the whole MoE block. A
model whose `model_type` has no architecture file is profiled as `llama` (dense) or `mixtral`
(MoE); an operator the architecture names but this layer cannot run is an error.

The operators and their shapes follow what vLLM runs: RMSNorm, fused QKV projection, per-head
Q/K RMSNorms (`qk_norm`, Qwen3), rotary embedding, attention over a paged-free KV of the
requested lengths, output projection, fused gate/up projection, SiLU-and-multiply, down
projection; once per pass: embedding, final norm, LM head and sampling. The MoE block
(`moe_op`) is Qwen3-MoE's / Mixtral's sparse block: router gate (hidden -> E logits), softmax,
top-k with the top-k probabilities renormalised (norm_topk_prob; Mixtral's softmax over the
top-k logits is the same weights), per-expert fused gate/up GEMM (2 x I), SiLU-and-multiply and
down GEMM over the tokens routed to that expert, weighted combine (index_add), plus the shared
expert MLP when the model has one (with Qwen2-MoE's sigmoid shared-expert gate for
model_type qwen2_moe). The experts run as a loop over the activated experts (HF transformers'
eager MoE), not vLLM's fused Triton kernel. Weights are random; only shapes matter for time.
Under TP every expert's (and the shared expert's) intermediate width is split by the TP degree
(vLLM's FusedMoE without expert parallelism); the router is replicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from frontend.compute.architecture import ARCH_DIR, Architecture, family_of
from frontend.config.models import ModelSpec

# what this layer can time, per profile table
DENSE_OPS = ("embedding", "layernorm", "qkv_proj", "qk_norm", "rotary_emb", "o_proj", "gate_up_proj", "act_fn",
             "down_proj", "final_layernorm")
PER_SEQUENCE_OPS = ("lm_head", "sampler")
ATTENTION_OPS = ("attention",)
MOE_OPS = ("moe",)


def architecture_family(model: ModelSpec) -> str:
    """The architecture file a bundle of this model is profiled as (and records in meta.yaml)."""
    fam = family_of(model.model_type)
    if fam and (ARCH_DIR / f"{fam}.yaml").is_file():
        return fam
    return "mixtral" if model.is_moe else "llama"


def forced_routing(tokens: int, k: int, activated: int) -> torch.Tensor:
    """Expert ids (tokens x k) that spread the tokens*k assignments over exactly `activated` experts.

    Assignment j = t*k + c (token t's c-th choice) goes to expert j mod `activated`: round-robin over
    experts 0 .. activated-1, so every activated expert gets floor or ceil of tokens*k/activated rows
    (balanced load), and a token's k choices are k consecutive residues, distinct because
    k <= activated. Exactly `activated` experts are used when k <= activated <= tokens*k.
    """
    if not k <= activated <= tokens * k:
        raise ValueError(f"cannot activate {activated} experts with {tokens} token(s) x top-{k}")
    return (torch.arange(tokens * k) % activated).view(tokens, k)


@dataclass
class Layer:
    model: ModelSpec
    device: str
    dtype: torch.dtype
    tp: int = 1

    def __post_init__(self) -> None:
        m = self.model
        dev, dt = self.device, self.dtype
        self.family = architecture_family(m)
        self.arch = Architecture(ARCH_DIR / f"{self.family}.yaml")
        used = self.arch.used(m.is_moe)
        self.ops = {c: [n for n in used if self.arch.category[n] == c]
                    for c in ("dense", "per_sequence", "attention", "moe")}
        for cat, known in (("dense", DENSE_OPS), ("per_sequence", PER_SEQUENCE_OPS), ("attention", ATTENTION_OPS),
                           ("moe", MOE_OPS)):
            missing = [n for n in self.ops[cat] if n not in known]
            if missing:
                raise ValueError(f"architecture {self.arch.path.name} runs {cat} operator(s) {missing} that the "
                                 f"profiler cannot time (it knows {list(known)})")
        if self.ops["moe"] and not m.is_moe:
            raise ValueError(f"architecture {self.arch.path.name} has a MoE block but {m.name} has no experts")
        self.h = max(1, m.num_heads // self.tp)
        self.kvh = max(1, m.num_kv_heads // self.tp)
        self.hd = m.head_dim
        self.d = m.hidden_size
        self.inter = max(1, m.intermediate_size // self.tp)
        self.vocab = max(1, m.vocab_size // self.tp)
        g = torch.Generator(device="cpu").manual_seed(0)

        def w(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) * 0.02).to(device=dev, dtype=dt)

        self.norm_w = torch.ones(self.d, device=dev, dtype=dt)
        self.head_norm_w = torch.ones(self.hd, device=dev, dtype=dt)
        self.w_qkv = w((self.h + 2 * self.kvh) * self.hd, self.d)
        self.w_o = w(self.d, self.h * self.hd)
        if {"gate_up_proj", "down_proj"} & set(self.ops["dense"]):  # a MoE layer has no dense MLP weights
            self.w_gate_up = w(2 * self.inter, self.d)
            self.w_down = w(self.d, self.inter)
        self.emb = w(self.vocab, self.d)
        self.w_lm = w(self.vocab, self.d)
        inv = 1.0 / (500000.0 ** (torch.arange(0, self.hd, 2, device=dev, dtype=torch.float32) / self.hd))
        self.inv_freq = inv
        if self.ops["moe"]:
            self.E = m.num_experts
            self.k = max(1, min(m.experts_per_token, self.E))
            self.moe_inter = max(1, m.moe_intermediate_size // self.tp)
            self.shared_inter = m.shared_expert_intermediate_size // self.tp if m.shared_expert_intermediate_size else 0
            # the experts' weights are drawn on the device (a big model's experts are GBs)
            gd = torch.Generator(device=dev).manual_seed(1)

            def wd(*shape: int) -> torch.Tensor:
                return torch.empty(*shape, device=dev, dtype=dt).normal_(0.0, 0.02, generator=gd)

            self.w_router = w(self.E, self.d)
            self.w_exp_gate_up = wd(self.E, 2 * self.moe_inter, self.d)  # per expert: [gate; up]
            self.w_exp_down = wd(self.E, self.d, self.moe_inter)
            if self.shared_inter:
                self.w_sh_gate_up = w(2 * self.shared_inter, self.d)
                self.w_sh_down = w(self.d, self.shared_inter)
                self.w_sh_gate = w(1, self.d) if m.model_type == "qwen2_moe" else None

    # ---- dense ops, keyed by tokens ----
    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        v = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(v + 1e-5)).to(x.dtype) * (self.norm_w if weight is None else weight)

    def qk_norm(self, qkv: torch.Tensor) -> torch.Tensor:
        """Qwen3's per-head RMSNorms of Q and K (q_norm, k_norm over head_dim), timed together."""
        t = qkv.shape[0]
        q = qkv[:, : self.h * self.hd].view(t, self.h, self.hd)
        k = qkv[:, self.h * self.hd: (self.h + self.kvh) * self.hd].view(t, self.kvh, self.hd)
        return torch.cat((self.rmsnorm(q, self.head_norm_w).flatten(1), self.rmsnorm(k, self.head_norm_w).flatten(1),
                          qkv[:, (self.h + self.kvh) * self.hd:]), dim=1)

    def rope(self, qkv: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        t = qkv.shape[0]
        q = qkv[:, : self.h * self.hd].view(t, self.h, self.hd)
        k = qkv[:, self.h * self.hd: (self.h + self.kvh) * self.hd].view(t, self.kvh, self.hd)
        f = torch.outer(pos.float(), self.inv_freq)
        cos, sin = f.cos()[:, None, :].to(q.dtype), f.sin()[:, None, :].to(q.dtype)

        def rot(x: torch.Tensor) -> torch.Tensor:
            x1, x2 = x[..., : self.hd // 2], x[..., self.hd // 2:]
            return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

        return torch.cat((rot(q).flatten(1), rot(k).flatten(1), qkv[:, (self.h + self.kvh) * self.hd:]), dim=1)

    def dense_ops(self, tokens: int) -> dict[str, callable]:
        """The architecture's dense operators at `tokens` tokens, in its order."""
        dev, dt = self.device, self.dtype
        x = torch.randn(tokens, self.d, device=dev, dtype=dt)
        ids = torch.randint(0, self.vocab, (tokens,), device=dev)
        pos = torch.arange(tokens, device=dev)
        qkv = torch.randn(tokens, (self.h + 2 * self.kvh) * self.hd, device=dev, dtype=dt)
        attn_out = torch.randn(tokens, self.h * self.hd, device=dev, dtype=dt)
        names = self.ops["dense"]
        mlp = {"gate_up_proj", "act_fn", "down_proj"} & set(names)
        gu = torch.randn(tokens, 2 * self.inter, device=dev, dtype=dt) if mlp else None
        act = torch.randn(tokens, self.inter, device=dev, dtype=dt) if mlp else None
        ops = {
            "embedding": lambda: F.embedding(ids, self.emb),
            "layernorm": lambda: self.rmsnorm(x),
            "qkv_proj": lambda: F.linear(x, self.w_qkv),
            "qk_norm": lambda: self.qk_norm(qkv),
            "rotary_emb": lambda: self.rope(qkv, pos),
            "o_proj": lambda: F.linear(attn_out, self.w_o),
            "gate_up_proj": lambda: F.linear(x, self.w_gate_up),
            "act_fn": lambda: F.silu(gu[:, : self.inter]) * gu[:, self.inter:],
            "down_proj": lambda: F.linear(act, self.w_down),
            "final_layernorm": lambda: self.rmsnorm(x),
        }
        return {n: ops[n] for n in names}

    # ---- per-sequence ops ----
    def per_sequence_ops(self, seqs: int) -> dict[str, callable]:
        x = torch.randn(seqs, self.d, device=self.device, dtype=self.dtype)
        logits = torch.randn(seqs, self.vocab, device=self.device, dtype=torch.float32)
        ops = {
            "lm_head": lambda: F.linear(x, self.w_lm),
            "sampler": lambda: torch.argmax(torch.softmax(logits, dim=-1), dim=-1),
        }
        return {n: ops[n] for n in self.ops["per_sequence"]}

    # ---- MoE block, keyed by (tokens, activated experts) ----
    def moe_op(self, tokens: int, activated: int, x: torch.Tensor | None = None):
        """The whole sparse MoE block for `tokens` tokens with exactly `activated` distinct experts.

        The router runs for real (gate GEMM, softmax, top-k), then its expert choice is replaced by
        `forced_routing` so the measurement has the activated-expert count the table is keyed by;
        the combine weights are the router probabilities at the forced experts, renormalised.
        `x` (tokens x hidden) is the block's input; random when not given.
        """
        dev, dt = self.device, self.dtype
        k, inter = self.k, self.moe_inter
        x = torch.randn(tokens, self.d, device=dev, dtype=dt) if x is None else x
        forced = forced_routing(tokens, k, activated).to(dev)

        def run() -> torch.Tensor:
            logits = F.linear(x, self.w_router)
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            torch.topk(probs, k, dim=-1)  # the router's own choice, timed and then overridden
            wts = probs.gather(1, forced)
            wts = (wts / wts.sum(-1, keepdim=True)).to(dt)  # norm_topk_prob
            flat = forced.flatten()
            order = torch.argsort(flat, stable=True)
            counts = torch.bincount(flat, minlength=self.E).tolist()
            tok = order // k
            xs = x[tok]  # the token rows in expert order
            ws = wts.flatten()[order].unsqueeze(1)
            out = torch.zeros_like(x)
            start = 0
            for e, n in enumerate(counts):
                if not n:
                    continue
                end = start + n
                h = F.linear(xs[start:end], self.w_exp_gate_up[e])
                h = F.silu(h[:, :inter]) * h[:, inter:]
                out.index_add_(0, tok[start:end], F.linear(h, self.w_exp_down[e]) * ws[start:end])
                start = end
            if self.shared_inter:
                h = F.linear(x, self.w_sh_gate_up)
                y = F.linear(F.silu(h[:, : self.shared_inter]) * h[:, self.shared_inter:], self.w_sh_down)
                if self.w_sh_gate is not None:
                    y = torch.sigmoid(F.linear(x, self.w_sh_gate)) * y
                out = out + y
            return out

        return run

    # ---- attention: one prefill chunk over kv_prefill cached tokens + n_decode decodes over kv_decode ----
    def attention_op(self, prefill_chunk: int, kv_prefill: int, n_decode: int, kv_decode: int):
        dev, dt = self.device, self.dtype
        parts = []
        if prefill_chunk:
            q = torch.randn(1, self.h, prefill_chunk, self.hd, device=dev, dtype=dt)
            kv_len = kv_prefill + prefill_chunk
            k = torch.randn(1, self.kvh, kv_len, self.hd, device=dev, dtype=dt)
            v = torch.randn_like(k)
            mask = torch.ones(prefill_chunk, kv_len, device=dev, dtype=torch.bool).tril(kv_prefill)
            parts.append((q, k, v, mask))
        if n_decode:
            q = torch.randn(n_decode, self.h, 1, self.hd, device=dev, dtype=dt)
            k = torch.randn(n_decode, self.kvh, max(1, kv_decode), self.hd, device=dev, dtype=dt)
            v = torch.randn_like(k)
            parts.append((q, k, v, None))
        rep = self.h // self.kvh

        def run():
            for q, k, v, mask in parts:
                kk = k.repeat_interleave(rep, dim=1) if rep > 1 else k
                vv = v.repeat_interleave(rep, dim=1) if rep > 1 else v
                F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)

        return run
