"""Measured per-operator latencies (profile bundles) as a compute model.

Bundle layout (a model folder): `<dtype>/meta.yaml` and `<dtype>/tp<N>/`
holding `dense.csv` (layer, tokens, time_us), `per_sequence.csv` (layer,
sequences, time_us), `attention.csv` (prefill_chunk, kv_prefill, n_decode,
kv_decode, time_us), optionally `moe.csv` (tokens, activated_experts, time_us),
`lora.csv` (module, rank, adapters, tokens, time_us; frontend/compute/lora_table.py)
and `skew_fit.csv`. Every time is one decoder layer's operator; the iteration
is the architecture's operator sequence over all layers plus the once-per-pass
operators.

Attention is looked up at prefill_chunk = sum of the prefill sequences' new
tokens, kv_prefill = sum of their cached tokens, n_decode = decode sequences,
kv_decode = their mean context (the uniform-batch point with the same total KV
read). When the bundle carries a fitted skew table (meta skew_fit.enabled), a
heterogeneous decode batch is corrected toward the lookup at its longest
context: t = t_mean + alpha * (t_max - t_mean), alpha from the bucket the
bundle's own meta.yaml defines (`frontend/compute/skew.py`). The operators and
the table each is read from come from the model family's architecture file
(`frontend/compute/architecture.py`); an operator without a table is an error.
FLOPs and bytes for the trace's num_ops/tensor_size come from the roofline
model (a profile measures time, not work).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from frontend.compute.architecture import Architecture, find_architecture
from frontend.compute.batch import BatchShape, OpCost
from frontend.compute.errors import ProfileError
from frontend.compute.interp import Grid4D, Table1D
from frontend.compute.lora_table import LoRATable
from frontend.compute.roofline import Roofline
from frontend.compute.skew import SkewFit

if TYPE_CHECKING:
    from frontend.compute.moe_routing import RoutingResult

__all__ = ["ProfileError", "ProfileModel", "load_profile_model"]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


class ProfileModel:
    """Per-operator latency from a measured bundle for one (model, dtype, TP)."""

    def __init__(self, model_dir: Path, dtype: str, tp: int, roofline: Roofline, arch_override: str | None = None,
                 base_dir: Path | None = None, warn: Callable[[str], None] | None = None,
                 expert_parallel: bool = False) -> None:
        self.dir = Path(model_dir)
        vdir = self.dir / dtype
        if not (vdir / "meta.yaml").is_file():
            have = sorted(p.name for p in self.dir.iterdir() if (p / "meta.yaml").is_file()) if self.dir.is_dir() else []
            raise ProfileError(f"{self.dir}: no {dtype}/meta.yaml (bundle has dtypes {have or 'none'})")
        self.meta = yaml.safe_load((vdir / "meta.yaml").read_text()) or {}
        tdir = vdir / f"tp{tp}"
        if not tdir.is_dir():
            have = sorted(p.name for p in vdir.glob("tp*"))
            raise ProfileError(f"{vdir}: no tp{tp}/ tables (bundle has {have})")
        self.arch = Architecture(find_architecture(self.meta, roofline.model.model_type, arch_override, base_dir))
        self.roof = roofline
        self._warn = warn
        self._warned: set[str] = set()
        self.dense = self._tables(tdir / "dense.csv", "tokens")
        self.per_seq = self._tables(tdir / "per_sequence.csv", "sequences")
        rows = [(int(r["prefill_chunk"]), int(r["kv_prefill"]), int(r["n_decode"]), int(r["kv_decode"]),
                 float(r["time_us"]) * 1000.0) for r in _read_csv(tdir / "attention.csv")]
        self.attn = Grid4D(rows, "attention", self._extrapolating)
        self.moe = None
        # with expert parallelism every rank holds whole experts (their own TP size is 1, vLLM FusedMoE with EP),
        # so the expert table is the TP-1 one whatever the attention's TP
        mdir = vdir / "tp1" if expert_parallel else tdir
        if (mdir / "moe.csv").is_file():
            by_ae: dict[int, list[tuple[int, float]]] = {}
            for r in _read_csv(mdir / "moe.csv"):
                by_ae.setdefault(int(r["activated_experts"]), []).append((int(r["tokens"]), float(r["time_us"]) * 1e3))
            self.moe = {ae: Table1D([k for k, _ in sorted(v)], [t for _, t in sorted(v)], f"moe[{ae}].tokens",
                                    self._extrapolating) for ae, v in by_ae.items()}
        # the batched LoRA kernels (lora.csv, optional: without it LoRA layers are priced by the roofline)
        self.lora = LoRATable.read(tdir / "lora.csv", self._extrapolating) if (tdir / "lora.csv").is_file() else None
        self.skew = SkewFit.from_bundle(self.meta, tdir, tp, str(vdir / "meta.yaml"))
        self._check_operators(tdir, mdir)

    def _check_operators(self, tdir: Path, mdir: Path) -> None:
        """Every operator the architecture runs has a table; a profiled operator nobody runs is reported."""
        moe = self.roof.model.is_moe
        tables = {"dense": self.dense, "per_sequence": self.per_seq}
        used = self.arch.used(moe)
        for name in used:
            cat = self.arch.category[name]
            if cat in tables and name not in tables[cat]:
                raise ProfileError(f"architecture {self.arch.path.name} runs {cat} operator {name!r}, but "
                                   f"{tdir}/{cat}.csv has only {sorted(tables[cat])}")
            if cat == "moe" and self.moe is None:
                raise ProfileError(f"architecture {self.arch.path.name} runs MoE operator {name!r}, but {mdir} "
                                   "has no moe.csv")
        for cat, table in tables.items():
            unused = sorted(set(table) - set(used))
            if unused and self._warn is not None:
                self._warn(f"profile {tdir}: {cat}.csv operator(s) {unused} are not in architecture "
                           f"{self.arch.path.name}; their time is not counted")

    def _extrapolating(self, axis: str, x: float, lo: int, hi: int) -> None:
        if axis not in self._warned and self._warn is not None:
            self._warned.add(axis)
            self._warn(f"profile {self.dir.name}: {axis}={x:g} is outside the profiled range [{lo}, {hi}]; "
                       "extrapolating linearly from the last two points")

    def _tables(self, path: Path, key: str) -> dict[str, Table1D]:
        if not path.is_file():
            raise ProfileError(f"{path}: missing")
        by: dict[str, list[tuple[int, float]]] = {}
        for r in _read_csv(path):
            by.setdefault(r["layer"], []).append((int(r[key]), float(r["time_us"]) * 1000.0))
        out = {}
        for name, pts in by.items():
            pts.sort()
            out[name] = Table1D([k for k, _ in pts], [t for _, t in pts], f"{name}.{key}", self._extrapolating)
        return out

    # ---- lookups ----
    def _op(self, name: str, ns: float, roof: dict[str, OpCost]) -> OpCost:
        rc = roof.get(name)
        return OpCost(name, max(1, int(round(ns))), rc.flops if rc else 0, rc.bytes if rc else 0)

    def _lookup(self, name: str, shape: BatchShape) -> float:
        cat = self.arch.category[name]
        if cat == "dense":
            return self.dense[name](max(1, shape.num_tokens))
        if cat == "per_sequence":
            return self.per_seq[name](max(1, shape.num_seqs))
        if cat == "attention":
            return self.attention_ns(shape)
        if cat == "moe":
            return self.moe_ns(shape.num_tokens)
        raise ProfileError(f"unknown category {cat}")

    def attention_ns(self, shape: BatchShape) -> float:
        pc = kp = nd = kd_sum = 0
        kd_max = 0
        kd_min = 1 << 62
        for q, c in zip(shape.q, shape.ctx, strict=True):
            if q == 1 and c > 0:
                nd += 1
                kv = c + 1
                kd_sum += kv
                kd_max = max(kd_max, kv)
                kd_min = min(kd_min, kv)
            else:
                pc += q
                kp += c
        kd = kd_sum / nd if nd else 0
        t = self.attn(pc, kp, nd, kd)
        if self.skew is not None and nd > 1 and kd_max > kd:
            alpha = self.skew.alpha(pc, nd, kd, kd_min, kd_max, kp)
            if alpha:
                t_max = self.attn(pc, kp, nd, kd_max)
                if t_max > t:  # interpolation can invert the endpoints at a grid edge: no correction then
                    t += alpha * (t_max - t)
        return t

    def moe_ns(self, tokens: int) -> float:
        if not self.moe:
            raise ProfileError("the architecture has MoE operators but the bundle has no moe.csv")
        m = self.roof.model
        e, k = m.num_experts, max(1, m.experts_per_token)
        touched = e * (1 - (1 - k / e) ** max(1, tokens))
        return self._moe_at(tokens, touched)

    def moe_ops(self, tokens: int, routing: RoutingResult) -> list[OpCost]:
        """The MoE block under expert parallelism: the slowest EP rank's share of the measured block.

        moe.csv times the whole block for `tokens` tokens, k experts each, with exactly `activated_experts`
        distinct experts: its work is tokens x k token-expert rows over that many experts' weights. An EP rank
        that computes a_r rows over x_r of its local experts does the same work as the table's point
        (a_r / k tokens, x_r experts), so that point is its time; the block costs the slowest rank's. Points
        below one token or below the table's fewest activated experts are read at those edges (a lower
        bound the table cannot resolve).
        """
        if not self.moe:
            raise ProfileError("expert parallelism needs the bundle's moe.csv (tp1/moe.csv: whole experts)")
        k = max(1, self.roof.model.experts_per_token)
        worst = 0.0
        for a, x in zip(routing.assignments_per_rank, routing.experts_per_rank, strict=True):
            if a <= 0:
                continue
            worst = max(worst, self._moe_at(max(1.0, a / k), x))
        roof = {o.name: o for o in self.roof.moe_ops(tokens, routing)}
        return [self._op("moe", worst, roof)]

    def _moe_at(self, tokens: float, activated: float) -> float:
        """moe.csv at (tokens, activated experts): linear in tokens per column, then between columns."""
        assert self.moe is not None
        aes = sorted(self.moe)
        lo = max([a for a in aes if a <= activated] or [aes[0]])
        hi = min([a for a in aes if a >= activated] or [aes[-1]])
        a = self.moe[lo](tokens)
        if hi == lo:
            return a
        return a + (activated - lo) / (hi - lo) * (self.moe[hi](tokens) - a)

    # ---- ComputeModel ----
    def prologue_ops(self, shape: BatchShape) -> list[OpCost]:
        roof = {o.name: o for o in self.roof.prologue_ops(shape)}
        return [self._op(n, self._lookup(n, shape), roof) for n in self.arch.prologue]

    def layer_ops(self, shape: BatchShape) -> list[OpCost]:
        roof = {o.name: o for o in self.roof.layer_ops(shape)}
        names = self.arch.layer + (self.arch.mlp_moe if self.roof.model.is_moe else self.arch.mlp_dense)
        return [self._op(n, self._lookup(n, shape), roof) for n in names]

    def epilogue_ops(self, shape: BatchShape) -> list[OpCost]:
        roof = {o.name: o for o in self.roof.epilogue_ops(shape)}
        return [self._op(n, self._lookup(n, shape), roof) for n in self.arch.head]


def load_profile_model(inst, cfg, roof: Roofline, base_dir: Path | None = None, warn=None) -> ProfileModel | Roofline:
    """The instance's bundle (from --profile / compute.profile, or its hardware entry), else roofline + warning."""
    path = cfg.profile
    if path is None:
        key = f"{inst.model.name}/{inst.engine.dtype}/tp{inst.tp}"
        path = inst.hardware.profiles.get(key) or inst.hardware.profiles.get(inst.model.name)
        if path is None:
            if warn:
                warn(f"{inst.name}: no profile bundle for {key} on {inst.hardware.name}; using the roofline model")
            return roof
    if inst.model.dense_prefix_layers:
        raise ProfileError(f"{inst.name}: model {inst.model.name} has {inst.model.dense_prefix_layers} leading dense "
                           "layers, which the profile path does not cost; use --compute roofline")
    p = Path(path)
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if not p.is_dir():
        raise ProfileError(f"profile bundle {path} is not a directory")
    return ProfileModel(p, inst.engine.dtype, inst.tp, roof, cfg.architecture, base_dir, warn,
                        expert_parallel=inst.enable_expert_parallel)
