"""One serving instance at run time: scheduler + KV + compute model + trace builder + backend.

Decode run-ahead, timing side: a step of a scheduler's decode run (plan.run_ahead) differs from the
run's previous steps only in its context lengths. When the compute model prices every operator but
attention exactly as at a base step that the backend timed as a compute/collective chain, and the backend
declares such chains `runahead_safe` (their time is the sum of the compute nodes' durations, a 0 ns node
counting as 1 ns, plus collective times that depend only on the collective sizes), the step's result is
the base's with the attention delta over all layers added: no graphs are built and the backend is not
called. The graphs are still there for anyone who reads StepOutcome.graphs (built on first access).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from astra_bridge.backend import Backend, InstanceSystem
from astra_bridge.embedded.network import Dimension, SystemKnobs
from astra_bridge.result import IterationResult
from chakra_gen.builder import BuildSpec, MemTransfer, MicroBatchCost, build_graphs
from chakra_gen.graph import COMP, ChainGraph, Graph
from chakra_gen.pim import pim_busy_ns
from frontend.compute.batch import BatchShape
from frontend.compute.factory import ComputeModel
from frontend.config.loader import ResolvedInstance
from frontend.config.schema import SystemConfig
from frontend.instance.kv import BlockPool
from frontend.instance.kv_tiers import TierManager
from frontend.instance.plan import IterationPlan
from frontend.instance.scheduler import Scheduler
from frontend.metrics.power import InstancePower


def instance_system(inst: ResolvedInstance, sys_cfg: SystemConfig, spec: BuildSpec, tiers=()) -> InstanceSystem:
    dims = tuple(Dimension(d.topology, d.npus, d.bw_gbps, d.latency_ns, d.algorithm) for d in inst.dims)
    knobs = SystemKnobs.from_config(sys_cfg)
    return InstanceSystem(name=inst.name, num_npus=inst.num_npus, dims=dims, knobs=knobs,
                          comm_groups=tuple(sorted(spec.comm_groups().items())), tiers=tuple(tiers),
                          peak_tflops=inst.hardware.peak_tflops.get(inst.engine.dtype, 0.0))


def tp_involved_dims(inst: ResolvedInstance) -> tuple[bool, ...] | None:
    """Dimensions the TP group spans: the inner dims whose NPU product is tp."""
    if not inst.dims or inst.pp == 1:
        return None
    inv = []
    prod = 1
    for d in inst.dims:
        inv.append(prod < inst.tp)
        if prod < inst.tp:
            prod *= d.npus
    if prod != inst.tp:
        raise ValueError(f"{inst.name}: tp={inst.tp} is not a product of the inner network dimensions")
    return tuple(inv)


def compute_busy_ns(graph: Graph) -> int:
    """Time one rank's compute nodes take back to back (a 0 ns node counts as 1 ns in both backends)."""
    return sum(max(1, d) for t, d in zip(graph.types, graph.durations_ns, strict=True) if t == COMP)


def repeated_layers(model) -> int:
    """Layers the chain repeats: all of them, or the MoE layers of a model with leading dense layers (those
    run once each, in the prologue: see prologue_ops)."""
    return model.num_layers - model.dense_prefix_layers


def prologue_ops(compute, shape: BatchShape) -> list:
    """The operators before the repeated layer: the embedding and, for a MoE model with leading dense
    layers (DeepSeek's first_k_dense_replace), those layers' operators, layer after layer."""
    pro = compute.prologue_ops(shape)
    k = getattr(compute, "dense_prefix_layers", 0)
    return pro + k * compute.dense_prefix_layer_ops(shape) if k else pro


