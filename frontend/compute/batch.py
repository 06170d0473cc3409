"""The shape of one iteration's batch as the compute models see it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class BatchShape:
    """Sequences of one step. q = new tokens, ctx = tokens already cached before the step."""

    q: list[int] = field(default_factory=list)
    ctx: list[int] = field(default_factory=list)
    num_sampled: int = 0
    _tokens: int = field(default=-1, repr=False, compare=False)  # sum(q), once: every op model asks for it

    @property
    def num_tokens(self) -> int:
        if self._tokens < 0:
            self._tokens = sum(self.q)
        return self._tokens

    @property
    def num_seqs(self) -> int:
        return len(self.q)

    def split(self, parts: int) -> list[BatchShape]:
        """Split sequences into `parts` micro-batches of balanced token counts (pipeline parallelism)."""
        if parts <= 1 or self.num_seqs <= 1:
            return [self]
        order = sorted(range(self.num_seqs), key=lambda i: -self.q[i])
        bins = [BatchShape() for _ in range(min(parts, self.num_seqs))]
        loads = [0] * len(bins)
        share = self.num_sampled / max(1, self.num_seqs)
        for i in order:
            k = loads.index(min(loads))
            bins[k].q.append(self.q[i])  # (num_tokens is first read after the bins are filled)
            bins[k].ctx.append(self.ctx[i])
            loads[k] += self.q[i]
        for b in bins:
            b.num_sampled = round(share * b.num_seqs)
        return bins


@dataclass(slots=True)
class OpCost:
    name: str
    duration_ns: int
    flops: int
    bytes: int
