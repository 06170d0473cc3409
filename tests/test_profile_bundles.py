"""Profile bundles as they define themselves: skew-fit buckets from meta.yaml, architecture files that
agree with the bundle's tables, and vLLM's async-scheduling lag on a crafted trace."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from frontend.compute.architecture import Architecture, find_architecture
from frontend.compute.batch import BatchShape
from frontend.compute.errors import ProfileError
from frontend.compute.profile import ProfileModel
from frontend.compute.roofline import Roofline
from frontend.compute.skew import SkewFit
from frontend.config.hardware import load_hardware
from frontend.config.loader import CONFIGS, parse_config, resolve
from frontend.config.models import load_model_spec
from frontend.session import simulate
from tests.conftest import BUNDLE, LSS, need_shared

QWEN32 = LSS / "profiles/RTXPRO6000/Qwen/Qwen3-32B"
QWEN_MOE = LSS / "profiles/RTXPRO6000/Qwen/Qwen3-30B-A3B-Instruct-2507"
SKEW_BUNDLES = [(QWEN32, 1), (QWEN32, 2), (QWEN_MOE, 1), (QWEN_MOE, 2)]


def _upper(bins: list[float], labels: list[str], label: str, above: float) -> float:
    """A value inside the bucket `label`: its upper edge, or `above` for the overflow bucket."""
    i = labels.index(label)
    return float(bins[i + 1]) if bins[i + 1] < 1e8 else above


@pytest.mark.parametrize(("bundle", "tp"), SKEW_BUNDLES)
def test_skew_lookup_uses_the_bundles_own_axes_and_default(bundle: Path, tp: int):
    """Every fitted bucket of the bundle is found again from a batch built inside its bins (the bins are the
    ones meta.yaml declares, not hard-coded); a bucket the fit lacks gives the fit's alpha_default."""
    need_shared()
    meta = yaml.safe_load((bundle / "bf16/meta.yaml").read_text())
    axes = meta["skew_fit"]["bucket_axes"]
    fit = SkewFit.from_bundle(meta, bundle / f"bf16/tp{tp}", tp, "meta")
    assert fit is not None and fit.alpha_default == meta["skew_fit"]["per_tp"][tp]["alpha_default"]
    rows = list(csv.DictReader((bundle / f"bf16/tp{tp}/skew_fit.csv").open()))
    assert len(rows) > 100
    sr_mid = {lab: (lo + hi) / 2 for lab, lo, hi in zip(axes["skew_rate_labels"], [0.0] + axes["skew_rate_bins"][1:-1],
                                                          [*axes["skew_rate_bins"][1:-1], 1.0], strict=True)}
    for r in rows:
        n = int(_upper(axes["n_bins"], axes["n_labels"], r["n_label"], 300))
        kv_max = int(_upper(axes["kv_big_bins"], axes["kv_big_labels"], r["kv_big_label"], 20000))
        kp = int(_upper(axes["kp_bins"], axes["kp_labels"], r["kp_label"], 9000))
        kv_min = 1
        kv_mean = kv_min + sr_mid[r["skew_rate_label"]] * (kv_max - kv_min)
        assert fit.alpha(int(r["pc"]), n, kv_mean, kv_min, kv_max, kp) == pytest.approx(float(r["alpha"])), r
    assert fit.misses == 0
    # a shape no bucket covers (n far past the profiled bins, a skew-rate bin the fit never saw at pc=0)
    keys = {(int(r["pc"]), r["n_label"], r["skew_rate_label"], r["kv_big_label"], r["kp_label"]) for r in rows}
    missing = next((0, n, s, k, "kp=0") for n in axes["n_labels"] for s in axes["skew_rate_labels"]
                   for k in axes["kv_big_labels"] if (0, n, s, k, "kp=0") not in keys)
    n = int(_upper(axes["n_bins"], axes["n_labels"], missing[1], 300))
    kv_max = int(_upper(axes["kv_big_bins"], axes["kv_big_labels"], missing[3], 20000))
    assert fit.alpha(0, n, 1 + sr_mid[missing[2]] * (kv_max - 1), 1, kv_max, 0) == fit.alpha_default


def test_skew_between_profiled_chunks_blends_the_two_neighbours():
    need_shared()
    meta = yaml.safe_load((QWEN32 / "bf16/meta.yaml").read_text())
    fit = SkewFit.from_bundle(meta, QWEN32 / "bf16/tp2", 2, "meta")
    args = (32, 700.0, 100, 2048, 0)  # n, kv mean/min/max, kp: sr = 0.31
    a256, a512 = fit.alpha(256, *args), fit.alpha(512, *args)
    assert a256 != a512
    assert fit.alpha(384, *args) == pytest.approx((a256 + a512) / 2)  # a raw chunk of 384 is not a miss
    assert fit.alpha(4096, *args) == fit.alpha(2048, *args)  # past the grid: the last profiled chunk


