"""Architecture files: the operators of one forward pass and the profile table each is read from.

A file (`configs/architectures/<family>.yaml`, or the bundle format's own files, which share the
layout) has `sequence:` (prologue, pre_attn, post_attn, mlp_dense, mlp_moe, head: ordered operator
names) and `catalog:` (blocks dense / per_sequence / attention / moe, each a list of names or a
mapping name -> details; an operator's block is the table it is looked up in). `tp_stable` (a list,
or a per-entry flag) marks operators whose latency does not depend on the TP degree.

The family is chosen from the model's Hugging Face `model_type`; a bundle records the family it was
profiled as (`meta.yaml: architecture`) and the two must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from frontend.compute.errors import ProfileError

REPO = Path(__file__).resolve().parents[2]
ARCH_DIR = REPO / "configs" / "architectures"
# Hugging Face model_type -> architecture file. Families whose decoder layer has the same operators
# under the same names share a file (Mistral and Qwen2 layers are Llama's; Qwen2's q/k/v bias is
# inside qkv_proj).
ARCH_BY_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "qwen3",
                      "qwen3_moe": "qwen3_moe", "mixtral": "mixtral", "deepseek_v3": "deepseek_v3"}
CATEGORIES = ("dense", "per_sequence", "attention", "moe")


class ArchitectureError(ProfileError):
    pass


class Architecture:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            raw = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ArchitectureError(f"{path}: cannot read the architecture file ({e})") from None
        try:
            seq = raw["sequence"]
            cat = raw["catalog"]
            if not isinstance(seq, dict) or not isinstance(cat, dict):
                raise TypeError
        except (KeyError, TypeError):
            raise ArchitectureError(f"{path}: an architecture file needs 'sequence' and 'catalog' mappings") from None
        self.prologue = list(seq.get("prologue") or [])
        self.layer = list(seq.get("pre_attn") or []) + list(seq.get("post_attn") or [])
        self.mlp_dense = list(seq.get("mlp_dense") or [])
        self.mlp_moe = list(seq.get("mlp_moe") or [])
        self.head = list(seq.get("head") or [])
        self.category: dict[str, str] = {}
        self.tp_stable: set[str] = set(cat.get("tp_stable") or [])
        for c in CATEGORIES:
            entries: Any = cat.get(c) or []
            for name in entries:  # a list, or a mapping name -> details
                if name in self.category:
                    raise ArchitectureError(f"{path}: operator {name!r} is in both catalog.{self.category[name]} "
                                            f"and catalog.{c}")
                self.category[name] = c
                if isinstance(entries, dict) and isinstance(entries[name], dict) and entries[name].get("tp_stable"):
                    self.tp_stable.add(name)
        for name in self.used(True) + self.used(False):
            if name not in self.category:
                raise ArchitectureError(f"{path}: operator {name!r} of the sequence has no block in the catalog")

    def used(self, moe: bool) -> list[str]:
        """Every operator one forward pass of a dense (or MoE) model runs, in order, without repeats."""
        names = self.prologue + self.layer + (self.mlp_moe if moe else self.mlp_dense) + self.head
        return list(dict.fromkeys(names))


def family_of(model_type: str) -> str | None:
    return ARCH_BY_MODEL_TYPE.get(model_type)


def family_layer_ops(model_type: str) -> list[str]:
    """Operators of one decoder layer in the shipped architecture file of a model family ([] if unknown)."""
    fam = family_of(model_type)
    if fam is None or not (ARCH_DIR / f"{fam}.yaml").is_file():
        return []
    return Architecture(ARCH_DIR / f"{fam}.yaml").layer


def find_architecture(meta: dict, model_type: str, override: str | None, base_dir: Path | None) -> Path:
    """The architecture file for a model and a bundle: explicit override, else the model's family."""
    if override:
        p = Path(override)
        for c in ([base_dir / p] if base_dir else []) + [p, ARCH_DIR / f"{override}.yaml"]:
            if c.is_file():
                return c
        raise ArchitectureError(f"compute.architecture: {override!r} is neither a file nor one of "
                                f"{sorted(x.stem for x in ARCH_DIR.glob('*.yaml'))}")
    bundle_arch = str(meta.get("architecture") or "")
    bundle_family = family_of(bundle_arch) or bundle_arch
    family = family_of(model_type) if model_type else bundle_family
    if model_type and family is None:
        raise ArchitectureError(f"model_type {model_type!r} has no architecture file (known families: "
                                f"{sorted(ARCH_BY_MODEL_TYPE)}); write one and pass compute.architecture")
    if bundle_arch and model_type and bundle_family != family:
        raise ArchitectureError(f"the bundle was profiled as architecture {bundle_arch!r} but the model's "
                                f"model_type {model_type!r} is architecture {family!r}: wrong bundle for this "
                                "model, or pass compute.architecture to override")
    p = ARCH_DIR / f"{family}.yaml"
    if not family or not p.is_file():
        raise ArchitectureError(f"no architecture file for {family or 'this model'!r} in configs/architectures/ "
                                "(pass compute.architecture)")
    return p
