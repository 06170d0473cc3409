"""Write a profile bundle: <out>/<dtype>/meta.yaml and <out>/<dtype>/tp<N>/{dense,per_sequence,attention}.csv,
plus tp<N>/moe.csv (tokens, activated_experts, time_us) for a MoE model and, when asked (--lora-ranks),
tp<N>/lora.csv (module, rank, adapters, tokens, time_us) of the batched LoRA kernels.

The operators in the tables are those the architecture file of the model's family runs
(`frontend/profiler/layer.py`); meta.yaml records that family as `architecture`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from frontend.config.models import ModelSpec

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def doubling(lo: int, hi: int) -> list[int]:
    out = []
    x = lo
    while x <= hi:
        out.append(x)
        x *= 2
    return out


def _timer(device: str, iters: int, warmup: int) -> Callable[[Callable[[], object]], float]:
    import torch

    def measure(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(iters):
            if device == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                samples.append(a.elapsed_time(b) * 1000.0)  # ms -> us
            else:
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(samples)

    return measure


def moe_grid(tokens: list[int], k: int, experts: int) -> list[tuple[int, int]]:
    """(tokens, activated_experts) points of moe.csv: activated experts doubling from k up to E (E itself
    included), only those `tokens` tokens x top-k can activate (k <= activated <= min(E, tokens * k))."""
    aes = sorted(set(doubling(k, experts) + [experts]))
    return [(t, a) for t in tokens for a in aes if a <= min(experts, t * k)]


def profile(model: ModelSpec, device: str, out: Path, dtype: str = "bf16", tp: int = 1, max_tokens: int = 2048,
            max_seqs: int = 256, max_kv: int = 16384, iters: int = 3, warmup: int = 1,
            hardware: str = "unknown", progress: Callable[[str], None] | None = None,
            lora_ranks: list[int] | None = None, lora_adapters: list[int] | None = None) -> Path:
    """Write the bundle; with `lora_ranks`, also lora.csv (frontend/profiler/lora.py) at those ranks, the
    `lora_adapters` distinct-adapter counts (default 1, 4, 16) and tokens doubling from 1 to max_tokens."""
    try:
        import torch
    except ImportError as e:  # optional extra
        raise RuntimeError("the profiler needs PyTorch: pip install -e '.[profile]'") from e
    from frontend.profiler.layer import Layer

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is visible")
    tdt = getattr(torch, TORCH_DTYPES[dtype])
    layer = Layer(model, device, tdt, tp)
    measure = _timer(device, iters, warmup)
    tdir = Path(out) / dtype / f"tp{tp}"
    tdir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda s: None)
    def grid(dense_until: int, top: int) -> list[int]:
        """Every point up to dense_until, then doubling, then the top itself."""
        return sorted(set(list(range(1, min(dense_until, top) + 1)) + doubling(dense_until, top) + [top]))

    def write_1d(name: str, key: str, points: list[int], ops: Callable[[int], dict]) -> None:
        """One 1-D table (dense by tokens, per_sequence by sequences): layer, <key>, time_us."""
        with (tdir / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer", key, "time_us"])
            for x in points:
                say(f"{name} {key}={x}")
                for op, fn in ops(x).items():
                    w.writerow([op, x, round(measure(fn), 3)])

    with torch.inference_mode():
        write_1d("dense", "tokens", grid(16, max_tokens), layer.dense_ops)
        write_1d("per_sequence", "sequences", grid(8, max_seqs), layer.per_sequence_ops)
        chunks = [0] + doubling(16, max_tokens)
        ndec = [0] + doubling(1, max_seqs)
        kvs = [0] + doubling(16, max_kv)
        with (tdir / "attention.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us"])
            for pc in chunks:
                for kp in (kvs if pc else [0]):
                    if pc and kp + pc > max_kv:
                        continue
                    for nd in ndec:
                        if pc + nd == 0 or pc + nd > max_tokens:
                            continue
                        for kd in (kvs[1:] if nd else [0]):
                            say(f"attention pc={pc} kp={kp} nd={nd} kd={kd}")
                            w.writerow([pc, kp, nd, kd, round(measure(layer.attention_op(pc, kp, nd, kd)), 3)])
        moe_meta = None
        if layer.ops["moe"]:
            moe_tokens = sorted(set(doubling(1, max_tokens) + [max_tokens]))
            points = moe_grid(moe_tokens, layer.k, layer.E)
            with (tdir / "moe.csv").open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["tokens", "activated_experts", "time_us"])
                for t, a in points:
                    say(f"moe tokens={t} activated_experts={a}")
                    w.writerow([t, a, round(measure(layer.moe_op(t, a)), 3)])
            moe_meta = {
                "operator": "moe: the whole sparse block (router gate, softmax, top-k, expert GEMMs, combine"
                            + (", shared expert" if layer.shared_inter else "") + ")",
                "experts": layer.E, "experts_per_token": layer.k,
                "expert_intermediate_per_rank": layer.moe_inter,
                "shared_expert_intermediate_per_rank": layer.shared_inter,
                "tokens": moe_tokens,
                "activated_experts": sorted({a for _, a in points}),
                "routing": "forced: the router runs, then the tokens*k assignments go round-robin to experts "
                           "0..activated-1 (assignment t*k+c -> expert (t*k+c) mod activated; a token's k "
                           "experts are distinct, loads balanced); weights are the router probabilities at "
                           "those experts, renormalised",
                "experts_kernel": "per-expert loop of torch GEMMs (gate/up fused 2*I, SiLU-and-mul, down), "
                                  "index_add combine; not vLLM's fused MoE kernel",
                "tp_sharding": "each expert's intermediate split by TP (no expert parallelism); router replicated",
            }
        lora_meta = None
        if lora_ranks:
            from frontend.profiler.lora import write_lora_table

            lora_tokens = sorted(set(doubling(1, max_tokens) + [max_tokens]))
            lora_meta = write_lora_table(tdir, model, tp, device, tdt, measure, sorted(set(lora_ranks)),
                                         sorted(set(lora_adapters or [1, 4, 16])), lora_tokens, say)
    meta = {
        "profiler": "astraserve",
        "torch_version": str(torch.__version__),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "hardware": hardware,
        "profiled_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "architecture": layer.family,
        "model": model.name,
        "variant": dtype,
        "tp_degrees": [tp],
        "method": f"random weights, one decoder layer, median of {iters} runs after {warmup} warm-up "
                  f"({'CUDA events' if device == 'cuda' else 'wall-clock timers'})",
        "attention_grid": {"chunks": chunks, "n_decode": ndec, "kv": kvs},
        "engine_effective": {"max_num_batched_tokens": max_tokens, "max_num_seqs": max_seqs},
        "skew_fit": {"enabled": False},
    }
    if moe_meta is not None:
        meta["moe"] = moe_meta
    if lora_meta is not None:
        meta["lora"] = lora_meta
    (Path(out) / dtype / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return Path(out)
