"""Agent-policy registries: scheduling, retention and prefetch policies, each a class registered by name.

A policy is one class in its own module under scheduling/, retention/ or prefetch/, decorated with
`register_scheduling("name")`, `register_retention("name")` or `register_prefetch("name")`; the package imports
every module there, so a new policy is a new file. The run file names the three policies
(`policy.scheduling`, `policy.retention`, `policy.prefetch`), and `RetentionPolicy` composes them.

The small protocols (duck-typed; the base classes in common.py give the do-nothing defaults):

  scheduling  cls(cfg, orch)  .key() -> waiting-order key or None (arrival order)
                              .before_step(ctx, inst)  (may preempt before the instance plans its step)
  retention   cls(ctx)        .on_turn_finish(inst, req, cached_blocks, now) -> True when it kept the blocks
                              .on_turn_arrival(inst, req)
                              .ranks: bool  (wants the invocation-distance ranking before a step)
                              .after_ranking(inst, prio)
  prefetch    cls(ctx)        .ranks: bool
                              .after_ranking(inst, now, prio, order)
                              .on_admit(req)  (a turn was admitted: wait for its blocks still on the link)

`ctx` is the shared state and machinery of common.PolicyContext (pins, timers, stats, tool-gap estimates,
the invocation-distance priorities).
"""

from __future__ import annotations

from collections.abc import Callable

_KINDS = ("scheduling", "retention", "prefetch")
_REGISTRY: dict[str, dict[str, type]] = {k: {} for k in _KINDS}


def _register(kind: str, name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in _REGISTRY[kind]:
            raise ValueError(f"{kind} policy {name!r} is already registered")
        cls.name = name
        _REGISTRY[kind][name] = cls
        return cls

    return deco


def register_scheduling(name: str) -> Callable[[type], type]:
    return _register("scheduling", name)


def register_retention(name: str) -> Callable[[type], type]:
    return _register("retention", name)


def register_prefetch(name: str) -> Callable[[type], type]:
    return _register("prefetch", name)


def unregister(kind: str, name: str) -> None:
    """Remove a registration (tests that register a toy policy clean up with this)."""
    _REGISTRY[kind].pop(name, None)


def names(kind: str) -> list[str]:
    return sorted(_REGISTRY[kind])


def lookup(kind: str, name: str) -> type:
    """The class registered as `name`; a ValueError naming the registered ones otherwise."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown policy kind {kind!r}; kinds: {', '.join(_KINDS)}")
    cls = _REGISTRY[kind].get(name)
    if cls is None:
        raise ValueError(f"unknown {kind} policy {name!r}; registered: {', '.join(names(kind)) or '(none)'}")
    return cls


def get_scheduling(name: str) -> type:
    return lookup("scheduling", name)


def get_retention(name: str) -> type:
    return lookup("retention", name)


def get_prefetch(name: str) -> type:
    return lookup("prefetch", name)
