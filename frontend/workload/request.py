"""A request (or one turn of an agent program) and the token content it carries.

Token content is what prefix caching hashes. It is either explicit token ids
(from a trace) or a list of segments (key, length): a segment is a run of
tokens identified by a key (a shared system prompt, a program's context, a tool
output). Equal keys mean equal tokens, so synthetic workloads get real prefix
reuse without materialising token lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Segment = tuple[int, int]  # (content key, number of tokens)


@dataclass(slots=True)
class TokenContent:
    ids: list[int] | None = None
    segments: list[Segment] | None = None

    @property
    def has_content(self) -> bool:
        return self.ids is not None or self.segments is not None

    def length(self) -> int:
        if self.ids is not None:
            return len(self.ids)
        if self.segments is not None:
            return sum(n for _, n in self.segments)
        return 0

    def block_hashes(self, block_size: int, max_tokens: int) -> list[int]:
        """Chained hashes of the full blocks within the first max_tokens tokens."""
        n_blocks = min(self.length(), max_tokens) // block_size
        out: list[int] = []
        h = SEED_HASH
        if self.ids is not None:
            ids = self.ids
            for j in range(n_blocks):
                h = hash((h, tuple(ids[j * block_size:(j + 1) * block_size])))
                out.append(h)
            return out
        if self.segments is None:
            return out
        return extend_block_hashes([], self.segments, block_size, min(self.length(), max_tokens))


SEED_HASH = 0x9E3779B97F4A7C15


def extend_block_hashes(prefix: list[int], segments: list[Segment], block_size: int, total_tokens: int) -> list[int]:
    """Chained hashes of every full block of `segments` (up to total_tokens), reusing `prefix`.

    `prefix` must be the hashes of the first len(prefix) blocks of the same
    content (e.g. the parent turn's), so only the new blocks are hashed: a
    50-turn program hashes each block once instead of once per turn.
    """
    n_blocks = total_tokens // block_size
    out = list(prefix[:n_blocks])
    if len(out) == n_blocks:
        return out
    h = out[-1] if out else SEED_HASH
    skip = len(out) * block_size
    seg_i = 0
    seg_off = 0
    while seg_i < len(segments) and skip >= segments[seg_i][1] - seg_off:
        skip -= segments[seg_i][1] - seg_off
        seg_i += 1
        seg_off = 0
    seg_off += skip
    for _ in range(n_blocks - len(out)):
        need = block_size
        parts = []
        while need > 0:
            key, ln = segments[seg_i]
            take = min(need, ln - seg_off)
            parts.append((key, seg_off, seg_off + take))
            seg_off += take
            need -= take
            if seg_off == ln:
                seg_i += 1
                seg_off = 0
        h = hash((h, tuple(parts)))
        out.append(h)
    return out


@dataclass(slots=True, eq=False)
class Request:
    """One inference request. Runtime fields are mutated by the instance that serves it."""

    request_id: str
    arrival_ns: int
    input_tokens: int
    output_tokens: int
    content: TokenContent = field(default_factory=TokenContent)
    output_content: TokenContent = field(default_factory=TokenContent)
    program_id: str | None = None
    turn_index: int = 0
    model: str | None = None  # the model the client asked for (None: whichever the router picks)
    lora: int | None = None  # LoRA adapter index (-1: the base model; None: unnamed, lora.share may assign one)
    # --- runtime state ---
    instance: str = ""
    num_computed_tokens: int = 0
    num_output_done: int = 0
    first_token_ns: int = -1
    finish_ns: int = -1
    scheduled_ns: int = -1
    queued_ns: int = -1  # when the engine core took it into its waiting queue (vLLM's queued_ts)
    preemptions: int = 0
    cached_tokens: int = 0
    cached_tokens_by_tier: dict[str, int] = field(default_factory=dict)
    status: str = "pending"
    reject_reason: str = ""
    block_ids: list[int] = field(default_factory=list)
    hashes: list[int] | None = None
    num_hashed_blocks: int = 0  # leading blocks already registered in the prefix cache
    seq: int = 0  # arrival order, the FCFS key
    swapped_blocks: int = 0  # blocks held in host memory by a swap preemption
    ready_ns: int = -1  # when the turn became ready (its arrival at the router)
    # prefill/decode disaggregation (frontend/pd.py): prefilled here and handed to a decode instance; waiting on a
    # decode instance for the prompt's KV from its prefill instance; the prefill side's blocks until the transfer ends
    handoff: bool = False
    remote_kv: bool = False
    kv_src_blocks: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Prompt plus tokens generated so far: what must be in the KV cache to sample the next one."""
        return self.input_tokens + self.num_output_done

    @property
    def is_finished(self) -> bool:
        return self.status in ("finished", "rejected")
