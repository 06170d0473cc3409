"""`workload.kind: synthetic`: the seeded generator of frontend/workload/synthetic.py."""

from __future__ import annotations

from frontend.workload.sources import WorkloadParts, register_source


@register_source("synthetic")
class SyntheticSource:
    def load(self, run, seed: int) -> WorkloadParts:
        from frontend.workload.synthetic import synthetic_requests

        return synthetic_requests(run.config.workload, seed), None, {}, []
