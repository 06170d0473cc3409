"""none - no prefetch: KV comes back from the tier when a turn is admitted (the tier manager's load)."""

from __future__ import annotations

from frontend.policies.common import PrefetchPolicy
from frontend.policies.registry import register_prefetch


@register_prefetch("none")
class NoPrefetch(PrefetchPolicy):
    pass
