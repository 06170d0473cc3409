"""Programs as DAGs of turns.

A turn's prompt is the context of its *context parent* (that turn's prompt plus
its output) followed by `new_tokens` of its own (a tool result, a user or agent
message); so consecutive turns share a real prefix. Edges carry the tool that
runs between parent and child and, when replaying a trace, the tool's measured
duration. A turn is released when its last parent's tool finishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from frontend.workload.jsonl import WorkloadError


@dataclass(slots=True)
class Edge:
    parent: str  # turn id
    tool: str = "tool"
    gap_ns: int | None = None  # from the trace; None = sampled by the tool simulator


@dataclass(slots=True)
class TurnSpec:
    turn_id: str
    program_id: str
    index: int
    new_tokens: int
    output_tokens: int
    parents: list[Edge] = field(default_factory=list)
    context_parent: str | None = None
    input_ids: list[int] | None = None  # full prompt ids when the trace has them
    output_ids: list[int] | None = None
    full_input_tokens: int | None = None  # trace formats that give the whole prompt length
    # (key, tokens): the turn's prompt starts with a fixed prompt shared by every turn naming the same key
    # (a workflow agent's role prompt, KVFlow's "fixed prompt"), followed by its own new tokens
    fixed_prefix: tuple[int, int] | None = None


@dataclass
class ProgramSpec:
    program_id: str
    arrival_ns: int
    turns: list[TurnSpec]
    lora: int | None = None  # the LoRA adapter every call of this program names (an agent's own adapter)

    def validate(self) -> None:
        ids = {t.turn_id for t in self.turns}
        if len(ids) != len(self.turns):
            raise WorkloadError(f"program {self.program_id}: duplicate turn ids")
        seen: set[str] = set()
        for t in self.turns:  # turns are listed in a topological order
            if t.output_tokens < 1 or t.new_tokens < 0:
                raise WorkloadError(f"program {self.program_id}: turn {t.turn_id} needs output_tokens >= 1 and "
                                    f"new_tokens >= 0 (got {t.output_tokens}, {t.new_tokens})")
            for e in t.parents:
                if e.parent not in seen:
                    raise WorkloadError(f"program {self.program_id}: turn {t.turn_id} depends on {e.parent}, "
                                     "which is not an earlier turn")
            if t.context_parent is not None and t.context_parent not in {e.parent for e in t.parents}:
                raise WorkloadError(f"program {self.program_id}: turn {t.turn_id} extends the context of "
                                 f"{t.context_parent}, which is not one of its parents")
            seen.add(t.turn_id)
