"""Program identity and turn order.

A turn becomes ready when every parent has finished and the tool on each edge
has run (tool durations from the trace or the tool simulator); its prompt is
its context parent's whole sequence plus its own new tokens, so prefix reuse
across turns is real. Requests are created only when a turn becomes ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from frontend.agents.program import ProgramSpec, TurnSpec
from frontend.agents.tools import ToolSimulator
from frontend.workload.jsonl import WorkloadError
from frontend.workload.request import Request, TokenContent, extend_block_hashes

SYSTEM_PROMPT_KEY = 1


@dataclass
class TurnState:
    spec: TurnSpec
    pending: int
    release_ns: int = 0
    request: Request | None = None
    children_left: int = 0
    finished: bool = False


@dataclass
class ProgramState:
    spec: ProgramSpec
    turns_left: int
    arrival_ns: int
    completion_ns: int = -1
    tool_ns: int = 0
    service_tokens: int = 0  # tokens of its finished turns (prompt + output)
    # attained service as Autellix defines it: the execution time of the program's completed calls
    # (admission to last token of each finished turn), not the tokens its prompts repeat from cache
    service_ns: int = 0
    instances: set[str] = field(default_factory=set)
    next_index: int = 0  # first turn (in spec order) whose request does not exist yet


class Orchestrator:
    def __init__(self, programs: list[ProgramSpec], tools: ToolSimulator, block_size: int,
                 system_prompt_tokens: int = 0, hash_contents: bool = True) -> None:
        self.tools = tools
        self.block_size = block_size
        self.system_prompt_tokens = system_prompt_tokens
        self.hash_contents = hash_contents
        self.turns: dict[str, TurnState] = {}
        self.children: dict[str, list[str]] = {}
        self.programs: dict[str, ProgramState] = {}
        self._key = 10
        self._seq = 0
        # (end_ns, duration) of tool calls; a policy only sees calls that ended before its "now"
        self.tool_history: dict[str, list[tuple[int, int]]] = {}
        self._prefix_hashes: dict[tuple[int, int], list[int]] = {}
        for p in programs:
            self.programs[p.program_id] = ProgramState(p, len(p.turns), p.arrival_ns)
            for t in p.turns:
                if t.turn_id in self.turns:
                    raise WorkloadError(f"duplicate turn id {t.turn_id}")
                self.turns[t.turn_id] = TurnState(t, len(t.parents))
        for st in self.turns.values():
            for e in st.spec.parents:
                if e.parent not in self.turns:
                    raise WorkloadError(f"turn {st.spec.turn_id} depends on unknown turn {e.parent}")
                self.children.setdefault(e.parent, []).append(st.spec.turn_id)
        for tid, kids in self.children.items():
            self.turns[tid].children_left = len(kids)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def _new_key(self) -> int:
        self._key += 1
        return self._key

    def initial(self) -> list[Request]:
        out = []
        for st in self.turns.values():
            if st.pending == 0:
                st.release_ns = self.programs[st.spec.program_id].arrival_ns
                out.append(self._make_request(st))
        return out

    def _make_request(self, st: TurnState) -> Request:
        t = st.spec
        bs = self.block_size
        self._seq += 1
        if t.input_ids is not None:
            req = Request(t.turn_id, st.release_ns, len(t.input_ids), t.output_tokens,
                          content=TokenContent(ids=t.input_ids), output_content=TokenContent(ids=t.output_ids))
        else:
            parent = self.turns[t.context_parent].request if t.context_parent else None
            if parent is not None:
                segs = list(parent.content.segments or []) + list(parent.output_content.segments or [])
                ctx = parent.input_tokens + parent.output_tokens
                prefix = parent.hashes or []
            elif t.fixed_prefix is not None:
                key, n = t.fixed_prefix
                segs, ctx, prefix = [(key, min(n, t.new_tokens))], 0, []
            else:
                segs, ctx, prefix = [], 0, []
                sys_tokens = min(self.system_prompt_tokens, t.new_tokens) if t.index == 0 else 0
                if sys_tokens:
                    segs.append((SYSTEM_PROMPT_KEY, sys_tokens))
            own = t.new_tokens - (sum(n for _, n in segs) if parent is None else 0)
            if own > 0:
                segs.append((self._new_key(), own))
            inp = ctx + t.new_tokens if parent is not None else sum(n for _, n in segs)
            out_seg = [(self._new_key(), t.output_tokens)]
            req = Request(t.turn_id, st.release_ns, max(1, inp), t.output_tokens, content=TokenContent(segments=segs),
                          output_content=TokenContent(segments=out_seg))
            if self.hash_contents:
                req.hashes = extend_block_hashes(prefix, segs + out_seg, bs, req.input_tokens + req.output_tokens)
        req.program_id = t.program_id
        req.turn_index = t.index
        lora = self.programs[t.program_id].spec.lora
        if lora is not None:
            req.lora = lora
        req.seq = self._seq
        req.ready_ns = st.release_ns
        st.request = req
        prog = self.programs[t.program_id]
        turns = prog.spec.turns
        while prog.next_index < len(turns) and self.turns[turns[prog.next_index].turn_id].request is not None:
            prog.next_index += 1
        return req

    def on_finish(self, req: Request, now: int) -> list[Request]:
        """Children whose last dependency this completes, as requests arriving at their release time."""
        st = self.turns[req.request_id]
        prog = self.programs[st.spec.program_id]
        st.finished = True
        prog.turns_left -= 1
        prog.service_tokens += req.input_tokens + req.output_tokens
        if req.scheduled_ns >= 0:
            prog.service_ns += now - req.scheduled_ns
        prog.instances.add(req.instance)
        if prog.turns_left == 0:
            prog.completion_ns = now
        ready = []
        for cid in self.children.get(req.request_id, []):
            child = self.turns[cid]
            edge = next(e for e in child.spec.parents if e.parent == req.request_id)
            gap = self.tools.gap_ns(edge.tool, edge.gap_ns)
            self.tool_history.setdefault(edge.tool, []).append((now + gap, gap))
            if child.spec.program_id == prog.spec.program_id:
                prog.tool_ns += gap
            child.release_ns = max(child.release_ns, now + gap)
            child.pending -= 1
            if child.pending == 0:
                ready.append(self._make_request(child))
                for e in child.spec.parents:  # parents whose children are all created drop their hashes
                    ps = self.turns[e.parent]
                    ps.children_left -= 1
                    if ps.children_left == 0 and ps.request is not None:
                        ps.request.hashes = None
        return ready

    def expected_gap_ns(self, tool: str, now: int) -> float | None:
        """What a policy may know about a tool: the mean of calls that have finished by `now`
        (the last 64), else its configured mean; never the duration of a call still running."""
        h = self.tool_history.get(tool)
        if h:
            done = [g for end, g in h[-256:] if end <= now][-64:]
            if done:
                return sum(done) / len(done)
        return self.tools.mean_ns(tool)

    # ---- what invocation-distance policies may know: the program structure, never durations ----
    def next_pending(self, program_id: str) -> str | None:
        """The program's next turn that has not been released yet (None when every turn has been)."""
        prog = self.programs[program_id]
        turns = prog.spec.turns
        return turns[prog.next_index].turn_id if prog.next_index < len(turns) else None

    def steps_to_execution(self, turn_id: str, memo: dict[str, int]) -> int:
        """KVFlow's steps-to-execution on the Agent Step Graph (ScaleSim's invocation distance in steps):
        0 when every parent has finished (only a tool call stands between the turn and its request),
        else 1 + the largest distance among the parents that have not finished (a parent that runs now
        counts 0). Structure only: nothing about how long a step will take."""
        d = memo.get(turn_id)
        if d is not None:
            return d
        st = self.turns[turn_id]
        d = 0
        for e in st.spec.parents:
            ps = self.turns[e.parent]
            if not ps.finished:
                d = max(d, 1 + (0 if ps.request is not None else self.steps_to_execution(e.parent, memo)))
        memo[turn_id] = d
        return d

    def reuse_hashes(self, turn_id: str) -> list[int]:
        """Block hashes a pending turn will find as its prompt's prefix: its context parent's whole
        sequence, or its fixed prompt. Known from the program structure before the turn exists."""
        spec = self.turns[turn_id].spec
        if spec.context_parent is not None:
            parent = self.turns[spec.context_parent].request
            if parent is None or not parent.hashes:
                return []
            n_full = (parent.input_tokens + parent.output_tokens) // self.block_size
            return parent.hashes[:n_full]
        if spec.fixed_prefix is not None and self.hash_contents:
            key, n = spec.fixed_prefix
            n = min(n, spec.new_tokens)
            h = self._prefix_hashes.get((key, n))
            if h is None:
                h = self._prefix_hashes[(key, n)] = extend_block_hashes([], [(key, n)], self.block_size, n)
            return h
        return []

    def next_tools(self, turn_id: str) -> list[str]:
        """The tools that start when this turn finishes (known from the program structure, not their durations)."""
        out = []
        for cid in self.children.get(turn_id, []):
            for e in self.turns[cid].spec.parents:
                if e.parent == turn_id:
                    out.append(e.tool)
        return out
