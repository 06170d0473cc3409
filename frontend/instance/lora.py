"""LoRA adapters on an instance: HBM slots, residency, batch limits, and the batched LoRA kernels' cost.

Why a layer of its own: serving many adapters changes three things the base engine does not see (vLLM's
multi-LoRA serving, --enable-lora / --max-loras / --max-lora-rank; S-LoRA, arXiv 2311.03285; Punica,
arXiv 2310.18547):
- memory: max_loras adapter slots sized at max_lora_rank are reserved in HBM at start-up, so the KV cache
  is smaller (`slot_bytes_per_npu`, subtracted by the config loader);
- scheduling: a batch holds at most max_loras distinct adapters; a waiting request whose adapter would be
  one too many is skipped for this step, and the queue behind it goes on (vLLM v1's scheduler);
- time: an adapter not resident when its request is scheduled is copied from host memory into a slot
  (the least recently used adapter not in the batch leaves), `lora_load` in the step's prologue at
  bytes / host_bw_gbps; every layer runs the batched shrink/expand kernels (SGMV/BGMV) for each adapted
  projection, `lora` in the layer: FLOPs 2 x tokens x rank x (in + out) per projection, bytes the active
  adapters' weights plus the activations. Its time is the profile bundle's measured kernels when the bundle
  has a `lora.csv` (per module at the rank, the step's distinct adapters and its tokens, interpolated:
  frontend/compute/lora_table.py), else the roofline of those FLOPs and bytes.
Adapter sizes per NPU: for each adapted projection of a layer, rank x (in + out) x dtype bytes, with in/out
the projection's TP-sharded dimensions, over the NPU's layers.
"""

from __future__ import annotations

import bisect
import random
from collections import OrderedDict

from frontend.compute.batch import BatchShape, OpCost


