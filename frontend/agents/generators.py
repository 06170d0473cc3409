"""Program generators (seeded) and loaders for agentic traces.

* coding: chains of 5-50 turns; every turn is a model call followed by a tool
  call (read a file, grep, edit, run the tests) whose output grows the context.
* research: a planner fans out to N parallel searches whose results a final
  aggregator turn reads (fan-out / fan-in).
* multiagent: a large population of agents with sparse activation per step, in
  the spirit of ScaleSim's generative-agent workloads; an agent acting at step s
  messages a few others, who then act at step s+1 with the messages in context.
* workflow: MetaGPT-style fixed-prompt workflows (KVFlow's workload): num_agents
  role agents, each with its own fixed prompt of system_prompt_tokens tokens that
  every workflow shares; a workflow invokes the agents in turn for `steps` steps,
  each invocation reading its agent's fixed prompt plus the previous agent's
  message (tool_output_tokens), so the reuse is across workflows and rounds,
  not along one growing context.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from frontend.agents.program import Edge, ProgramSpec, TurnSpec
from frontend.config.schema import AgentWorkload, Dist, ToolDist
from frontend.workload.jsonl import WorkloadError
from frontend.workload.synthetic import arrival_times_ns, sample_dist

# Default tool latencies for coding agents when the config names none (ms):
# file reads / greps are tens of ms, edits instant, test runs seconds.
DEFAULT_CODING_TOOLS = {
    "read_file": ToolDist(dist="lognormal", mean_ms=40, sigma=0.6),
    "grep": ToolDist(dist="exponential", mean_ms=120),
    "edit": ToolDist(dist="constant", mean_ms=20),
    "run_tests": ToolDist(dist="lognormal", mean_ms=4000, sigma=0.9),
}
DEFAULT_RESEARCH_TOOLS = {"web_search": ToolDist(dist="lognormal", mean_ms=1500, sigma=0.7),
                          "message": ToolDist(dist="constant", mean_ms=0)}
DEFAULT_WORKFLOW_TOOLS = {"message": ToolDist(dist="constant", mean_ms=0)}
DEFAULT_MULTIAGENT_TOOLS = {"env_step": ToolDist(dist="lognormal", mean_ms=800, sigma=0.5),
                            "message": ToolDist(dist="constant", mean_ms=0)}


def _one(d: Dist, rng: np.random.Generator) -> int:
    return int(sample_dist(d, rng, 1)[0])


def coding_programs(cfg: AgentWorkload, seed: int) -> list[ProgramSpec]:
    rng = np.random.default_rng(seed)
    tools = sorted(cfg.tools or DEFAULT_CODING_TOOLS)
    arrivals = arrival_times_ns("poisson", cfg.rate_per_s, 1.0, cfg.num_programs, rng)
    progs = []
    for p in range(cfg.num_programs):
        pid = f"prog-{p}"
        n = _one(cfg.turns, rng) if cfg.turns is not None else int(rng.integers(cfg.turns_min, cfg.turns_max + 1))
        turns = []
        for k in range(n):
            tid = f"{pid}.t{k}"
            if k == 0:
                turns.append(TurnSpec(tid, pid, 0, cfg.system_prompt_tokens + _one(cfg.tool_output_tokens, rng),
                                      _one(cfg.output_tokens, rng)))
            else:
                tool = tools[int(rng.integers(len(tools)))]
                prev = turns[-1].turn_id
                turns.append(TurnSpec(tid, pid, k, _one(cfg.tool_output_tokens, rng), _one(cfg.output_tokens, rng),
                                      parents=[Edge(prev, tool)], context_parent=prev))
        progs.append(ProgramSpec(pid, int(arrivals[p]), turns))
    return progs


def research_programs(cfg: AgentWorkload, seed: int) -> list[ProgramSpec]:
    rng = np.random.default_rng(seed)
    tool = sorted(cfg.tools or DEFAULT_RESEARCH_TOOLS)[0]
    arrivals = arrival_times_ns("poisson", cfg.rate_per_s, 1.0, cfg.num_programs, rng)
    progs = []
    for p in range(cfg.num_programs):
        pid = f"prog-{p}"
        plan = TurnSpec(f"{pid}.plan", pid, 0, cfg.system_prompt_tokens + 200, _one(cfg.output_tokens, rng))
        workers = [TurnSpec(f"{pid}.w{i}", pid, 1 + i, _one(cfg.tool_output_tokens, rng), _one(cfg.output_tokens, rng),
                            parents=[Edge(plan.turn_id, tool)], context_parent=plan.turn_id)
                   for i in range(cfg.fanout)]
        agg_new = sum(w.output_tokens for w in workers) + 50
        agg = TurnSpec(f"{pid}.agg", pid, 1 + cfg.fanout, agg_new, _one(cfg.output_tokens, rng),
                       parents=[Edge(w.turn_id, "message") for w in workers], context_parent=plan.turn_id)
        progs.append(ProgramSpec(pid, int(arrivals[p]), [plan, *workers, agg]))
    return progs


def multiagent_programs(cfg: AgentWorkload, seed: int) -> list[ProgramSpec]:
    """Agents act in steps; who acts next is decided by who was messaged.

    Step 0 activates a random active_fraction of the agents. An agent acting at
    step s messages 1-2 random agents; every messaged agent acts at step s+1
    (with the messages in its context) up to 1.5 x active_fraction of the
    population, and a few agents wake up spontaneously so activity stays near
    active_fraction. Each agent is a program; its turn at
    step s+1 depends on its previous turn (through the environment tool) and on
    the turns that messaged it.
    """
    rng = np.random.default_rng(seed)
    n = cfg.num_agents
    target = max(1, int(cfg.active_fraction * n))
    last_turn: dict[int, TurnSpec] = {}
    turns_by_agent: dict[int, list[TurnSpec]] = {a: [] for a in range(n)}
    active = set(rng.choice(n, target, replace=False).tolist())
    inbox: dict[int, list[str]] = {}
    for step in range(cfg.steps):
        next_inbox: dict[int, list[str]] = {}
        for a in sorted(active):
            pid = f"agent-{a}"
            k = len(turns_by_agent[a])
            tid = f"{pid}.s{step}"
            msgs = inbox.get(a, [])
            new = _one(cfg.tool_output_tokens, rng) + 60 * len(msgs)
            parents = [Edge(m, "message") for m in msgs]
            prev = last_turn.get(a)
            if prev is not None:
                parents.insert(0, Edge(prev.turn_id, "env_step"))
            t = TurnSpec(tid, pid, k, (cfg.system_prompt_tokens if prev is None else 0) + new,
                         _one(cfg.output_tokens, rng), parents=parents,
                         context_parent=prev.turn_id if prev is not None else None)
            turns_by_agent[a].append(t)
            last_turn[a] = t
            for b in rng.choice(n, int(rng.integers(1, 3)), replace=False).tolist():
                if b != a:
                    next_inbox.setdefault(int(b), []).append(tid)
        cap = max(1, int(1.5 * target))
        if len(next_inbox) > cap:  # activation stays sparse: only some messaged agents act next step
            keep = sorted(rng.choice(sorted(next_inbox), cap, replace=False).tolist())
            next_inbox = {a: next_inbox[a] for a in keep}
        inbox = next_inbox
        active = set(inbox)
        if len(active) < target:
            active |= set(rng.choice(n, target - len(active), replace=False).tolist())
    progs = [ProgramSpec(f"agent-{a}", 0, ts) for a, ts in turns_by_agent.items() if ts]
    return progs


AGENT_PROMPT_KEY_BASE = -1000  # segment keys of role prompts: negative, apart from the orchestrator's counter


def workflow_programs(cfg: AgentWorkload, seed: int) -> list[ProgramSpec]:
    """Workflows that hand a message from role agent to role agent (product manager -> architect -> ...).

    Invocation k of a workflow runs agent k mod num_agents: its prompt is that agent's fixed prompt
    (identical in every workflow, so it is the prefix that caching can reuse) followed by the previous
    agent's message; the edge between consecutive invocations is the `message` tool (0 ms by default).
    """
    rng = np.random.default_rng(seed)
    tool = sorted(cfg.tools or DEFAULT_WORKFLOW_TOOLS)[0]
    arrivals = arrival_times_ns("poisson", cfg.rate_per_s, 1.0, cfg.num_programs, rng)
    fixed = cfg.system_prompt_tokens
    progs = []
    for p in range(cfg.num_programs):
        pid = f"wf-{p}"
        turns: list[TurnSpec] = []
        for k in range(cfg.steps):
            agent = k % cfg.num_agents
            msg = _one(cfg.tool_output_tokens, rng)
            parents = [Edge(turns[-1].turn_id, tool)] if turns else []
            turns.append(TurnSpec(f"{pid}.a{agent}.k{k}", pid, k, fixed + msg, _one(cfg.output_tokens, rng),
                                  parents=parents, fixed_prefix=(AGENT_PROMPT_KEY_BASE - agent, fixed)))
        progs.append(ProgramSpec(pid, int(arrivals[p]), turns))
    return progs


def sessions_to_programs(sessions) -> list[ProgramSpec]:
    """LLMServingSim agentic sessions: sub-request k+1 is released tool_duration_ns after k completes."""
    progs = []
    for s in sessions:
        turns: list[TurnSpec] = []
        for k, sub in enumerate(s.turns):
            tid = f"{s.session_id}.t{k}"
            spec = TurnSpec(tid, s.session_id, k, sub["input_toks"], sub["output_toks"],
                            input_ids=sub.get("input_tok_ids"), output_ids=sub.get("output_tok_ids"),
                            full_input_tokens=sub["input_toks"])
            if k:
                prev = s.turns[k - 1]
                spec.parents = [Edge(turns[-1].turn_id, prev.get("tool", "tool"), prev.get("tool_duration_ns", 0))]
                ctx = prev["input_toks"] + prev["output_toks"]
                if sub["input_toks"] >= ctx and sub.get("input_tok_ids") is None:
                    spec.context_parent = turns[-1].turn_id
                    spec.new_tokens = sub["input_toks"] - ctx
            turns.append(spec)
        progs.append(ProgramSpec(s.session_id, s.arrival_ns, turns))
    return progs


def read_dag_jsonl(path: Path) -> list[ProgramSpec]:
    """DAG format, one program per line:
    {"program_id", "arrival_time_ns", "turns": [{"id", "new_tokens", "output_tokens",
      "parents": [{"turn", "tool", "delay_ns"?}], "context_parent"?}]}"""
    from frontend.workload.jsonl import MAX_TIME_NS, _int_field, parse_json_line

    progs = []
    if not Path(path).is_file():
        raise WorkloadError(f"{path}: no such workload file")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read ({e.strerror})") from None
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        obj = parse_json_line(line, where)
        if not isinstance(obj, dict):
            raise WorkloadError(f"{where}: bad program line (each line must be a JSON object)")
        if "program_id" not in obj:
            raise WorkloadError(f"{where}: bad program line (missing field 'program_id')")
        pid = str(obj["program_id"])
        raw_turns = obj.get("turns")
        if not isinstance(raw_turns, list) or not raw_turns:
            raise WorkloadError(f"{where}: bad program line ('turns' must be a non-empty list)")
        turns = []
        for k, t in enumerate(raw_turns):
            w = f"{where} turns[{k}]"
            if not isinstance(t, dict):
                raise WorkloadError(f"{w}: must be an object")
            if "id" not in t:
                raise WorkloadError(f"{where}: bad program line (missing field 'id')")
            if "new_tokens" not in t:
                raise WorkloadError(f"{where}: bad program line (missing field 'new_tokens')")
            new = _int_field(t, "new_tokens", w, 0)
            out = _int_field(t, "output_tokens", w, 1)
            parents = t.get("parents", [])
            if not isinstance(parents, list) or not all(isinstance(e, dict) and "turn" in e for e in parents):
                raise WorkloadError(f"{w}: 'parents' must be a list of objects with a 'turn'")
            edges = [Edge(f"{pid}.{e['turn']}", str(e.get("tool", "tool")),
                          _int_field(e, "delay_ns", f"{w} parents[{m}]", 0, 10**15) if e.get("delay_ns") is not None
                          else None)
                     for m, e in enumerate(parents)]
            cp = t.get("context_parent")
            turns.append(TurnSpec(f"{pid}.{t['id']}", pid, k, new, out, parents=edges,
                                  context_parent=f"{pid}.{cp}" if cp is not None else None))
        arr = _int_field(obj, "arrival_time_ns", where, 0, MAX_TIME_NS) if "arrival_time_ns" in obj else 0
        prog = ProgramSpec(pid, arr, turns)
        try:
            prog.validate()
        except WorkloadError as e:
            raise WorkloadError(f"{where}: bad program line ({e})") from None
        progs.append(prog)
    if not progs:
        raise WorkloadError(f"{path}: no programs")
    return progs


def generate(cfg: AgentWorkload, seed: int) -> list[ProgramSpec]:
    progs = {"coding": coding_programs, "research": research_programs,
             "multiagent": multiagent_programs, "workflow": workflow_programs}[cfg.generator](cfg, seed)
    if cfg.lora_per_program:  # program i's adapter is i (multiagent: agent a's is a); drawn from no rng
        for i, p in enumerate(progs):
            p.lora = int(p.program_id.removeprefix("agent-")) if cfg.generator == "multiagent" else i
    return progs


def default_tools(cfg: AgentWorkload) -> dict[str, ToolDist]:
    base = {"coding": DEFAULT_CODING_TOOLS, "research": DEFAULT_RESEARCH_TOOLS,
            "multiagent": DEFAULT_MULTIAGENT_TOOLS, "workflow": DEFAULT_WORKFLOW_TOOLS}[cfg.generator]
    return {**base, **cfg.tools}
