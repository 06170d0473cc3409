"""`workload.kind: agents`: agent programs from a generator, or from a trace (LLMServingSim session JSONL or the
DAG JSONL of frontend/agents/generators.py)."""

from __future__ import annotations

from frontend.workload.sources import WorkloadParts, first_line, register_source, resolve_path


@register_source("agents")
class AgentSource:
    def load(self, run, seed: int) -> WorkloadParts:
        from frontend.agents.generators import default_tools, generate, read_dag_jsonl, sessions_to_programs

        wl = run.config.workload
        if wl.trace:
            path = resolve_path(run, wl.trace, "workload.trace")
            if '"turns"' in first_line(path):
                return [], read_dag_jsonl(path), dict(wl.tools), []
            from frontend.workload.jsonl import read_jsonl

            reqs, sessions = read_jsonl(path, None, 1.0)
            return reqs, sessions_to_programs(sessions), dict(wl.tools), []
        return [], generate(wl, seed), default_tools(wl), []
