"""lru - vLLM: a finished turn's blocks return to the free queue as prefix cache (least recently used go
first); nothing is held across the tool call."""

from __future__ import annotations

from frontend.policies.common import RetentionPolicyBase
from frontend.policies.registry import register_retention


@register_retention("lru")
class Lru(RetentionPolicyBase):
    pass
