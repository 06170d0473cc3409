"""The cluster layer: what steps together. The engine steps units, not instances.

Why: an instance is one engine core (scheduler, KV, compute), but what advances simulated time is
whatever the hardware runs as one step. A plain instance is its own unit (`SoloUnit`). The members of
a data-parallel group of a MoE model are one unit (`LockstepGroup`): their MoE layers exchange tokens
every layer, so every member runs every step, and a step ends for all of them at once (vLLM's DP
"waves": while any member has work, all step; an idle member runs a dummy batch, vLLM
`execute_dummy_batch`). The engine loop stays the same for both: a unit plans and times a step and
returns one outcome per member that ran.

A lockstep step, per layer of the group (ranks d * tp + t, TP innermost on the network):
  member d: norms, projections at the padded token count, attention over its own batch, TP all-reduce;
  all ranks: all-gather of hidden states + router logits over the DP dimensions (the EP dispatch),
  each rank's experts (the slowest EP rank's time, frontend/compute/expert_parallel.py),
  reduce-scatter back (the combine), TP all-reduce.
Every layer ends in collectives over the whole group, so the group advances at its slowest member's
pace each layer: the group runs one compute/collective chain whose attention is the slowest member's
and whose other operators are at the group's token count. With CUDA graphs (vLLM's default, not
`enforce_eager`) every member pads its batch to the group's largest token count (vLLM's DP padding), so
those operators are the same on every member; under `enforce_eager` each operator costs its slowest
member's (an upper bound of the per-layer maximum). The straggler semantics is a barrier at each
collective: a collective starts when its last member issues it, as NCCL's does.

Dense models with dp > 1 have no such tie: their members are independent engines (SoloUnits).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from astra_bridge.backend import Backend, InstanceSystem
from astra_bridge.embedded.network import Dimension, SystemKnobs
from chakra_gen.builder import BuildSpec, MicroBatchCost, build_graphs
from frontend.compute.batch import BatchShape, OpCost
from frontend.config.schema import SystemConfig
from frontend.instance.plan import IterationPlan
from frontend.instance.runtime import InstanceRuntime, StepOutcome, prologue_ops, repeated_layers


class SoloUnit:
    """One instance stepping on its own."""

    __slots__ = ("name", "inst", "members", "busy")

    def __init__(self, inst: InstanceRuntime) -> None:
        self.name = inst.name
        self.inst = inst
        self.members = (inst,)
        self.busy = False

    def step(self, now_ns: int) -> list[tuple[InstanceRuntime, StepOutcome]] | None:
        out = self.inst.step(now_ns)
        return None if out is None else [(self.inst, out)]


@dataclass
class GroupStats:
    steps: int = 0
    dummy_member_steps: int = 0  # member-steps run as a 1-token dummy batch
    padded_tokens: int = 0  # tokens added by padding to the group's largest batch, over all members and steps
    imbalance_sum: float = 0.0  # straggler EP rank's assignments / mean, summed over steps
    imbalance_max: float = 1.0

    def as_dict(self) -> dict:
        return {"steps": self.steps, "dummy_member_steps": self.dummy_member_steps, "padded_tokens": self.padded_tokens,
                "mean_straggler_imbalance": round(self.imbalance_sum / self.steps, 6) if self.steps else 1.0,
                "max_straggler_imbalance": round(self.imbalance_max, 6)}


class LockstepGroup:
    """The members of one DP group of a MoE model, stepping together (see the module docstring)."""

    def __init__(self, name: str, members: list[InstanceRuntime], backend: Backend, sys_cfg: SystemConfig,
                 moe_dispatch: str = "allgather_reducescatter") -> None:
        self.name = name
        self.members = tuple(sorted(members, key=lambda m: m.inst.dp_rank))
        self.busy = False
        self.backend = backend
        ri = self.members[0].inst
        self.dp = len(self.members)
        self.tp = ri.tp
        self.capture_sizes = [] if ri.engine.enforce_eager else cudagraph_capture_sizes(ri.engine.max_num_seqs)
        self.overhead_ns = ri.engine.scheduler_overhead_ns
        self.stats = GroupStats()
        dims = ri.group_dims
        n_tp_dims = len(ri.dims)
        tp_inv = tuple(i < n_tp_dims for i in range(len(dims)))
        self.spec = BuildSpec(num_layers=repeated_layers(ri.model), tp=ri.tp, pp=1, hidden_size=ri.model.hidden_size,
                              act_dtype_bytes=ri.dtype_bytes, tp_involved_dims=tp_inv if ri.tp > 1 else None,
                              dp=self.dp, dp_involved_dims=tuple(not x for x in tp_inv))
        self.system = InstanceSystem(
            name=name, num_npus=self.dp * ri.tp, knobs=SystemKnobs.from_config(sys_cfg), comm_groups=(), tiers=(),
            dims=tuple(Dimension(d.topology, d.npus, d.bw_gbps, d.latency_ns, d.algorithm) for d in dims),
            peak_tflops=ri.hardware.peak_tflops.get(ri.engine.dtype, 0.0))
        self._dummy_shape = BatchShape(q=[1], ctx=[0], num_sampled=0)
        # per rank: hidden states and router logits of each padded token (model dtype, vLLM's router is a
        # ReplicatedLinear in the model dtype)
        m = ri.model
        self._dispatch_per_token = (m.hidden_size + m.num_experts) * ri.dtype_bytes
        self._combine_per_token = m.hidden_size * ri.dtype_bytes
        self.iterations = 0
        self._dense_prefix = bool(m.dense_prefix_layers)
        # a roofline member whose only batch-shape-dependent operator is attention (not MLA: its kv_b_proj is too)
        c0 = self.members[0].compute
        self._attention_only = (not self._dense_prefix and not m.is_mla and hasattr(c0, "inner")
                                and callable(getattr(c0.inner, "attention", None)))
        self._attention_index: int | None = None
        # the padded operator lists by (tokens, tokens routed), when the routing is deterministic (a closed form
        # or round robin): a serving run repeats the same few sizes
        self._memo_padded = bool(getattr(c0, "deterministic", False))
        self._padded: dict[tuple[int, int], tuple] = {}
        self._routing = None  # the routing of the step being costed (sizes the all-to-all)
        self.dispatch = moe_dispatch
        self.spec.moe_collective = moe_dispatch

    def step(self, now_ns: int) -> list[tuple[InstanceRuntime, StepOutcome]] | None:
        plans = [m.plan_step(now_ns) for m in self.members]
        if all(p is None for p in plans):
            return None
        self.iterations += 1
        st = self.stats
        st.steps += 1
        shapes = []
        for m, p in zip(self.members, plans, strict=True):
            if p is None:
                st.dummy_member_steps += 1
                shapes.append(self._dummy_shape)
            else:
                shapes.append(m.shape_of(p))
        tokens = max(s.num_tokens for s in shapes)
        padded = padded_tokens(tokens, self.capture_sizes)
        if padded:
            tokens = padded
            st.padded_tokens += sum(tokens - s.num_tokens for s in shapes)
        # the tokens the experts see: every member's padded batch under a CUDA graph, else their real tokens
        routed = self.dp * tokens if padded else sum(s.num_tokens for s in shapes)
        lead = self.members[0]
        if getattr(lead.compute, "trace", None) is not None:  # the lead costs the group: it routes all members' requests
            lead.compute.batch = [(r.request_id, n) for p in plans if p is not None
                                  for r, n in zip(p.requests, p.num_new_tokens, strict=True)]
        cost = self._group_cost(shapes, tokens, routed, bool(padded))
        r = self._routing
        if r is not None:
            imb = r.imbalance
            st.imbalance_sum += imb
            if imb > st.imbalance_max:
                st.imbalance_max = imb
        spec = self.size_collectives(tokens)
        graphs = build_graphs(spec, [cost])
        result = self.backend.run(self.system, graphs, start_ns=now_ns)
        dur = max(1, result.duration_ns) + self.overhead_ns
        outs = []
        tb = graphs[0].tensor_bytes_total()
        for m, p in zip(self.members, plans, strict=True):
            if p is None:
                p = IterationPlan(m.name, [], [], [])
                m.iterations += 1
            outs.append((m, StepOutcome(p, result, dur, graphs, tb, self.tp)))
        return outs

    def size_collectives(self, tokens: int) -> BuildSpec:
        """The build spec with this step's EP exchange sizes (per rank `tokens` entering the MoE block).

        allgather_reducescatter: every rank all-gathers its hidden states and router logits (ASTRA-sim's
        all-gather size is one rank's part) and reduce-scatters the dp x tokens outputs. all_to_all: a token
        goes to each other rank holding one of its experts, with probability p = tokens the busiest rank
        receives / tokens routed (the step's routing); one rank's buffer for all n ranks (ASTRA-sim's
        all-to-all size, S / n to each) is tokens x p x n x hidden x dtype bytes, the same back for the combine.
        """
        spec = self.spec
        if self.dispatch == "all_to_all":
            r = self._routing
            p = max(r.tokens_per_rank) / r.num_tokens if (r is not None and r.num_tokens) else 1.0
            size = int(tokens * p * self.dp * self._combine_per_token)
            spec.moe_dispatch_bytes = spec.moe_combine_bytes = max(1, size)
        else:
            spec.moe_dispatch_bytes = int(tokens * self._dispatch_per_token)
            spec.moe_combine_bytes = int(self.dp * tokens * self._combine_per_token)
        return spec

    def _group_cost(self, shapes: list[BatchShape], tokens: int, routed: int, pad: bool) -> MicroBatchCost:
        """One chain for the whole group: attention and the per-sequence head at the slowest member, the
        rest at the padded token count (or, under enforce_eager, each operator at its slowest member)."""
        lead = self.members[0].compute
        seen: dict[int, tuple] = {}  # members with the same shape object (idle members' dummy) cost once
        per = []
        for m, s in zip(self.members, shapes, strict=True):
            hit = seen.get(id(s))
            if hit is None:
                c = m.compute
                if pad and self._attention_only:  # attention is the one shape-dependent operator: cost it alone
                    hit = (None, c.inner.attention(s), None)
                elif pad:  # only the shape-dependent operators are read: the inner model's list (no EP routing)
                    inner = getattr(c, "inner", c)
                    pro = prologue_ops(c, s) if self._dense_prefix else None
                    hit = (pro, inner.layer_ops(s), c.epilogue_ops(s))
                else:
                    hit = (prologue_ops(c, s), c.layer_ops(s, tokens_routed=routed), c.epilogue_ops(s))
                seen[id(s)] = hit
            per.append(hit)
        if pad:
            key = (tokens, routed)
            hit = self._padded.get(key) if self._memo_padded else None
            if hit is None:
                pad_shape = BatchShape(q=[tokens], ctx=[0], num_sampled=1)
                hit = (prologue_ops(lead, pad_shape), lead.layer_ops(pad_shape, tokens_routed=routed),
                       getattr(lead, "last_routing", None))
                if self._memo_padded and len(self._padded) < 16384:
                    self._padded[key] = hit
            prologue, layer, self._routing = hit
            if self._dense_prefix:
                prologue = _attention_at_slowest(prologue, [p[0] for p in per])
            if self._attention_only:
                layer = list(layer)
                k = self._attention_index
                if k is None or layer[k].name != "attention":
                    k = self._attention_index = next(i for i, o in enumerate(layer) if o.name == "attention")
                layer[k] = max((p[1] for p in per), key=_duration)
            else:
                layer = _attention_at_slowest(layer, [p[1] for p in per])
        else:
            prologue = _per_op_max([p[0] for p in per])
            layer = _per_op_max([p[1] for p in per])
            self._routing = getattr(lead, "last_routing", None)
        if pad and self._attention_only:  # the roofline head: the norm over the padded tokens, the rest per sample
            epilogue = lead.epilogue_ops(BatchShape(q=[tokens], ctx=[0], num_sampled=max(s.num_sampled for s in shapes)))
        else:
            epilogue = _per_op_max([p[2] for p in per])
        return MicroBatchCost(prologue, layer, epilogue, tokens)


def cudagraph_capture_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default CUDA-graph capture sizes (vllm/config/vllm.py, _set_cudagraph_sizes, v0.11+): up to
    min(2 x max_num_seqs, 512) tokens, sizes 1, 2, 4, then every 8 below 256, then every 16."""
    top = min(2 * max_num_seqs, 512)
    sizes = [i for i in (1, 2, 4) if i <= top] + list(range(8, min(top + 1, 256), 8)) + list(range(256, top + 1, 16))
    return sizes


def padded_tokens(tokens: int, capture_sizes: list[int]) -> int:
    """The token count a CUDA-graph step runs: the smallest capture size holding `tokens`; 0 when the step
    runs eagerly (no capture size is that large, or CUDA graphs are off), and then nothing is padded.
    vLLM pads the members of a DP group to their largest batch only for a CUDA-graph step
    (gpu_model_runner: coordinate_batch_across_dp with allow_dp_padding when a graph runs)."""
    if not capture_sizes or tokens > capture_sizes[-1]:
        return 0
    return capture_sizes[bisect_left(capture_sizes, tokens)]


# operators whose cost depends on the sequences of the batch, not only on its token count: attention, and
# MLA's kv_b_proj (the expanded form runs over each prefill's whole context)
SHAPE_DEPENDENT = frozenset(("attention", "kv_b_proj"))


def _attention_at_slowest(padded: list[OpCost], members: list[list[OpCost]]) -> list[OpCost]:
    """The padded operator list with every attention (one per layer it holds) at its slowest member's.
    Member lists hold the same operators up to the MoE block, which may differ (the inner model's
    TP-style block against the padded list's EP block); shape-dependent operators come before it."""
    out = list(padded)
    for i, o in enumerate(out):
        if o.name in SHAPE_DEPENDENT:
            out[i] = max((m[i] for m in members), key=_duration)
    return out


def _duration(o: OpCost) -> int:
    return o.duration_ns


def _slowest(ops: list[OpCost]) -> OpCost:
    return max(ops, key=lambda o: o.duration_ns)


def _per_op_max(lists: list[list[OpCost]]) -> list[OpCost]:
    """Position by position, the slowest member's operator (the members run the same operator list)."""
    return [_slowest(list(col)) for col in zip(*lists, strict=True)]


def build_units(instances: list[InstanceRuntime], backend: Backend, sys_cfg: SystemConfig,
                moe_dispatch: str = "allgather_reducescatter") -> list:
    """Solo units for independent instances, one LockstepGroup per DP group of a MoE model."""
    units: list = []
    groups: dict[str, list[InstanceRuntime]] = {}
    for inst in instances:
        ri = inst.inst
        if ri.dp_group is not None and ri.model.is_moe:
            if ri.dp_group not in groups:
                groups[ri.dp_group] = []
                units.append(ri.dp_group)  # placeholder keeps the configured order
            groups[ri.dp_group].append(inst)
        else:
            units.append(SoloUnit(inst))
    out = []
    for u in units:
        if isinstance(u, str):
            g = LockstepGroup(u, groups[u], backend, sys_cfg, moe_dispatch)
            for m in g.members:
                m.unit = g
            out.append(g)
        else:
            u.inst.unit = u
            out.append(u)
    return out


class Cluster:
    """The cluster layer the engine drives: the units that step, and cross-instance coordination (prefill/
    decode hand-offs, frontend/pd.py). The engine asks it where a new request really goes and what a
    finished step set in motion; without disaggregation both are identities."""

    def __init__(self, instances: list[InstanceRuntime], backend: Backend, sys_cfg: SystemConfig, run_cfg,
                 schedule_timer) -> None:
        self.units = build_units(instances, backend, sys_cfg, run_cfg.moe.dispatch)
        self.pd = None
        if any(i.inst.role == "prefill" for i in instances):
            from frontend.pd import PDCoordinator

            self.pd = PDCoordinator(run_cfg.pd, instances, schedule_timer, run_cfg.cluster)
        # new requests go to the instances that take them: all but decode instances
        self.entry = [i for i in instances if i.inst.role != "decode"]
        self.lora = run_cfg.lora if run_cfg.lora.adapters else None
        self.seed = run_cfg.seed

    def before_route(self, req) -> None:
        """What a new request carries before the router sees it: a LoRA adapter when it names none and the run
        serves adapters (lora.share, seeded per request id)."""
        if self.lora is not None and req.lora is None:
            from frontend.instance.lora import adapter_of

            req.lora = adapter_of(req.request_id, self.seed, self.lora)

    def route_new(self, req, inst: InstanceRuntime) -> InstanceRuntime:
        return inst if self.pd is None else self.pd.admit_new(req, inst)

    def rejection_reason(self, req, inst: InstanceRuntime) -> str:
        """Why the cluster cannot serve `req` where it was routed ('' if it can): the instance's own checks, and
        for a prefill hand-off the decode side's."""
        reason = inst.scheduler.rejection_reason(req)
        if not reason and req.lora is not None and req.lora >= 0:
            served = self.lora.adapters if self.lora is not None else 0
            if req.lora >= served:
                reason = f"names LoRA adapter {req.lora} but the run serves {served} (lora.adapters)"
        if not reason and self.pd is not None:
            reason = self.pd.rejection_reason(req)
            if reason:
                reason = f"decode side: {reason}"
        return reason

    def after_complete(self, inst: InstanceRuntime, now: int) -> list[InstanceRuntime]:
        return [] if self.pd is None else self.pd.after_complete(inst, now)

    @property
    def network(self):
        """The cluster network (frontend/network/cluster_net.py), or None."""
        return self.pd.network if self.pd is not None else None

    @property
    def watches_step_starts(self) -> bool:
        """Whether `on_step_start` does anything (the engine calls it only then)."""
        return self.pd is not None and self.pd.streaming

    def on_step_start(self, inst: InstanceRuntime, out: StepOutcome, now: int) -> None:
        """A step of `inst` starts now (layer-wise KV streaming pushes its layers as they end)."""
        if self.pd is not None:
            self.pd.on_step_start(inst, out, now)