def test_skew_bins_come_from_meta(tmp_path: Path):
    """A bundle profiled with other n bins is bucketed with them."""
    tdir = tmp_path / "tp1"
    tdir.mkdir()
    (tdir / "skew_fit.csv").write_text("pc,n_label,skew_rate_label,kv_big_label,kp_label,alpha,n_samples\n"
                                       "0,few,lo,small,none,0.5,3\n0,many,lo,small,none,0.9,3\n")
    axes = {"n_bins": [0, 10, 10**6], "n_labels": ["few", "many"], "skew_rate_bins": [-0.01, 1.01],
            "skew_rate_labels": ["lo"], "kv_big_bins": [0, 10**9], "kv_big_labels": ["small"],
            "kp_bins": [-1, 10**9], "kp_labels": ["none"]}
    meta = {"skew_fit": {"enabled": True, "bucket_axes": axes, "per_tp": {1: {"alpha_default": 0.1}}}}
    fit = SkewFit.from_bundle(meta, tdir, 1, "m")
    assert fit.alpha(0, 10, 50, 10, 100, 0) == 0.5 and fit.alpha(0, 11, 50, 10, 100, 0) == 0.9
    assert SkewFit.from_bundle({"skew_fit": {"enabled": False}}, tdir, 1, "m") is None
    bad = {"skew_fit": {"enabled": True, "bucket_axes": {**axes, "n_labels": ["few"]}, "per_tp": {1: {"alpha_default": 0}}}}
    with pytest.raises(ProfileError, match="n_bins must be ascending with one more edge"):
        SkewFit.from_bundle(bad, tdir, 1, "m")


def _roof(model: str, hw: str = "RTXPRO6000", tp: int = 1) -> Roofline:
    return Roofline(load_model_spec(Path(model)), load_hardware(CONFIGS / f"hardware/{hw}.yaml"), tp=tp)


def test_architecture_per_family_matches_the_bundles():
    need_shared()
    pm = ProfileModel(QWEN32, "bf16", 2, _roof(str(LSS / "models/Qwen/Qwen3-32B.json"), tp=2))
    assert pm.arch.path.name == "qwen3.yaml"
    names = [o.name for o in pm.layer_ops(BatchShape([64], [0], 1))]
    assert names == ["layernorm", "qkv_proj", "qk_norm", "rotary_emb", "attention", "o_proj", "layernorm",
                     "gate_up_proj", "act_fn", "down_proj"]
    moe = ProfileModel(QWEN_MOE, "bf16", 1, _roof(str(LSS / "models/Qwen/Qwen3-30B-A3B-Instruct-2507.json")))
    assert moe.arch.path.name == "qwen3_moe.yaml"
    assert [o.name for o in moe.layer_ops(BatchShape([8], [0], 1))][-1] == "moe"
    llama = ProfileModel(BUNDLE, "bf16", 1, _roof(str(CONFIGS / "models/Llama-3.1-8B.json"), "RTX4090"))
    assert llama.arch.path.name == "llama.yaml" and llama.skew is None  # that bundle has no skew fit
    # every catalog model has an architecture file
    for m in CONFIGS.glob("models/*.json"):
        assert find_architecture({}, load_model_spec(m).model_type, None, None).is_file(), m


def test_architecture_bundle_mismatch_is_an_error_naming_both(tmp_path: Path):
    need_shared()
    with pytest.raises(ProfileError, match="profiled as architecture 'qwen3' but the model's model_type 'llama'"):
        ProfileModel(QWEN32, "bf16", 1, _roof(str(CONFIGS / "models/Llama-3.1-8B.json")))
    # a bundle whose dense table lacks an operator the architecture runs
    b = tmp_path / "bundle"
    shutil.copytree(QWEN32, b)
    dense = b / "bf16/tp1/dense.csv"
    dense.write_text("".join(x for x in dense.read_text().splitlines(keepends=True) if not x.startswith("qk_norm,")))
    with pytest.raises(ProfileError, match=r"qwen3.yaml runs dense operator 'qk_norm', but .*dense.csv has only"):
        ProfileModel(b, "bf16", 1, _roof(str(LSS / "models/Qwen/Qwen3-32B.json")))
    # a profiled operator the architecture does not run is reported, not silently dropped
    warnings: list[str] = []
    ProfileModel(QWEN32, "bf16", 1, _roof(str(LSS / "models/Qwen/Qwen3-32B.json")), arch_override="llama",
                 warn=warnings.append)
    assert any("['qk_norm'] are not in architecture llama.yaml" in w for w in warnings)


