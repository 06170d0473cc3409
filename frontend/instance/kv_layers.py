"""Per-layer KV placement: the KV cache of chosen layers lives in a lower tier (host DRAM or CXL).

A KV block spans every layer; a layer placed in tier T keeps its share of every block there, so a block takes
block_bytes x (layers in HBM / layers) of HBM and block_bytes x (layers in T / layers) of T. The block count is
what both hold: min(free HBM / HBM share, T's capacity / T's share) (checked at load, with an error naming the
tier when not even one max-length sequence fits). Each iteration, a placed layer's attention reads its KV over
T's link: the KV of every sequence's cached context for that layer is loaded to HBM ahead of the layer's
attention (a MEM_LOAD of the layer, overlapping the previous layers' compute, as the existing tier model
loads), and the step's new tokens' KV of that layer is written back (a MEM_STORE). This is the KV half of
FlexGen's per-layer placement (Sheng et al., ICML'23, arXiv 2303.06865: KV cache percentages on CPU with
attention on the GPU, streamed layer by layer).
"""

from __future__ import annotations

from frontend.errors import ConfigError


def parse_layers(spec: str, num_layers: int, where: str) -> list[int]:
    """Layer indices of a pattern: 'a-b', 'a-', 'n', 'a-b/s', comma-separated."""
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        step = 1
        if "/" in part:
            part, st = part.split("/", 1)
            if not st.isdigit() or int(st) < 1:
                raise ConfigError(f"{where}: bad step in {spec!r} (want 'a-b/s' with s >= 1)")
            step = int(st)
        if "-" in part:
            a, b = part.split("-", 1)
            if not a.isdigit() or (b and not b.isdigit()):
                raise ConfigError(f"{where}: bad range in {spec!r} (want 'a-b', 'a-' or 'n')")
            lo, hi = int(a), (int(b) if b else num_layers - 1)
        elif part.isdigit():
            lo = hi = int(part)
        else:
            raise ConfigError(f"{where}: bad layer pattern {spec!r} (want ranges like '0-15', '16-', '0-31/2')")
        if hi >= num_layers or lo > hi:
            raise ConfigError(f"{where}: layers {part!r} outside 0-{num_layers - 1} (the model has {num_layers})")
        out.update(range(lo, hi + 1, step))
    if not out:
        raise ConfigError(f"{where}: {spec!r} names no layer")
    return sorted(out)


def layer_tiers(entries, num_layers: int, tier_names: set[str]) -> dict[int, str]:
    """Layer -> tier name for the layers not in HBM; errors on an unknown tier or a layer placed twice."""
    placed: dict[int, str] = {}
    for k, e in enumerate(entries):
        where = f"placement.kv_layers[{k}]"
        if e.tier != "hbm" and e.tier not in tier_names:
            raise ConfigError(f"{where}.tier: {e.tier!r} is neither 'hbm' nor a kv.tiers entry "
                              f"(have {sorted(tier_names)})")
        for li in parse_layers(e.layers, num_layers, f"{where}.layers"):
            if li in placed:
                raise ConfigError(f"{where}.layers: layer {li} is placed twice")
            placed[li] = e.tier
    return {li: t for li, t in placed.items() if t != "hbm"}
