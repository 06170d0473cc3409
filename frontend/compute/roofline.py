"""Roofline latency per operator of a decoder layer.

time = max(FLOPs / (peak * eff_flops), bytes / (HBM bw * eff_bw)) + launch,
per NPU (weights and heads split over tp). FLOPs count a multiply-add as 2.
Attention FLOPs for a sequence with q new tokens over ctx cached ones are
4 * q * (ctx + (q + 1) / 2) * head_dim * heads (QK^T and PV, causal within the
chunk); its bytes are the KV it reads ((ctx + q) tokens), Q and O, and the
new KV it writes. Efficiency factors come from the hardware catalog entry.

Physics refinements (documented in the README's calibration notes):
* GEMM tile quantization: tensor-core GEMMs run in tiles of 64 rows of M
  (tokens); a GEMM over M tokens costs as many FLOPs as ceil(M/64)*64. At
  M <= 16 the library picks small-M kernels whose tiles are one tensor-core
  instruction tall (mma m16n8k16: 16 rows, PTX ISA), so 16 rows are charged.
* Imperfect overlap when memory-bound: a GEMM that streams its weights waits
  on each k-step's data and then runs that step's tensor-core work, so part of
  the compute is not hidden: time = max(compute, memory + gemm_overlap_loss *
  compute). Compute-bound GEMMs (multi-stage pipelines over reused tiles) hide
  their loads, so the large-M measurements stay at max(compute, memory). It is
  what makes a 17-64 token GEMM 5-11% slower than streaming its weights on both
  profiled GPUs; calibrate.py measures it per GPU.
* Attention query tiles: a batch that is not decode-only runs FlashAttention's
  variable-length forward kernel, which gives every sequence whole tiles of
  query rows (FlashAttention-2 blocks the queries per sequence, Dao 2023,
  arXiv 2307.08691, sec. 3.1) and, being causal, skips key blocks past the
  diagonal. Query tile j of a sequence with q new tokens over ctx cached ones
  multiplies R rows against ctx + min((j + 1) * R, q) keys, so a decode riding
  in a mixed batch costs a tile, not one row. R is the hardware entry's
  `attention_tile_rows`: FlashAttention-2's causal head_dim-128 query block is
  64 rows on sm8x (flash_fwd_launch_template.h); calibrate.py reads R off a
  bundle's compute-dominated mixed points: 66 on RTX4090, 68 on RTX PRO 6000.
  One tile runs on one SM, so a batch of few tiles is bounded below by its
  slowest tile (the last of the longest sequence) on one of `num_sms` SMs.
* Decode-only batches take the split-KV decode path instead (KV-read bound);
  there, attention over short contexts cannot fill the GPU: its compute
  efficiency is scaled by q_total / (q_total + 256) (occupancy).
* Paged attention is several kernels (KV-cache write, attention, split-KV
  reduction): a per-call floor `attention_floor_ns` beyond the kernel launch,
  measured where a profile exists (RTX4090: 9.3 us for one 16-token decode),
  plus `attention_per_seq_ns` per sequence (block-table walk and per-sequence
  work: RTX4090 0.36 us, from 1 vs 32 decodes of 16 tokens: 9.3 vs 20.6 us).

Multi-head latent attention (DeepSeek-V2/V3; DeepSeek-V2 paper, arXiv 2405.04434 sec. 2.1; vLLM's
MLA backends, vllm/v1/attention/backends/mla/common.py, whose module docstring gives both forms):
* Projections, per token: `qkv_a_proj` is vLLM's fused_qkv_a_proj, q_a_proj (d -> q_lora_rank) and
  kv_a_proj_with_mqa (d -> kv_lora_rank + qk_rope_head_dim) in one GEMM, replicated on every TP rank
  (disable_tp); `latent_norm` is q_a_layernorm + kv_a_layernorm; `q_b_proj` (q_lora_rank -> H/tp x
  (nope + rope)) is column-parallel; `rotary_emb` rotates q_pe (H/tp heads) and the one shared k_pe;
  `o_proj` (H/tp x v_head_dim -> d) is row-parallel. Without q_lora_rank the ops are
  `kv_a_proj_with_mqa` and `q_proj` (d -> H/tp x (nope + rope)).
* vLLM splits a batch into decodes (q == 1) and prefills and runs each in its own form; `kv_b_proj`
  and `attention` cost both parts and add them:
  - decode, absorbed ("data-movement friendly") form: q_nope is multiplied into the latent space by
    W_UK (H/tp bmm's of nope x kv_lora), attention is MQA over the latent cache with a query/key width
    of kv_lora_rank + qk_rope_head_dim (576) and a value width of kv_lora_rank (512) per head, and its
    output goes back through W_UV (kv_lora x v_head_dim per head). KV bytes read = (ctx + 1) x
    (kv_lora_rank + qk_rope_head_dim) x kv bytes per sequence, once for all heads. The kernel runs the
    H/tp heads of a sequence as rows of one tile against the shared latent, so its occupancy factor
    counts n_decode x H/tp query rows (GQA decode counts tokens).
  - prefill, expanded ("compute friendly") form: kv_b_proj up-projects the latent of every key the
    chunk attends to (cached context chunks and the new tokens: ctx + q rows) to H/tp heads of
    k_nope and v, then FlashAttention varlen runs MHA with a query/key width of nope + rope (192)
    and a value width of v_head_dim (128), in whole query tiles as above. Its bytes are the cached
    latent it gathers, the expanded K and V it reads, Q and O, and the new latent it writes.
  The latent cache is the same on every TP rank (vLLM keeps the whole latent per rank; heads split).
* Shared experts (DeepSeek's n_shared_experts, Qwen2-MoE's shared_expert_intermediate_size) run on
  every token, TP-sharded also under expert parallelism: `moe_ops` adds a `shared_experts` op.
* Dense-first layers (first_k_dense_replace): `layer_ops` is the MoE layer; `dense_prefix_layer_ops`
  is one of the `dense_prefix_layers` leading layers (same attention, dense MLP of intermediate_size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from frontend.compute.architecture import family_layer_ops
from frontend.compute.batch import BatchShape, OpCost
from frontend.config.hardware import HardwareSpec
from frontend.config.models import DTYPE_BYTES, ModelSpec

if TYPE_CHECKING:
    from frontend.compute.moe_routing import RoutingResult

GEMM_TILE_M = 64
ATTN_OCCUPANCY_TOKENS = 256

SMALL_M_TILE = 16


def gemm_rows(m: int) -> int:
    """Rows of M the tensor cores compute for a GEMM over m tokens (tile quantization)."""
    return SMALL_M_TILE if m <= SMALL_M_TILE else -(-m // GEMM_TILE_M) * GEMM_TILE_M


def gemm_ns(rows: int, k: int, n: int, nbytes: float, flops_per_ns: float, bytes_per_ns: float, loss: float) -> int:
    """Busy time of one GEMM (no launch): compute, or memory plus the compute it cannot hide."""
    tc = 2 * rows * k * n / flops_per_ns
    return int(max(tc, nbytes / bytes_per_ns + loss * tc))


def attention_tile_units(q: int, ctx: int, rows: int) -> int:
    """Query-row x key products the varlen kernel computes for one sequence (whole query tiles, causal).

    Tiles j = 0 .. n-1 (n = ceil(q / rows)) each hold `rows` rows; tile j sees ctx + min((j + 1) * rows, q)
    keys: sum = n * rows * ctx + rows * (rows * n * (n - 1) / 2 + q).
    """
    n = -(-q // rows)
    return n * rows * ctx + rows * (rows * n * (n - 1) // 2 + q)


@dataclass
class Roofline:
    model: ModelSpec
    hw: HardwareSpec
    dtype: str = "bf16"
    tp: int = 1
    kv_dtype: str | None = None

    def __post_init__(self) -> None:
        self.b = DTYPE_BYTES[self.dtype]
        self.kvb = DTYPE_BYTES[self.kv_dtype or self.dtype]
        self.peak = self.hw.peak_flops(self.dtype)
        eff = self.hw.efficiency
        self.flops_per_ns = self.peak * eff.gemm_flops / 1e9
        self.attn_flops_per_ns = self.peak * eff.attention_flops / 1e9
        self.bytes_per_ns = self.hw.hbm_bw_gbps * eff.mem_bw  # GB/s * 1e9 / 1e9
        self.overlap_loss = eff.gemm_overlap_loss
        self.launch = self.hw.kernel_launch_ns
        self.attn_floor = self.hw.attention_floor_ns
        self.attn_per_seq = self.hw.attention_per_seq_ns
        self.attn_rows = self.hw.attention_tile_rows
        self.num_sms = self.hw.num_sms
        m = self.model
        self.heads = max(1, m.num_heads // self.tp)
        self.kv_heads = max(1, m.num_kv_heads // self.tp)
        self.hd = m.head_dim
        self.d = m.hidden_size
        # Per-head RMSNorm of q and k (Qwen3's q_norm / k_norm) where the family's architecture file runs it.
        self.qk_norm = "qk_norm" in family_layer_ops(m.model_type)
        self.mla = m.is_mla
        self.latent = m.kv_lora_rank + m.qk_rope_head_dim  # MLA: cached width per token (0 for GQA)
        self._by_tokens: dict = {}  # token-count-only costs: layer parts, prologue, epilogue

    @property
    def dense_prefix_layers(self) -> int:
        """Leading decoder layers with a dense MLP before the MoE layers (first_k_dense_replace; 0 when none).

        A forward pass runs `dense_prefix_layer_ops` this many times, then `layer_ops` for the other
        num_layers - dense_prefix_layers layers.
        """
        return self.model.dense_prefix_layers

    def _t(self, flops: float, nbytes: float, fpn: float | None = None) -> int:
        return int(max(flops / (fpn or self.flops_per_ns), nbytes / self.bytes_per_ns)) + self.launch

    def _gemm(self, name: str, m: int, k: int, n: int) -> OpCost:
        flops = 2 * m * k * n
        nbytes = (k * n + m * k + m * n) * self.b
        return OpCost(name, gemm_ns(gemm_rows(m), k, n, nbytes, self.flops_per_ns, self.bytes_per_ns,
                                    self.overlap_loss) + self.launch, flops, int(nbytes))

    def _elementwise(self, name: str, elems: float, flops_per_elem: float, rw: float) -> OpCost:
        nbytes = elems * rw * self.b
        return OpCost(name, self._t(elems * flops_per_elem, nbytes), int(elems * flops_per_elem), int(nbytes))

    def attention(self, shape: BatchShape) -> OpCost:
        if self.mla:
            return self._mla_attention(shape)
        qs, cs = shape.q, shape.ctx
        n = len(qs)
        t = shape.num_tokens
        if qs.count(1) == n:  # decode-only batch (split-KV decode kernel): each attends over ctx + 1 tokens
            kv_tokens = sum(cs) + n
            units = float(kv_tokens)
            busy_units = units * self.heads
            fpn = self.attn_flops_per_ns * max(t / (t + ATTN_OCCUPANCY_TOKENS), 1e-3)
        else:  # varlen kernel: whole query tiles, one tile per SM at a time
            units = 0.0
            tile_units = 0
            longest = 0
            kv_tokens = 0
            for q, c in zip(qs, cs, strict=True):
                units += q * (c + (q + 1) / 2)
                tile_units += attention_tile_units(q, c, self.attn_rows)
                longest = max(longest, c + q)
                kv_tokens += c + q
            busy_units = tile_units * self.heads
            if self.num_sms:  # the slowest tile (the last of the longest sequence) alone on one SM
                busy_units = max(busy_units, self.attn_rows * longest * self.num_sms)
            fpn = self.attn_flops_per_ns
        flops = 4 * units * self.hd * self.heads
        kv_bytes = kv_tokens * 2 * self.kv_heads * self.hd * self.kvb
        qo_bytes = 2 * t * self.heads * self.hd * self.b + t * 2 * self.kv_heads * self.hd * self.kvb
        ns = self._t(4 * busy_units * self.hd, kv_bytes + qo_bytes, fpn) + self.attn_floor + self.attn_per_seq * n
        return OpCost("attention", ns, int(flops), int(kv_bytes + qo_bytes))

    def layer_ops(self, shape: BatchShape) -> list[OpCost]:
        """Ops of one layer (the MoE layer of a MoE model); all but the attention block depend only on the
        token count (memoized). The attention block is `attention`, and for MLA `kv_b_proj` before it."""
        return self._layer(shape, False)

    def dense_prefix_layer_ops(self, shape: BatchShape) -> list[OpCost]:
        """Ops of one of the `dense_prefix_layers` leading dense layers of a MoE model (DeepSeek's
        first_k_dense_replace): the same attention as layer_ops, then gate_up_proj, act_fn and down_proj
        over intermediate_size / tp. For a dense model it equals layer_ops."""
        return self._layer(shape, True)

    def _layer(self, shape: BatchShape, dense_mlp: bool) -> list[OpCost]:
        t = shape.num_tokens
        key = ("dense", t) if dense_mlp and self.model.is_moe else t
        parts = self._by_tokens.get(key)
        if parts is None:
            parts = self._layer_parts(t, dense_mlp)
            if len(self._by_tokens) < 65536:
                self._by_tokens[key] = parts
        return parts[0] + self._attention_block(shape) + parts[1]

    def _attention_block(self, shape: BatchShape) -> list[OpCost]:
        """The ops that depend on the batch's sequences, not only its token count."""
        if self.mla:
            return [self.kv_b_proj(shape), self.attention(shape)]
        return [self.attention(shape)]

    def _layer_ops_uncached(self, shape: BatchShape) -> list[OpCost]:
        pre, post = self._layer_parts(shape.num_tokens, False)
        return pre + self._attention_block(shape) + post

    def _layer_parts(self, t: int, dense_mlp: bool) -> tuple[list[OpCost], list[OpCost]]:
        """(ops before the attention block, ops after it) of a layer over t tokens."""
        m = self.model
        d = self.d
        if self.mla:
            pre = self._mla_projections(t)
            post = [self._gemm("o_proj", t, self.heads * m.v_head_dim, d)]
        else:
            pre = [
                self._elementwise("layernorm", t * d, 4, 2),
                self._gemm("qkv_proj", t, d, (self.heads + 2 * self.kv_heads) * self.hd),
                *([self._elementwise("qk_norm", t * (self.heads + self.kv_heads) * self.hd, 4, 2)]
                  if self.qk_norm else []),
                self._elementwise("rotary_emb", t * (self.heads + self.kv_heads) * self.hd, 3, 2),
            ]
            post = [self._gemm("o_proj", t, self.heads * self.hd, d)]
        post.append(self._elementwise("layernorm", t * d, 4, 2))
        if m.is_moe and not dense_mlp:
            post += self.moe_ops(t)
        else:
            inter = m.intermediate_size // self.tp
            post += [
                self._gemm("gate_up_proj", t, d, 2 * inter),
                self._elementwise("act_fn", t * inter, 5, 3),
                self._gemm("down_proj", t, inter, d),
            ]
        return pre, post

    def _mla_projections(self, t: int) -> list[OpCost]:
        """MLA ops before kv_b_proj and attention (see the module docstring)."""
        m = self.model
        d, h = self.d, self.heads
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:  # fused q_a_proj + kv_a_proj_with_mqa, replicated; q_b_proj column-parallel
            a = self._gemm("qkv_a_proj", t, d, m.q_lora_rank + self.latent)
            q = self._gemm("q_b_proj", t, m.q_lora_rank, h * qk)
        else:
            a = self._gemm("kv_a_proj_with_mqa", t, d, self.latent)
            q = self._gemm("q_proj", t, d, h * qk)
        return [
            self._elementwise("layernorm", t * d, 4, 2),
            a,
            self._elementwise("latent_norm", t * (m.q_lora_rank + m.kv_lora_rank), 4, 2),
            q,
            self._elementwise("rotary_emb", t * (h + 1) * m.qk_rope_head_dim, 3, 2),
        ]

    def kv_b_proj(self, shape: BatchShape) -> OpCost:
        """MLA's kv_b_proj (W_UK and W_UV, kv_lora_rank -> H/tp x (nope + v)) for one batch.

        Decodes (absorbed form): two head-batched GEMMs, q_nope x W_UK into the latent and the latent
        attention output x W_UV, each over the n_decode rows. Prefills (expanded form): one GEMM
        up-projecting the latent of the ctx + q keys of every prefill sequence. The weights are read by
        each part that runs (vLLM keeps W_UK / W_UV copies for the decode bmm's).
        """
        m = self.model
        h, lr, p, v = self.heads, m.kv_lora_rank, m.qk_nope_head_dim, m.v_head_dim
        n_dec = 0
        rows = 0
        for q, c in zip(shape.q, shape.ctx, strict=True):
            if q == 1:
                n_dec += 1
            else:
                rows += c + q
        ns = flops = nbytes = 0
        if n_dec:
            for k, n in ((p, lr), (lr, v)):  # q_nope @ W_UK, then o_latent @ W_UV, per head
                b = (h * k * n + n_dec * h * (k + n)) * self.b
                ns += gemm_ns(gemm_rows(n_dec), h * k, n, b, self.flops_per_ns, self.bytes_per_ns,
                              self.overlap_loss) + self.launch
                flops += 2 * n_dec * h * k * n
                nbytes += b
        if rows:
            b = (lr * h * (p + v) + rows * (lr + h * (p + v))) * self.b
            ns += gemm_ns(gemm_rows(rows), lr, h * (p + v), b, self.flops_per_ns, self.bytes_per_ns,
                          self.overlap_loss) + self.launch
            flops += 2 * rows * lr * h * (p + v)
            nbytes += b
        return OpCost("kv_b_proj", int(ns), int(flops), int(nbytes))

    def _mla_attention(self, shape: BatchShape) -> OpCost:
        """MLA attention: decodes over the latent cache (absorbed MQA), prefills expanded (MHA); summed."""
        m = self.model
        h, lat, lr = self.heads, self.latent, m.kv_lora_rank
        qk, v = m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim
        ns = 0
        flops = 0.0
        nbytes = 0.0
        dec_kv = n_dec = 0
        units = 0.0
        tile_units = 0
        longest = 0
        n_pre = t_pre = ctx_pre = kv_pre = 0
        for q, c in zip(shape.q, shape.ctx, strict=True):
            if q == 1:
                n_dec += 1
                dec_kv += c + 1
            else:
                n_pre += 1
                t_pre += q
                ctx_pre += c
                kv_pre += c + q
                units += q * (c + (q + 1) / 2)
                tile_units += attention_tile_units(q, c, self.attn_rows)
                longest = max(longest, c + q)
        if n_dec:  # QK^T over lat dims and PV over kv_lora dims, every head against the one shared latent
            rows = n_dec * h
            fpn = self.attn_flops_per_ns * max(rows / (rows + ATTN_OCCUPANCY_TOKENS), 1e-3)
            f = 2 * dec_kv * h * (lat + lr)
            b = dec_kv * lat * self.kvb + n_dec * h * (lat + lr) * self.b + n_dec * lat * self.kvb
            ns += self._t(f, b, fpn) + self.attn_floor + self.attn_per_seq * n_dec
            flops += f
            nbytes += b
        if n_pre:  # FlashAttention varlen, MHA with qk / v head widths, whole query tiles
            busy = tile_units * h
            if self.num_sms:
                busy = max(busy, self.attn_rows * longest * self.num_sms)
            f = 2 * units * h * (qk + v)
            b = (ctx_pre * lat * self.kvb + kv_pre * h * (qk + v) * self.b + t_pre * h * (qk + v) * self.b
                 + t_pre * lat * self.kvb)
            ns += self._t(2 * busy * (qk + v), b, self.attn_flops_per_ns) + self.attn_floor \
                + self.attn_per_seq * n_pre
            flops += f
            nbytes += b
        return OpCost("attention", int(ns), int(flops), int(nbytes))

    def moe_ops(self, t: int, routing: RoutingResult | None = None) -> list[OpCost]:
        """Router GEMM, then the experts tokens actually activate (uniform routing).

        With E experts, k per token and t tokens, the expected number of distinct
        experts touched is E * (1 - (1 - k/E)^t); their weights are read once,
        the FLOPs are those of t*k expert rows.

        With `routing` (expert parallelism, frontend/compute/moe_routing.py) every EP rank
        holds whole experts (vLLM's FusedMoE with EP: no TP sharding of the expert weights)
        and runs its own assignments a_r over its x_r activated experts; the layer waits for
        the slowest rank, so the "moe" op is the straggler's time. The router GEMM stays over
        the caller's t tokens. Without `routing` the result is the TP-sharded one above.

        A model with shared experts (shared_expert_intermediate_size > 0) gets a third op,
        `shared_experts`: every one of the t tokens runs them (gate/up, activation, down), TP-sharded
        in both cases (vLLM never splits them over EP ranks).
        """
        m = self.model
        shared = [self._shared_experts(t)] if m.shared_expert_intermediate_size else []
        if routing is not None:  # the slowest EP rank's grouped GEMM: x_r whole experts, a_r rows
            straggler: OpCost | None = None
            for a, x in zip(routing.assignments_per_rank, routing.experts_per_rank, strict=True):
                wb = x * 3 * self.d * m.moe_intermediate_size * self.b
                ab = a * (2 * self.d + 3 * m.moe_intermediate_size) * self.b
                ns = gemm_ns(gemm_rows(math.ceil(a)), 3 * self.d, m.moe_intermediate_size, wb + ab,
                             self.flops_per_ns, self.bytes_per_ns, self.overlap_loss) + self.launch
                if straggler is None or ns > straggler.duration_ns:
                    straggler = OpCost("moe", ns, int(2 * a * 3 * self.d * m.moe_intermediate_size), int(wb + ab))
            assert straggler is not None  # a placement has at least one rank
            return [self._gemm("moe_gate", t, self.d, m.num_experts), straggler, *shared]
        e, k = m.num_experts, max(1, m.experts_per_token)
        inter = m.moe_intermediate_size // self.tp
        d = self.d
        touched = e * (1 - (1 - k / e) ** t)
        flops = 2 * t * k * 3 * d * inter
        wbytes = touched * 3 * d * inter * self.b
        abytes = t * k * (2 * d + 3 * inter) * self.b
        return [
            self._gemm("moe_gate", t, d, e),
            OpCost("moe", gemm_ns(gemm_rows(t * k), 3 * d, inter, wbytes + abytes, self.flops_per_ns,
                                  self.bytes_per_ns, self.overlap_loss) + self.launch, int(flops), int(wbytes + abytes)),
            *shared,
        ]

    def _shared_experts(self, t: int) -> OpCost:
        """The shared experts' MLP over t tokens (gate_up GEMM, SiLU-and-mul, down GEMM), TP-sharded, as one op."""
        inter = self.model.shared_expert_intermediate_size // self.tp
        parts = (self._gemm("gate_up", t, self.d, 2 * inter), self._elementwise("act", t * inter, 5, 3),
                 self._gemm("down", t, inter, self.d))
        return OpCost("shared_experts", sum(o.duration_ns for o in parts), sum(o.flops for o in parts),
                      sum(o.bytes for o in parts))

    def prologue_ops(self, shape: BatchShape) -> list[OpCost]:
        key = ("pro", shape.num_tokens)
        hit = self._by_tokens.get(key)
        if hit is None:
            hit = self._prologue(shape)
            if len(self._by_tokens) < 16384:  # bounded: memory stays flat over long runs
                self._by_tokens[key] = hit
        return hit

    def _prologue(self, shape: BatchShape) -> list[OpCost]:
        return [OpCost("embedding", self._t(0, shape.num_tokens * self.d * self.b * 2), 0,
                       shape.num_tokens * self.d * self.b * 2)]

    def epilogue_ops(self, shape: BatchShape) -> list[OpCost]:
        key = ("epi", shape.num_tokens, shape.num_sampled)
        hit = self._by_tokens.get(key)
        if hit is None:
            hit = self._epilogue(shape)
            if len(self._by_tokens) < 16384:  # bounded: memory stays flat over long runs
                self._by_tokens[key] = hit
        return hit

    def _epilogue(self, shape: BatchShape) -> list[OpCost]:
        s = max(1, shape.num_sampled)
        v = self.model.vocab_size // self.tp
        return [
            self._elementwise("final_layernorm", shape.num_tokens * self.d, 4, 2),
            self._gemm("lm_head", s, self.d, v),
            OpCost("sampler", self._t(s * v * 10, s * v * 4 * 3), s * v * 10, s * v * 12),
        ]
