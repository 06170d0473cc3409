"""One random-weight decoder layer, operator by operator, for timing.

The operators and their shapes follow the Llama architecture (what vLLM runs):
RMSNorm, fused QKV projection, rotary embedding, attention over a paged-free
KV of the requested lengths, output projection, fused gate/up projection,
SiLU-and-multiply, down projection; once per pass: embedding, final norm,
LM head and sampling. Weights are random; only shapes matter for time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from frontend.config.models import ModelSpec


@dataclass
class Layer:
    model: ModelSpec
    device: str
    dtype: torch.dtype
    tp: int = 1

    def __post_init__(self) -> None:
        m = self.model
        dev, dt = self.device, self.dtype
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
        self.w_qkv = w((self.h + 2 * self.kvh) * self.hd, self.d)
        self.w_o = w(self.d, self.h * self.hd)
        self.w_gate_up = w(2 * self.inter, self.d)
        self.w_down = w(self.d, self.inter)
        self.emb = w(self.vocab, self.d)
        self.w_lm = w(self.vocab, self.d)
        inv = 1.0 / (500000.0 ** (torch.arange(0, self.hd, 2, device=dev, dtype=torch.float32) / self.hd))
        self.inv_freq = inv

    # ---- dense ops, keyed by tokens ----
    def rmsnorm(self, x: torch.Tensor) -> torch.Tensor:
        v = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(v + 1e-5)).to(x.dtype) * self.norm_w

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
        dev, dt = self.device, self.dtype
        x = torch.randn(tokens, self.d, device=dev, dtype=dt)
        ids = torch.randint(0, self.vocab, (tokens,), device=dev)
        pos = torch.arange(tokens, device=dev)
        qkv = torch.randn(tokens, (self.h + 2 * self.kvh) * self.hd, device=dev, dtype=dt)
        attn_out = torch.randn(tokens, self.h * self.hd, device=dev, dtype=dt)
        gu = torch.randn(tokens, 2 * self.inter, device=dev, dtype=dt)
        act = torch.randn(tokens, self.inter, device=dev, dtype=dt)
        return {
            "embedding": lambda: F.embedding(ids, self.emb),
            "layernorm": lambda: self.rmsnorm(x),
            "qkv_proj": lambda: F.linear(x, self.w_qkv),
            "rotary_emb": lambda: self.rope(qkv, pos),
            "o_proj": lambda: F.linear(attn_out, self.w_o),
            "gate_up_proj": lambda: F.linear(x, self.w_gate_up),
            "act_fn": lambda: F.silu(gu[:, : self.inter]) * gu[:, self.inter:],
            "down_proj": lambda: F.linear(act, self.w_down),
            "final_layernorm": lambda: self.rmsnorm(x),
        }

    # ---- per-sequence ops ----
    def per_sequence_ops(self, seqs: int) -> dict[str, callable]:
        x = torch.randn(seqs, self.d, device=self.device, dtype=self.dtype)
        logits = torch.randn(seqs, self.vocab, device=self.device, dtype=torch.float32)
        return {
            "lm_head": lambda: F.linear(x, self.w_lm),
            "sampler": lambda: torch.argmax(torch.softmax(logits, dim=-1), dim=-1),
        }

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
