"""Profile bundles, interpolation accuracy on held-out points, validate, and power."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from frontend.cli import app
from frontend.compute.batch import BatchShape
from frontend.compute.interp import Grid4D, Table1D
from frontend.config.hardware import HardwareSpec
from frontend.metrics.power import InstancePower
from tests.conftest import BUNDLE, SHAREGPT, VLLM_REF, need_shared

runner = CliRunner()
TP1 = BUNDLE / "bf16" / "tp1"


def test_table1d_interpolates_clamps_and_warns_once():
    seen = []
    t = Table1D([1, 2, 4], [10.0, 20.0, 40.0], "x.tokens", lambda a, x, lo, hi: seen.append((a, x)))
    assert t(3) == 30.0 and t(0) == 10.0 and t(8) == 80.0
    assert seen == [("x.tokens", 8)]


def test_dense_leave_one_out_error_bounded():
    need_shared()
    by: dict[str, list[tuple[int, float]]] = {}
    for r in csv.DictReader((TP1 / "dense.csv").open()):
        by.setdefault(r["layer"], []).append((int(r["tokens"]), float(r["time_us"])))
    errs = []
    for pts in by.values():
        pts.sort()
        for i in range(1, len(pts) - 1):
            keep = pts[:i] + pts[i + 1:]
            t = Table1D([k for k, _ in keep], [v for _, v in keep], "t")
            errs.append(abs(t(pts[i][0]) - pts[i][1]) / pts[i][1])
    errs.sort()
    assert len(errs) > 1000
    assert sum(errs) / len(errs) < 0.03  # mean held-out error under 3%
    assert errs[int(0.9 * len(errs))] < 0.06


def test_attention_leave_one_out_error_bounded():
    need_shared()
    rows = [(int(r["prefill_chunk"]), int(r["kv_prefill"]), int(r["n_decode"]), int(r["kv_decode"]),
             float(r["time_us"])) for r in csv.DictReader((TP1 / "attention.csv").open())]
    interior = [r for r in rows if r[2] > 2 and r[3] > 32 and r[3] < 16384 and r[0] == 0]
    rng = random.Random(0)
    sample = rng.sample(interior, 40)
    errs = []
    for held in sample:
        g = Grid4D([r for r in rows if r is not held], "attention")
        pred = g(held[0], held[1], held[2], held[3])
        errs.append(abs(pred - held[4]) / held[4])
    assert sum(errs) / len(errs) < 0.08, sorted(errs)[-5:]


def test_profile_model_uses_tables():
    need_shared()
    from frontend.compute.profile import ProfileModel
    from frontend.compute.roofline import Roofline
    from frontend.config.hardware import load_hardware
    from frontend.config.loader import CONFIGS
    from frontend.config.models import load_model_spec

    roof = Roofline(load_model_spec(CONFIGS / "models/Llama-3.1-8B.json"), load_hardware(CONFIGS / "hardware/RTX4090.yaml"))
    pm = ProfileModel(BUNDLE, "bf16", 1, roof)
    dense = {r["layer"] + ":" + r["tokens"]: float(r["time_us"]) for r in csv.DictReader((TP1 / "dense.csv").open())}
    ops = {o.name: o for o in pm.layer_ops(BatchShape(q=[64], ctx=[0], num_sampled=1))}
    assert ops["qkv_proj"].duration_ns == round(dense["qkv_proj:64"] * 1000)
    assert ops["qkv_proj"].flops > 0  # work comes from the roofline model
    att = {(int(r["prefill_chunk"]), int(r["kv_prefill"]), int(r["n_decode"]), int(r["kv_decode"])): float(r["time_us"])
           for r in csv.DictReader((TP1 / "attention.csv").open())}
    # 8 decodes with 255 cached tokens each: kv length 256 per sequence
    t = pm.attention_ns(BatchShape(q=[1] * 8, ctx=[255] * 8, num_sampled=8))
    assert abs(t - att[(0, 0, 8, 256)] * 1000) < 1
    with pytest.raises(Exception, match="no fp8/meta.yaml"):
        ProfileModel(BUNDLE, "fp8", 1, roof)


def test_run_with_profile_and_validate(tmp_path: Path, repo: Path):
    need_shared()
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", str(repo / "configs/examples/rtx4090-llama3.1-8b.yaml"), "--quiet", "--out", str(out),
                            "--workload", str(SHAREGPT), "--num-requests", "40", "--profile", str(BUNDLE),
                            "--engine-meta", str(VLLM_REF / "meta.json")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["validate", "--run", str(out), "--reference", str(VLLM_REF)])
    assert r.exit_code == 2 and "40 requests but the reference" in r.output  # a 40-request run is not the 300
    r = runner.invoke(app, ["validate", "--run", str(out), "--reference", str(VLLM_REF), "--partial"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "validate.json").read_text())
    assert set(res["latency"]) == {"ttft", "tpot", "e2e"}
    assert set(res["latency"]["ttft"]) == {"mean", "p50", "p90", "p95", "p99"}
    assert (out / "validate_cdf.png").stat().st_size > 1000
    assert (out / "validate_timeseries.png").is_file()


def test_engine_from_meta():
    need_shared()
    from frontend.validation.reference import engine_from_meta

    e = engine_from_meta(VLLM_REF / "meta.json")
    assert e["max_num_seqs"] == 256 and e["max_num_batched_tokens"] == 2048 and e["block_size"] == 16
    assert e["num_gpu_blocks_override"] == 2588 and e["enable_prefix_caching"] is True and e["dtype"] == "bf16"


def test_power_hand_calculation():
    hw = HardwareSpec(name="h", peak_tflops={"bf16": 100}, hbm_capacity_gib=10, hbm_bw_gbps=100, tdp_w=500,
                      active_w=400, idle_w=50, standby_w=100,
                      power={"dram_pj_per_bit": 5.0, "link_pj_per_bit": 10.0, "host_dram_pj_per_bit": 20.0})
    p = InstancePower(hw, num_npus=2)
    # idle 1 ms, then an iteration of 10 ms with 6 ms of compute, 1 GB HBM per NPU, 1 MB link, 2 MB host
    e = p.iteration(start_ns=1_000_000, duration_ns=10_000_000, compute_ns=6_000_000, hbm_bytes_per_npu=10**9,
                    comm_bytes=10**6, host_bytes=2 * 10**6)
    compute = 2 * 400 * 0.006
    standby = 2 * 100 * 0.004
    hbm = 2 * 1e9 * 8 * 5e-12
    link = 1e6 * 8 * 10e-12
    host = 2e6 * 8 * 20e-12
    assert e == pytest.approx(compute + standby + hbm + link + host)
    p.finish(end_ns=21_000_000)  # 10 ms idle after
    assert p.energy.idle_j == pytest.approx(2 * 50 * 0.001 + 2 * 50 * 0.010)
    assert p.energy.total_j == pytest.approx(compute + standby + hbm + link + host + 2 * 50 * 0.011)


def test_summary_energy_fields(tmp_path: Path):
    import yaml

    from tests.conftest import small_run_dict

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(small_run_dict()))
    out = tmp_path / "o"
    assert runner.invoke(app, ["run", str(p), "--quiet", "--out", str(out)]).exit_code == 0
    s = json.loads((out / "summary.json").read_text())
    e = s["energy"]
    assert e["total_j"] > 0 and e["average_power_w"] > 0
    assert e["output_tokens_per_joule"] == pytest.approx(1 / e["energy_per_output_token_j"], rel=1e-3)
    rows = list(csv.DictReader((out / "iterations.csv").open()))
    assert sum(float(r["energy_j"]) for r in rows) <= e["total_j"] + 0.01
