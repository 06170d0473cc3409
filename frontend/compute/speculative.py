"""Speculative decoding's draft cost as a layer over any compute model.

Why: with speculative decoding every decode sequence of a step is verified at width K + 1 (the scheduler
plans K draft tokens beyond its one new token; the inner model prices the verify pass like any batch of
that shape: projections over all K + 1 tokens, attention of K + 1 query rows over the sequence's
context), and before it the drafter proposes the K tokens. With EAGLE (Li et al., arXiv 2401.15077) the
drafter is one decoder layer of the target's width plus the target's LM head, run K times, one token per
sequence each time, over the sequence's context: K x (one decode layer + LM head) at the step's decode
batch. That is the `spec_draft` operator this layer adds to the step's epilogue, so it is in the Chakra
trace and timed by the backend like the rest. A draft model (speculative_draft_model) runs its whole
forward pass per draft token, priced by the roofline of that model on the same hardware and TP; its
weights and KV are resident too (the config loader adds them to each NPU and to each KV block). An n-gram
(prompt-lookup) drafter runs on the CPU and adds no accelerator work: no wrapper then. Not modelled: the
EAGLE head's own weights and KV in HBM.
"""

from __future__ import annotations

from frontend.compute.batch import BatchShape, OpCost


class SpeculativeCompute:
    """`inner`'s operators plus the EAGLE drafter's K passes over the step's decode sequences."""

    def __init__(self, inner, num_draft_tokens: int, draft=None) -> None:
        self.inner = inner
        self.k = num_draft_tokens
        self.width = num_draft_tokens + 1
        self.draft = draft  # a draft model's compute model (its whole forward per draft token), else EAGLE's head

    def __getattr__(self, item: str):  # everything else is the inner model's (EP routing, dense prefix, ...)
        return getattr(self.inner, item)

    def prologue_ops(self, shape: BatchShape) -> list[OpCost]:
        return self.inner.prologue_ops(shape)

    def layer_ops(self, shape: BatchShape, **kw) -> list[OpCost]:
        return self.inner.layer_ops(shape, **kw)

    def epilogue_ops(self, shape: BatchShape) -> list[OpCost]:
        ops = self.inner.epilogue_ops(shape)
        ctx = [c for q, c in zip(shape.q, shape.ctx, strict=True) if q == self.width and c > 0]
        if not ctx:
            return ops
        draft = BatchShape(q=[1] * len(ctx), ctx=ctx, num_sampled=len(ctx))
        if self.draft is not None:  # a draft model: its whole forward pass per draft token
            d = self.draft
            once = d.prologue_ops(draft) + d.model.num_layers * d.layer_ops(draft) + d.epilogue_ops(draft)
        else:
            once = self.inner.layer_ops(draft) + [o for o in self.inner.epilogue_ops(draft) if o.name == "lm_head"]
        ns = sum(o.duration_ns for o in once)
        flops = sum(o.flops for o in once)
        nbytes = sum(o.bytes for o in once)
        return ops + [OpCost("spec_draft", self.k * ns, self.k * flops, self.k * nbytes)]