class StepOutcome:
    """One planned and timed step. `tensor_bytes` is what rank 0's operators read and write (its graph's
    tensor bytes), `num_ranks` the number of per-NPU graphs; `graphs` are built on first access when the
    step was timed in closed form."""

    __slots__ = ("plan", "result", "duration_ns", "_graphs", "_build", "tensor_bytes", "num_ranks", "pim_busy_ns",
                 "npu_compute_ns", "pim_work")

    def __init__(self, plan: IterationPlan, result: IterationResult, duration_ns: int, graphs: list[Graph] | None,
                 tensor_bytes: int | None = None, num_ranks: int = 0,
                 build: Callable[[IterationPlan], list[Graph]] | None = None) -> None:
        self.plan = plan
        self.result = result
        self.duration_ns = duration_ns
        self._graphs = graphs
        self._build = build
        if tensor_bytes is None:
            assert graphs is not None
            tensor_bytes = graphs[0].tensor_bytes_total()
        self.tensor_bytes = tensor_bytes
        self.num_ranks = num_ranks or (len(graphs) if graphs is not None else 1)
        self.pim_busy_ns = 0  # placement.pim: time the PIM device attended (its attention nodes)
        self.npu_compute_ns = -1  # placement.pim: the accelerator rank's compute time (-1: result.compute_ns)
        self.pim_work = (0, 0, 0)  # placement.pim: (bytes its units read, bytes over its interface, MACs)

    @property
    def graphs(self) -> list[Graph]:
        if self._graphs is None:
            assert self._build is not None
            self._graphs = self._build(self.plan)
        return self._graphs


@dataclass(slots=True)
class TimingBase:
    """A decode step timed by the backend as a compute/collective chain, for closed-form steps after it."""

    cost: MicroBatchCost
    attention: int  # index of the attention op in cost.layer
    result: IterationResult
    tensor_bytes: int
    num_ranks: int
    num_layers: int
    draft_ns: int = 0  # the speculative drafter's operator in this step (the same in its closed-form steps)