def module_dims(model, tp: int) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection LoRA can adapt, per TP rank."""
    d, hd = model.hidden_size, model.head_dim
    h, kv = max(1, model.num_heads // tp), max(1, model.num_kv_heads // tp)
    inter = max(1, model.intermediate_size // tp)
    return {"qkv_proj": (d, (h + 2 * kv) * hd), "o_proj": (h * hd, d), "gate_up_proj": (d, 2 * inter),
            "down_proj": (inter, d)}


def adapter_bytes_per_layer(model, tp: int, rank: int, modules: list[str], dtype_bytes: float) -> int:
    dims = module_dims(model, tp)
    return int(sum(rank * (dims[m][0] + dims[m][1]) for m in modules) * dtype_bytes)


def slot_bytes_per_npu(model, tp: int, pp: int, cfg, dtype_bytes: float) -> int:
    """HBM reserved for the adapter slots: max_loras adapters at max_lora_rank over the NPU's layers."""
    if not cfg.adapters:
        return 0
    layers = -(-model.num_layers // pp)
    rank = cfg.max_lora_rank or cfg.rank
    return cfg.max_loras * layers * adapter_bytes_per_layer(model, tp, rank, cfg.target_modules, dtype_bytes)


def adapter_of(request_id: str, seed: int, cfg) -> int:
    """The adapter a request names when its workload names none: a seeded draw per request id (the share of
    requests with an adapter, Zipf popularity over adapters), the same whatever the arrival order."""
    rng = random.Random(f"{seed}:{request_id}:lora")
    if rng.random() >= cfg.share:
        return -1
    weights = [1.0 / (i + 1) ** cfg.popularity_zipf_s for i in range(cfg.adapters)]
    cum = list(_accumulate(weights))
    return min(cfg.adapters - 1, bisect.bisect_right(cum, rng.random() * cum[-1]))


def _lora_table(cm):
    """The measured LoRA table of the profile model under `cm` (through EP layers), or None (roofline)."""
    for _ in range(16):
        table = cm.__dict__.get("lora") if hasattr(cm, "__dict__") else None
        if table is not None:
            return table
        cm = cm.__dict__.get("inner") if hasattr(cm, "__dict__") else None
        if cm is None:
            return None
    return None


def _accumulate(xs):
    t = 0.0
    for x in xs:
        t += x
        yield t


class LoRACompute:
    """`inner`'s operators plus the step's adapter loads and per-layer LoRA kernels (module docstring)."""

    def __init__(self, inner, model, tp: int, pp: int, cfg, dtype_bytes: float) -> None:
        self.inner = inner
        self.cfg = cfg
        self.roof = getattr(inner, "roof", inner)
        dims = module_dims(model, tp)
        self.mods = [dims[m] for m in cfg.target_modules]
        self.b = dtype_bytes
        self.layer_bytes = adapter_bytes_per_layer(model, tp, cfg.rank, cfg.target_modules, dtype_bytes)
        self.adapter_bytes = self.layer_bytes * -(-model.num_layers // pp)
        self.modules = list(cfg.target_modules)
        self.table = _lora_table(inner)  # measured kernels (a profile bundle's lora.csv), else the roofline
        if self.table is not None:
            self.table.check_modules(self.modules)
        self.resident: OrderedDict[int, None] = OrderedDict()  # adapter -> (LRU order)
        self.active: int = 0  # distinct adapters in the step being costed
        self.active_set: set[int] = set()
        self.loading: int = 0  # adapters it had to load
        self.loads = 0
        self.load_bytes = 0
        # background loads (a prefetch policy's): the host link is busy until link_free_ns; an adapter copied
        # ahead of need is resident (its slot taken) from the start and usable once ready_ns[a] has passed;
        # a step that needs it earlier waits for the part still on the link (stall_bytes, in its prologue)
        self.now_ns = 0
        self.link_free_ns = 0
        self.ready_ns: dict[int, int] = {}
        self.stall_bytes = 0
        self.prefetches = 0
        self.prefetch_bytes = 0
        self.prefetch_used = 0  # prefetched adapters a step used before they were evicted
        self.stalled_bytes = 0
        # eviction hint from a policy: adapter -> when it is next needed (smaller = sooner); adapters it does not
        # name are the farthest. None: plain LRU among the adapters not in the batch (vLLM)
        self.next_use: dict[int, tuple] | None = None

    def set_now(self, now_ns: int) -> None:
        """The simulated time of the step about to be planned (the instance runtime calls this)."""
        self.now_ns = now_ns

    def _victim(self, keep: set[int]) -> int | None:
        """The resident adapter to give its slot up: not in `keep`; LRU first, or with a next-use hint the one
        needed last (not named = never), LRU among equals."""
        cands = [x for x in self.resident if x not in keep]
        if not cands:
            return None
        if self.next_use is None:
            return cands[0]
        far = (float("inf"),)
        best = cands[0]
        for x in cands[1:]:  # the first (least recently used) wins ties
            if self.next_use.get(x, far) > self.next_use.get(best, far):
                best = x
        return best

    def prefetch(self, adapter: int, due: tuple) -> bool:
        """Copy `adapter` into a slot in the background (the GPU keeps running): into a free slot, or the slot of
        the resident adapter needed last if that one is needed later than `due`; never one in the running batch
        or one still landing. False when it is resident already or no slot may be taken."""
        if adapter in self.resident:
            return False
        if len(self.resident) >= self.cfg.max_loras:
            flying = {a for a, t in self.ready_ns.items() if t > self.now_ns}
            victim = self._victim(self.active_set | flying)
            far = (float("inf"),)
            if victim is None or (self.next_use or {}).get(victim, far) <= due:
                return False
            del self.resident[victim]
            self.ready_ns.pop(victim, None)
        start = max(self.now_ns, self.link_free_ns)
        done = start + int(self.adapter_bytes / self.cfg.host_bw_gbps)
        self.link_free_ns = done
        self.resident[adapter] = None
        self.ready_ns[adapter] = done
        self.prefetches += 1
        self.prefetch_bytes += self.adapter_bytes
        return True

    def __getattr__(self, item: str):
        return getattr(self.inner, item)

    def begin_step(self, index: int, plan=None) -> None:
        begin = getattr(self.inner, "begin_step", None)
        if begin is not None:
            begin(index, plan)
        if plan is None:
            return
        active = {r.lora for r in plan.requests if r.lora is not None and r.lora >= 0}
        self.active = len(active)
        self.active_set = active
        self.loading = 0
        self.stall_bytes = 0
        for a in sorted(active):
            if a in self.resident:
                self.resident.move_to_end(a)
                ready = self.ready_ns.get(a)
                if ready is not None:
                    self.prefetch_used += 1
                    if ready > self.now_ns:  # its background copy has not landed: wait for the rest of it
                        left = min(1.0, (ready - self.now_ns) * self.cfg.host_bw_gbps / max(1, self.adapter_bytes))
                        self.stall_bytes += int(left * self.adapter_bytes)
                    del self.ready_ns[a]
                continue
            while len(self.resident) >= self.cfg.max_loras:
                victim = self._victim(active)
                if victim is None:
                    break
                del self.resident[victim]
                self.ready_ns.pop(victim, None)
            self.resident[a] = None
            self.loading += 1
        self.loads += self.loading
        self.load_bytes += self.loading * self.adapter_bytes
        self.stalled_bytes += self.stall_bytes
        if self.loading and self.prefetches:  # a synchronous load occupies the host link too
            self.link_free_ns = max(self.link_free_ns, self.now_ns) + int(
                self.loading * self.adapter_bytes / self.cfg.host_bw_gbps)

    def prologue_ops(self, shape: BatchShape) -> list[OpCost]:
        ops = self.inner.prologue_ops(shape)
        if not self.loading and not self.stall_bytes:
            return ops
        nbytes = self.loading * self.adapter_bytes + self.stall_bytes
        return ops + [OpCost("lora_load", int(nbytes / self.cfg.host_bw_gbps), 0, nbytes)]

    def layer_ops(self, shape: BatchShape, **kw) -> list[OpCost]:
        ops = self.inner.layer_ops(shape, **kw)
        if not self.active:
            return ops
        t, r = shape.num_tokens, self.cfg.rank
        flops = sum(2 * t * r * (i + o) for i, o in self.mods)
        nbytes = self.active * self.layer_bytes + sum(t * (i + o) for i, o in self.mods) * self.b
        if self.table is not None:
            ns = int(sum(self.table.time_ns(m, r, self.active, t) for m in self.modules))
        else:
            launch = getattr(self.roof, "launch", 0)
            ns = int(max(flops / self.roof.flops_per_ns, nbytes / self.roof.bytes_per_ns)) + 2 * len(self.mods) * launch
        return ops + [OpCost("lora", ns, int(flops), int(nbytes))]

    def epilogue_ops(self, shape: BatchShape) -> list[OpCost]:
        return self.inner.epilogue_ops(shape)
