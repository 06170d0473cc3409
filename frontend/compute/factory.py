"""Pick the compute model an instance uses."""

from __future__ import annotations

from typing import Protocol

from frontend.compute.batch import BatchShape, OpCost
from frontend.compute.roofline import Roofline
from frontend.config.loader import ResolvedInstance
from frontend.config.schema import ComputeConfig


class ComputeModel(Protocol):
    def prologue_ops(self, shape: BatchShape) -> list[OpCost]: ...

    def layer_ops(self, shape: BatchShape) -> list[OpCost]: ...

    def epilogue_ops(self, shape: BatchShape) -> list[OpCost]: ...


def make_compute_model(inst: ResolvedInstance, cfg: ComputeConfig, base_dir=None, warn=None) -> ComputeModel:
    roof = Roofline(inst.model, inst.hardware, inst.engine.dtype, inst.tp,
                    None if inst.engine.kv_cache_dtype == "auto" else inst.engine.kv_cache_dtype)
    if cfg.kind == "roofline":
        return roof
    from frontend.compute.profile import load_profile_model

    return load_profile_model(inst, cfg, roof, base_dir=base_dir, warn=warn)