class InstanceRuntime:
    def __init__(self, inst: ResolvedInstance, compute: ComputeModel, backend: Backend, sys_cfg: SystemConfig,
                 priority=None, tiers=None, kv_cfg=None) -> None:
        self.inst = inst
        self.name = inst.name
        self.compute = compute
        self.backend = backend
        eng = inst.engine
        self.pool = BlockPool(inst.num_gpu_blocks, eng.block_size, eng.enable_prefix_caching)
        max_len = eng.max_model_len or inst.model.max_position_embeddings
        self.scheduler = Scheduler(inst.name, eng, self.pool, max_len, priority)
        self.spec = BuildSpec(num_layers=repeated_layers(inst.model), tp=inst.tp, pp=inst.pp,
                              hidden_size=inst.model.hidden_size, act_dtype_bytes=inst.dtype_bytes,
                              tp_involved_dims=tp_involved_dims(inst))
        self.lower_tiers = list(tiers or [])
        self.tier_manager = None
        timing = ()
        if self.lower_tiers:
            self.tier_manager = TierManager(self.lower_tiers, kv_cfg.offload if kv_cfg else "none", inst.model.name,
                                            inst.kv_block_bytes * inst.num_npus, self.pool)
            self.scheduler.tiers = self.tier_manager
            self.scheduler.swap = bool(kv_cfg and kv_cfg.preemption == "swap")
            timing = tuple(t.timing_model(inst.num_npus) for t in self.lower_tiers)
        self.layerwise = kv_cfg.layerwise_load if kv_cfg else True
        self.layers_per_stage = len(self.spec.stage_layers(0))
        # weights in a lower tier (placement): every iteration streams each layer's share, ahead of its attention
        self.weight_loads = [MemTransfer(inst.weights_tier, inst.offloaded_weight_bytes_per_npu
                                         // max(1, self.layers_per_stage))] if inst.offloaded_weight_bytes_per_npu else []
        # whole layers' weights in a lower tier (placement.weights_layers): streamed ahead of those layers only
        wt: dict[str, set[int]] = {}
        for li, t in inst.weight_layer_tiers.items():
            wt.setdefault(t, set()).add(li)
        self.weight_loads += [MemTransfer(t, inst.weight_layer_bytes, frozenset(ls)) for t, ls in sorted(wt.items())]
        # per-layer KV placement: (tier, its layers) and the KV bytes of one token of one layer per NPU
        by_tier: dict[str, set[int]] = {}
        for li, t in inst.kv_layer_tiers.items():
            by_tier.setdefault(t, set()).add(li)
        self.kv_layers = [(t, frozenset(ls)) for t, ls in sorted(by_tier.items())]
        self.kv_token_layer_bytes = inst.kv_block_bytes // max(1, eng.block_size * self.layers_per_stage)
        self.system = instance_system(inst, sys_cfg, self.spec, timing)
        self.pim = None  # placement.pim: decode attention on a PIM device (rank 1 of the instance's system)
        if inst.pim is not None:
            from frontend.instance.pim_offload import PIMOffload

            self.pim = PIMOffload(inst, inst.pim[0], inst.pim[1], compute, prologue_ops, self.spec.num_layers)
            self.system = self.pim.system(self.system)
        self.power = InstancePower(inst.hardware, inst.num_npus)
        if inst.hardware.wake_latency_applied and self.power.has_states:
            self.step = self._step_waking  # type: ignore[method-assign]
        if self.pim is not None:
            self.power.pim_active_w = self.pim.active_w
            self.power.pim_idle_w = self.pim.idle_w
            d = self.pim.device
            self.power.pim_pj = (d.bank_read_pj_per_bit, d.interface_pj_per_bit, d.mac_pj)
        self.pins: dict = {}  # program id -> Pin held by a retention policy
        self.evict_first: list[int] = []  # freed blocks a policy wants evicted before the rest
        self.queue_delay_ns = 0.0  # moving average of admission delay (observed, for policies)
        self._prefill_est: dict[int, int] = {}
        self.scheduler.after_free = self._apply_evict_first
        self.busy = False
        self.overhead_ns = eng.scheduler_overhead_ns
        self.iterations = 0
        self.run_ahead = False  # time decode-run steps in closed form (set by the engine, see module docstring)
        self.closed_form_steps = 0
        self._base: TimingBase | None = None
        self._begin_step = getattr(compute, "begin_step", None)  # step-keyed compute (expert routing samples)
        # speculative decoding: the drafter's operator, summed over steps (the draft overhead share)
        self._draft_op = getattr(compute, "draft_op", None)
        self.draft_ns = 0
        self._set_now = getattr(compute, "set_now", None)  # time-aware compute (LoRA background loads)
        self.unit = None  # the cluster unit that steps this instance (frontend/cluster.py), set by the engine

    @property
    def timing_system(self) -> InstanceSystem:
        """The system this instance's steps are timed on: a lockstep group's (all its ranks) or its own."""
        return getattr(self.unit, "system", None) or self.system

    def _apply_evict_first(self) -> None:
        fq = self.pool.free_queue
        for b in reversed(self.evict_first):
            fq.move_to_front(b)
        self.evict_first.clear()

    def estimate_prefill_ns(self, tokens: int) -> int:
        """Compute time to prefill `tokens` alone in chunks of max_num_batched_tokens (for policies)."""
        budget = self.inst.engine.max_num_batched_tokens
        key = -(-tokens // 256) * 256
        if key not in self._prefill_est:
            total = 0
            done = 0
            while done < key:
                q = min(budget, key - done)
                shape = BatchShape(q=[q], ctx=[done], num_sampled=1)
                c = self.costs(shape)
                total += sum(o.duration_ns for o in c.prologue + c.epilogue) + \
                    self.spec.num_layers * sum(o.duration_ns for o in c.layer)
                done += q
            self._prefill_est[key] = total
        return self._prefill_est[key]

    def shape_of(self, plan: IterationPlan) -> BatchShape:
        return BatchShape(q=plan.num_new_tokens, ctx=plan.contexts, num_sampled=plan.num_sampled)

    def costs(self, shape: BatchShape) -> MicroBatchCost:
        c = self.compute
        return MicroBatchCost(prologue_ops(c, shape), c.layer_ops(shape), c.epilogue_ops(shape), shape.num_tokens)

    def spec_for(self, plan: IterationPlan) -> BuildSpec:
        """The build spec with this iteration's transfers (per NPU, per layer): KV moves, and the weights a
        placement keeps in a lower tier, streamed layer by layer every iteration."""
        if not plan.kv_moves and not self.weight_loads and not self.kv_layers:
            return self.spec
        per_block_layer = self.inst.kv_block_bytes // max(1, self.layers_per_stage)
        loads: dict[str, int] = {}
        stores: dict[str, int] = {}
        for m in plan.kv_moves:
            d = loads if m.direction == "load" else stores
            d[m.tier] = d.get(m.tier, 0) + m.blocks
        return BuildSpec(num_layers=self.spec.num_layers, tp=self.spec.tp, pp=self.spec.pp,
                         hidden_size=self.spec.hidden_size, act_dtype_bytes=self.spec.act_dtype_bytes,
                         tp_involved_dims=self.spec.tp_involved_dims,
                         loads=self.weight_loads + [MemTransfer(t, n * per_block_layer) for t, n in sorted(loads.items())]
                         + self._kv_layer_transfers(plan, True),
                         stores=[MemTransfer(t, n * per_block_layer) for t, n in sorted(stores.items())]
                         + self._kv_layer_transfers(plan, False))

    def _kv_layer_transfers(self, plan: IterationPlan, load: bool) -> list[MemTransfer]:
        """placement.kv_layers: per placed layer, the cached contexts' KV loaded ahead of its attention (load) or
        the step's new tokens' KV written back (store), per NPU."""
        if not self.kv_layers:
            return []
        tokens = sum(plan.contexts) if load else sum(plan.num_new_tokens)
        nbytes = tokens * self.kv_token_layer_bytes
        if not nbytes:
            return []
        return [MemTransfer(t, nbytes, layers) for t, layers in self.kv_layers]

    def graphs_for(self, plan: IterationPlan, spec: BuildSpec | None = None) -> list[Graph]:
        shape = self.shape_of(plan)
        if self.pim is not None:
            return self.pim.graphs(shape)
        spec = spec or self.spec_for(plan)
        mbs = [self.costs(s) for s in shape.split(spec.pp)] if spec.pp > 1 else [self.costs(shape)]
        return build_graphs(spec, mbs)

    def receive(self, req, now_ns: int) -> None:
        """A routed request reaches this instance's engine core (see `Scheduler.receive`)."""
        self.scheduler.receive(req, now_ns, self.busy)

    def plan_step(self, now_ns: int) -> IterationPlan | None:
        """The scheduler's next step (None: nothing to run), counted; `step` times it."""
        self.scheduler.now_ns = now_ns
        plan = self.scheduler.schedule()
        if self.scheduler.take_incoming(now_ns) and plan is None:
            plan = self.scheduler.schedule()  # nothing was planned ahead: the engine core idles, then takes them
        if plan is None:
            return None
        self.iterations += 1
        if self._set_now is not None:
            self._set_now(now_ns)
        if self._begin_step is not None:
            self._begin_step(self.iterations, plan)
        return plan

    def _step_waking(self, now_ns: int = 0) -> StepOutcome | None:
        """step, lengthened by the wake-up latency when the GPUs come out of deep idle (wake_latency_applied)."""
        wake = self.power.wake_delay_ns(now_ns)
        out = InstanceRuntime.step(self, now_ns)
        if out is not None and wake:
            out.duration_ns += wake
        return out

    def step(self, now_ns: int = 0) -> StepOutcome | None:
        plan = self.plan_step(now_ns)
        if plan is None:
            return None
        if plan.run_ahead and self._base is not None:
            out = self._closed_form(plan, self._base)
            if out is not None:
                self.closed_form_steps += 1
                self.draft_ns += self._base.draft_ns
                return out
        if self.pim is not None:
            graphs = self.pim.graphs(self.shape_of(plan))
            result = self.backend.run(self.system, graphs, start_ns=now_ns)
            out = StepOutcome(plan, result, max(1, result.duration_ns) + self.overhead_ns, graphs, num_ranks=1)
            out.pim_busy_ns = pim_busy_ns(graphs[1])
            out.pim_work = (self.pim.read_bytes, self.pim.io_bytes, self.pim.macs)
            out.npu_compute_ns = compute_busy_ns(graphs[0])
            return out
        spec = self.spec_for(plan)
        shape = self.shape_of(plan)
        mbs = [self.costs(s) for s in shape.split(spec.pp)] if spec.pp > 1 else [self.costs(shape)]
        graphs = build_graphs(spec, mbs)
        result = self.backend.run(self.system, graphs, start_ns=now_ns)
        out = StepOutcome(plan, result, max(1, result.duration_ns) + self.overhead_ns, graphs)
        draft = 0
        if self._draft_op is not None:
            draft = sum(o.duration_ns for mb in mbs for o in mb.epilogue if o.name == self._draft_op)
            self.draft_ns += draft
        self._base = self._timing_base(plan, spec, mbs[0], graphs, out, draft) if self.run_ahead else None
        return out

    def _timing_base(self, plan: IterationPlan, spec: BuildSpec, cost: MicroBatchCost, graphs: list[Graph],
                     out: StepOutcome, draft_ns: int = 0) -> TimingBase | None:
        """This step as the base of closed-form steps, when it is a decode step the backend timed as a plain
        compute/collective chain (one stage, no KV traffic, nothing but compute and collectives in the result)."""
        r = out.result
        if not plan.steady_decode or spec.pp != 1 or plan.kv_moves or not isinstance(graphs[0], ChainGraph) \
                or r.cached or r.mem_ns or r.exposed_mem_ns or r.mem_bytes_by_tier \
                or r.duration_ns != r.compute_ns + r.comm_ns:
            return None
        names = [op.name for op in cost.layer]
        if names.count("attention") != 1:
            return None
        return TimingBase(cost, names.index("attention"), r, out.tensor_bytes, out.num_ranks, spec.num_layers,
                          draft_ns)

    def _closed_form(self, plan: IterationPlan, base: TimingBase) -> StepOutcome | None:
        """The step's outcome from the base step's, or None when an operator other than attention changed."""
        if plan.kv_moves:
            return None
        shape = BatchShape(q=plan.num_new_tokens, ctx=plan.contexts, num_sampled=plan.num_sampled)
        c = self.compute
        b = base.cost
        k = base.attention
        layer0 = b.layer
        # the same operator lists as costs(shape) would hold; list equality compares element identity first,
        # so the compute model's memoized operators cost nothing here
        if shape.num_tokens != b.num_tokens or c.prologue_ops(shape) != b.prologue:
            return None
        layer = c.layer_ops(shape)
        if len(layer) != len(layer0) or layer[:k] != layer0[:k] or layer[k + 1:] != layer0[k + 1:] \
                or c.epilogue_ops(shape) != b.epilogue:
            return None
        a, a0 = layer[k], layer0[k]
        if a.name != "attention":
            return None
        delta = base.num_layers * ((a.duration_ns or 1) - (a0.duration_ns or 1))
        r0 = base.result
        dur = r0.duration_ns + delta
        result = IterationResult(duration_ns=dur, per_rank_finish_ns=[dur] * base.num_ranks,
                                 compute_ns=r0.compute_ns + delta, comm_ns=r0.comm_ns, mem_ns=0,
                                 exposed_comm_ns=r0.exposed_comm_ns, exposed_mem_ns=0, comm_bytes=r0.comm_bytes,
                                 mem_bytes_by_tier={})
        return StepOutcome(plan, result, max(1, dur) + self.overhead_ns, None,
                           base.tensor_bytes + base.num_layers * (a.bytes - a0.bytes), base.num_ranks,
                           self.graphs_for)

