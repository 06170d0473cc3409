"""One serving instance at run time: scheduler + KV + compute model + trace builder + backend."""

from __future__ import annotations

from dataclasses import dataclass

from astra_bridge.backend import Backend, InstanceSystem
from astra_bridge.embedded.network import Dimension, SystemKnobs
from astra_bridge.result import IterationResult
from chakra_gen.builder import BuildSpec, MemTransfer, MicroBatchCost, build_graphs
from chakra_gen.graph import Graph
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


@dataclass
class StepOutcome:
    plan: IterationPlan
    result: IterationResult
    duration_ns: int
    graphs: list[Graph]


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
        self.spec = BuildSpec(num_layers=inst.model.num_layers, tp=inst.tp, pp=inst.pp,
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
        self.system = instance_system(inst, sys_cfg, self.spec, timing)
        self.power = InstancePower(inst.hardware, inst.num_npus)
        self.pins: dict = {}  # program id -> Pin held by a retention policy
        self.evict_first: list[int] = []  # freed blocks a policy wants evicted before the rest
        self.queue_delay_ns = 0.0  # moving average of admission delay (observed, for policies)
        self._prefill_est: dict[int, int] = {}
        self.scheduler.after_free = self._apply_evict_first
        self.busy = False
        self.overhead_ns = eng.scheduler_overhead_ns
        self.iterations = 0

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
                    self.inst.model.num_layers * sum(o.duration_ns for o in c.layer)
                done += q
            self._prefill_est[key] = total
        return self._prefill_est[key]

    def shape_of(self, plan: IterationPlan) -> BatchShape:
        return BatchShape(q=plan.num_new_tokens, ctx=plan.contexts, num_sampled=plan.num_sampled)

    def costs(self, shape: BatchShape) -> MicroBatchCost:
        c = self.compute
        return MicroBatchCost(c.prologue_ops(shape), c.layer_ops(shape), c.epilogue_ops(shape), shape.num_tokens)

    def spec_for(self, plan: IterationPlan) -> BuildSpec:
        """The build spec with this iteration's KV transfers (per NPU, per layer)."""
        if not plan.kv_moves:
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
                         loads=[MemTransfer(t, n * per_block_layer) for t, n in sorted(loads.items())],
                         stores=[MemTransfer(t, n * per_block_layer) for t, n in sorted(stores.items())])

    def graphs_for(self, plan: IterationPlan, spec: BuildSpec | None = None) -> list[Graph]:
        shape = self.shape_of(plan)
        spec = spec or self.spec_for(plan)
        mbs = [self.costs(s) for s in shape.split(spec.pp)] if spec.pp > 1 else [self.costs(shape)]
        return build_graphs(spec, mbs)

    def receive(self, req, now_ns: int) -> None:
        """A routed request reaches this instance's engine core (see `Scheduler.receive`)."""
        self.scheduler.receive(req, now_ns, self.busy)

    def step(self, now_ns: int = 0) -> StepOutcome | None:
        plan = self.scheduler.schedule()
        if self.scheduler.take_incoming(now_ns) and plan is None:
            plan = self.scheduler.schedule()  # nothing was planned ahead: the engine core idles, then takes them
        if plan is None:
            return None
        graphs = self.graphs_for(plan)
        result = self.backend.run(self.system, graphs, start_ns=now_ns)
        self.iterations += 1
        return StepOutcome(plan, result, max(1, result.duration_ns) + self.overhead_ns, graphs)
