"""`workload.kind: jsonl`: the project's JSONL (flat request lines; session lines become agent programs)."""

from __future__ import annotations

from frontend.workload.sources import WorkloadParts, register_source, resolve_path


@register_source("jsonl")
class JsonlSource:
    def load(self, run, seed: int) -> WorkloadParts:
        from frontend.workload.jsonl import read_jsonl

        wl = run.config.workload
        reqs, sessions = read_jsonl(resolve_path(run, wl.path, "workload.path"), wl.num_requests, wl.time_scale)
        progs = None
        if sessions:
            from frontend.agents.generators import sessions_to_programs

            progs = sessions_to_programs(sessions)
        return reqs, progs, {}, []
