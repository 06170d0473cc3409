"""An instance whose KV cache lives on a PIM device: per step, which attention runs where, and its graphs.

Decode sequences (one new token over a cached context) attend on the PIM device (frontend/compute/pim.py);
prefill chunks attend on the accelerator (their attention is compute-bound), reading their cached context's KV
back from the PIM device over the link, and their new KV is written to the PIM device with the decode tokens'
q/k/v. With `interleave`, the step's decode sequences split into two
sub-batches of balanced PIM time (longest first onto the lighter one; prefill chunks join sub-batch A) and the
graphs interleave them (chakra_gen/pim.py). A step with fewer than two decode sequences runs as one batch.
"""

from __future__ import annotations

from collections.abc import Callable

from astra_bridge.backend import InstanceSystem
from astra_bridge.embedded.network import Dimension
from chakra_gen.graph import Graph
from chakra_gen.pim import SubBatchWork, build_pim_graphs
from frontend.compute.batch import BatchShape, OpCost
from frontend.compute.factory import ComputeModel
from frontend.compute.pim import AttentionShape, BankParallelPIM, PIMDevice, make_pim_model
from frontend.config.loader import ResolvedInstance
from frontend.config.models import DTYPE_BYTES
from frontend.config.schema import PIMPlacementConfig


class PIMOffload:
    def __init__(self, inst: ResolvedInstance, device: PIMDevice, cfg: PIMPlacementConfig, compute: ComputeModel,
                 prologue: Callable[[ComputeModel, BatchShape], list[OpCost]], num_layers: int) -> None:
        m = inst.model
        self.device = device
        self.cfg = cfg
        self.compute = compute
        self.prologue = prologue  # (compute, shape) -> the operators before the repeated layer
        self.num_layers = num_layers
        eng = inst.engine
        kv_b = DTYPE_BYTES[eng.dtype if eng.kv_cache_dtype == "auto" else eng.kv_cache_dtype]
        self.shape = AttentionShape(kv_heads=m.num_kv_heads, group=m.num_heads // m.num_kv_heads,
                                    head_dim=m.head_dim, kv_bytes=kv_b)
        self.model: BankParallelPIM = make_pim_model(cfg.model, device, self.shape, cfg.devices)
        self.act_b = inst.dtype_bytes
        self.heads = m.num_heads
        bw = cfg.link_bw_gbps if cfg.link_bw_gbps is not None else cfg.devices * device.external_bw_gbps
        lat = cfg.link_latency_ns if cfg.link_latency_ns is not None else device.t_rcd_ns + device.cl_ns
        self.link = Dimension("FullyConnected", 2, float(bw), float(lat), "direct")
        self.active_w = cfg.devices * device.active_w
        self.idle_w = cfg.devices * device.idle_w
        # the last step's PIM work, for its dynamic energy: bytes the units read, bytes over the interface, MACs
        self.read_bytes = 0
        self.io_bytes = 0
        self.macs = 0

    def system(self, base: InstanceSystem) -> InstanceSystem:
        """The instance's system with the PIM device as rank 1 on the accelerator-PIM link."""
        return InstanceSystem(name=base.name, num_npus=2, dims=(self.link,), knobs=base.knobs, comm_groups=(),
                              tiers=(), peak_tflops=base.peak_tflops)

    def _split(self, shape: BatchShape) -> list[tuple[list[int], list[int]]]:
        """Sub-batches as (decode sequence indices, prefill sequence indices)."""
        dec = [i for i, q in enumerate(shape.q) if q == 1 and shape.ctx[i] > 0]
        pre = [i for i, q in enumerate(shape.q) if not (q == 1 and shape.ctx[i] > 0)]
        if not self.cfg.interleave or len(dec) < 2:
            return [(dec, pre)]
        bins: list[list[int]] = [[], []]
        load = [0, 0]
        for i in sorted(dec, key=lambda i: (-shape.ctx[i], i)):
            k = 0 if load[0] <= load[1] else 1
            bins[k].append(i)
            load[k] += self.model.item_ns(shape.ctx[i] + 1)
        return [(sorted(bins[0]), pre), (sorted(bins[1]), [])]

    def _sub(self, shape: BatchShape, dec: list[int], pre: list[int], share: float) -> SubBatchWork:
        idx = sorted(dec + pre)
        sub = BatchShape(q=[shape.q[i] for i in idx], ctx=[shape.ctx[i] for i in idx],
                         num_sampled=round(share * len(idx)))
        ops = self.compute.layer_ops(sub)
        names = [o.name for o in ops]
        k = names.index("attention")
        gpu_attn = None
        if pre:
            ps = BatchShape(q=[shape.q[i] for i in pre], ctx=[shape.ctx[i] for i in pre], num_sampled=0)
            gpu_attn = self.compute.layer_ops(ps)[k]
        s = self.shape
        n_dec = len(dec)
        pre_tokens = sum(shape.q[i] for i in pre)
        to_pim = int(n_dec * (self.heads + 2 * s.kv_heads) * s.head_dim * self.act_b
                     + pre_tokens * 2 * s.kv_heads * s.head_dim * s.kv_bytes)
        back = int(n_dec * self.heads * s.head_dim * self.act_b)
        fetch = int(sum(shape.ctx[i] for i in pre) * 2 * s.kv_heads * s.head_dim * s.kv_bytes)
        ctxs = [shape.ctx[i] + 1 for i in dec]
        sched = self.model.schedule(ctxs, dec)
        macs = sum(2 * self.heads * c * s.head_dim for c in ctxs)
        self.read_bytes += self.num_layers * sched.kv_bytes
        self.io_bytes += self.num_layers * (to_pim + (back if n_dec else 0) + fetch)
        self.macs += self.num_layers * macs
        return SubBatchWork(pre=ops[:k], post=ops[k + 1:], gpu_attention=gpu_attn, to_pim_bytes=to_pim,
                            from_pim_bytes=back if n_dec else 0, pim_ns=sched.duration_ns, pim_ops=2 * macs,
                            kv_fetch_bytes=fetch)

    def graphs(self, shape: BatchShape) -> list[Graph]:
        share = shape.num_sampled / max(1, shape.num_seqs)
        self.read_bytes = self.io_bytes = self.macs = 0
        subs = [self._sub(shape, d, p, share) for d, p in self._split(shape)]
        c = self.compute
        return build_pim_graphs(self.num_layers, self.prologue(c, shape), c.epilogue_ops(shape), subs)