def test_architecture_file_errors(tmp_path: Path):
    p = tmp_path / "a.yaml"
    p.write_text("sequence: {pre_attn: [x]}\ncatalog: {dense: [y]}\n")
    with pytest.raises(ProfileError, match="operator 'x' of the sequence has no block"):
        Architecture(p)
    p.write_text("sequence: [1]\n")
    with pytest.raises(ProfileError, match="needs 'sequence' and 'catalog' mappings"):
        Architecture(p)


def _two_requests(tmp_path: Path, async_scheduling: bool):
    """A long prompt to an idle engine, then a short one arriving while the first prefill runs."""
    wl = tmp_path / f"w{async_scheduling}.jsonl"
    wl.write_text(json.dumps({"input_toks": 2000, "output_toks": 4, "arrival_time_ns": 0}) + "\n"
                  + json.dumps({"input_toks": 100, "output_toks": 3, "arrival_time_ns": 1_000_000}) + "\n")
    cfg = {"name": "t", "model": "Llama-3.1-8B", "instances": [{"name": "g", "hardware": "H100-SXM"}],
           "engine": {"max_num_batched_tokens": 4096, "async_scheduling": async_scheduling},
           "workload": {"kind": "jsonl", "path": str(wl)}}
    res, _ = simulate(resolve(parse_config(cfg)))
    reqs = {r.request_id: r for r in res.requests}
    return reqs["req-0"], reqs["req-1"], [(row[1], row[2]) for row in res.iterations.rows]


def test_async_scheduling_queues_at_the_step_boundary_and_lags_one_step(tmp_path: Path):
    a, b, steps = _two_requests(tmp_path, async_scheduling=True)
    (s1, e1), (s2, e2), (s3, e3) = steps[:3]
    assert a.queued_ns == 0 and a.first_token_ns == e1  # an idle engine takes a request at once
    assert b.queued_ns == e1  # taken from the input queue when the running step ends ...
    assert b.first_token_ns == e3  # ... after the step already planned ahead: one step later than sync
    a2, b2, steps2 = _two_requests(tmp_path, async_scheduling=False)
    assert b2.queued_ns == b2.arrival_ns and b2.first_token_ns == steps2[1][1]
    assert a2.first_token_ns == a.first_token_ns


@pytest.mark.parametrize(("tp1", "model", "hw"), [
    (BUNDLE / "bf16/tp1", CONFIGS / "models/Llama-3.1-8B.json", "RTX4090"),
    (QWEN32 / "bf16/tp1", LSS / "models/Qwen/Qwen3-32B.json", "RTXPRO6000"),
])
def test_hardware_entries_with_a_bundle_hold_the_calibrated_roofline_parameters(tp1: Path, model: Path, hw: str):
    """The roofline parameters of every hardware entry that has a bundle are what the documented method
    measures from it (frontend/compute/calibrate.py), not data-sheet guesses."""
    need_shared()
    from frontend.compute.calibrate import calibrate

    spec = load_hardware(CONFIGS / f"hardware/{hw}.yaml")
    c = calibrate(tp1, load_model_spec(model), spec)
    assert (c.gemm_flops, c.mem_bw, c.attention_flops, c.gemm_overlap_loss) == (
        spec.efficiency.gemm_flops, spec.efficiency.mem_bw, spec.efficiency.attention_flops,
        spec.efficiency.gemm_overlap_loss)
    assert (c.kernel_launch_ns, c.attention_floor_ns, c.attention_per_seq_ns, c.attention_tile_rows) == (
        spec.kernel_launch_ns, spec.attention_floor_ns, spec.attention_per_seq_ns, spec.attention_tile_rows)
    # the calibration does not start from the entry's own values
    blank = spec.model_copy(update={"attention_tile_rows": 1, "efficiency": spec.efficiency.model_copy(
        update={"gemm_overlap_loss": 0.0})})
    assert calibrate(tp1, load_model_spec(model), blank) == c
    assert 0.5 < c.gemm_flops <= 1.01 and 0.5 < c.mem_bw <= 1.0  # physical: at most the data-sheet figure


def test_requests_held_for_the_next_step_count_as_load():
    """Routers see requests a busy engine core has not queued yet (least_loaded must not pile them up)."""
    from frontend.config.schema import EngineConfig
    from frontend.instance.kv import BlockPool
    from frontend.instance.scheduler import Scheduler
    from frontend.workload.request import Request

    s = Scheduler("i", EngineConfig(), BlockPool(100, 16), 4096)
    s.receive(Request("a", 5, 10, 2), 5, busy=True)
    assert s.load() == 1 and not s.waiting and s.incoming
    assert s.take_incoming(9) and s.waiting[0].queued_ns == 9 and not s.incoming
    s.receive(Request("b", 10, 10, 2), 10, busy=False)
    assert s.waiting[-1].queued_ns == 10
