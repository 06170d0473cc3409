"""What one iteration of one instance does: the contract between scheduler, trace builder and engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from frontend.workload.request import Request


@dataclass(slots=True)
class KVMove:
    """Blocks moved between HBM and a lower tier within an iteration."""

    tier: str
    direction: str  # "load" (tier -> HBM) or "store" (HBM -> tier)
    blocks: int
    reason: str = "prefix"  # prefix | offload | swap | prefetch


@dataclass(slots=True)
class IterationPlan:
    instance: str
    requests: list[Request]
    num_new_tokens: list[int]
    contexts: list[int]  # tokens already in KV for each sequence before this step
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    num_sampled: int = 0  # sequences that emit a token at the end of the step (set by the scheduler)
    first_admitted: int = 0  # requests[first_admitted:] were admitted from the waiting queue this step
    kv_moves: list[KVMove] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    # every running request, each decoding one token inside the blocks it holds, nobody admitted or
    # preempted: the batch a decode run repeats (Scheduler run-ahead)
    steady_decode: bool = False
    run_ahead: bool = False  # planned by the scheduler's decode run (its completion is the run's too)

    @property
    def num_seqs(self) -> int:
        return len(self.requests)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens
