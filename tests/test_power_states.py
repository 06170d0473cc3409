"""Power states between iterations (issue 16 item 3): idle -> deep idle after idle_to_deep_idle_ms, wake-ups
counted with their energy (their latency reported, not applied), and energy per request / per output token."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from frontend.cli import app
from frontend.config.hardware import HardwareSpec
from frontend.metrics.power import InstancePower
from tests.conftest import REPO, small_run_dict

runner = CliRunner()
COMPONENTS = ("compute_j", "standby_j", "idle_j", "hbm_j", "link_j", "host_j")


def _hw(**over) -> HardwareSpec:
    d = dict(name="h", peak_tflops={"bf16": 100}, hbm_capacity_gib=10, hbm_bw_gbps=100, tdp_w=500, active_w=400,
             idle_w=50, standby_w=100, power={"dram_pj_per_bit": 5.0, "link_pj_per_bit": 10.0,
                                              "host_dram_pj_per_bit": 20.0})
    d.update(over)
    return HardwareSpec(**d)


def _states_hw() -> HardwareSpec:
    return _hw(deep_idle_w=10, idle_to_deep_idle_ms=5, wake_latency_us=200, wake_energy_j=0.5)


def test_deep_idle_gap_hand_calculation():
    p = InstancePower(_states_hw(), num_npus=2)
    # iteration 1 at t=0 (no gap), 1 ms, all compute
    e1 = p.iteration(0, 1_000_000, 1_000_000, 0, 0, 0)
    assert e1 == pytest.approx(2 * 400 * 0.001)
    # a 20 ms gap: 5 ms at idle, 15 ms in deep idle, then a wake-up
    p.iteration(21_000_000, 1_000_000, 1_000_000, 0, 0, 0)
    # a 2 ms gap: idle only, no wake-up
    p.iteration(24_000_000, 1_000_000, 1_000_000, 0, 0, 0)
    # the trailing 75 ms: 5 ms idle, 70 ms deep, nothing wakes the GPUs
    p.finish(100_000_000)
    e = p.energy
    assert e.idle_j == pytest.approx(2 * 50 * (0.005 + 0.002 + 0.005))
    assert e.deep_idle_j == pytest.approx(2 * 10 * (0.015 + 0.070))
    assert e.wake_j == pytest.approx(2 * 0.5)
    assert p.wakeups == 1 and p.wake_latency_ns == 200_000
    assert e.compute_j == pytest.approx(3 * 2 * 400 * 0.001)
    assert e.total_j == pytest.approx(sum(getattr(e, k) for k in COMPONENTS) + e.deep_idle_j + e.wake_j)


def test_gap_at_threshold_stays_idle():
    p = InstancePower(_states_hw(), num_npus=1)
    p.iteration(0, 1_000, 1_000, 0, 0, 0)
    p.iteration(5_001_000, 1_000, 1_000, 0, 0, 0)  # exactly 5 ms: never leaves idle
    assert p.wakeups == 0 and p.energy.deep_idle_j == 0 and p.energy.wake_j == 0
    assert p.energy.idle_j == pytest.approx(50 * 0.005)


def test_unset_states_same_floats_as_plain_idle():
    plain, neutral = InstancePower(_hw(), 2), InstancePower(_hw(wake_latency_us=0, wake_energy_j=0), 2)
    for p in (plain, neutral):
        p.iteration(3_000_000, 7_000_000, 4_000_000, 10**9, 10**6, 10**6)
        p.iteration(10**9, 7_000_000, 4_000_000, 10**9, 10**6, 10**6)
        p.finish(5 * 10**9)
    assert vars(plain.energy) == vars(neutral.energy) and plain.wakeups == 0
    assert plain.energy.idle_j == 2 * 50 * 3_000_000 * 1e-9 + 2 * 50 * (10**9 - 10_000_000) * 1e-9 \
        + 2 * 50 * (5 * 10**9 - 10**9 - 7_000_000) * 1e-9


def test_threshold_needs_deep_idle_power():
    with pytest.raises(ValidationError, match="deep_idle_w"):
        _hw(idle_to_deep_idle_ms=5)


def _hw_file(tmp_path: Path, name: str, **fields) -> str:
    d = yaml.safe_load((REPO / "configs" / "hardware" / "H100-SXM.yaml").read_text())
    d.update(fields)
    p = tmp_path / f"hw_{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


def _run(tmp_path: Path, tag: str, cfg: dict) -> Path:
    c = tmp_path / f"{tag}.yaml"
    c.write_text(yaml.safe_dump(cfg))
    out = tmp_path / f"o_{tag}"
    r = runner.invoke(app, ["run", str(c), "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_neutral_fields_leave_outputs_byte_identical(tmp_path: Path):
    a = _run(tmp_path, "plain", small_run_dict())
    hw = _hw_file(tmp_path, "neutral", idle_to_deep_idle_ms=None, deep_idle_w=None, wake_latency_us=0,
                  wake_energy_j=0)
    b = _run(tmp_path, "neutral", small_run_dict(instances=[{"name": "g", "hardware": hw}]))
    for f in ("summary.json", "iterations.csv", "requests.csv"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    e = json.loads((a / "summary.json").read_text())["energy"]
    assert "deep_idle_j" not in e["breakdown_j"] and "wakeups" not in e


def _sparse(hw: str, rate: float = 0.5, n: int = 6) -> dict:
    d = small_run_dict(instances=[{"name": "g", "hardware": hw}])
    d["workload"]["num_requests"] = n
    d["workload"]["arrival"]["rate_per_s"] = rate  # requests seconds apart: every gap reaches deep idle
    return d


def test_deep_idle_end_to_end_matches_iterations(tmp_path: Path):
    after_ms, deep_w, wake_j, wake_us = 50.0, 20.0, 0.3, 150.0
    hwp = _hw_file(tmp_path, "states", idle_to_deep_idle_ms=after_ms, deep_idle_w=deep_w, wake_energy_j=wake_j,
                   wake_latency_us=wake_us)
    out = _run(tmp_path, "states", _sparse(hwp))
    s = json.loads((out / "summary.json").read_text())
    e = s["energy"]
    hw = HardwareSpec(**yaml.safe_load(Path(hwp).read_text()))
    rows = list(csv.DictReader((out / "iterations.csv").open()))
    after_ns = after_ms * 1e6
    end_ns = round(s["simulated_duration_s"] * 1e9)
    idle = deep = 0.0
    wakes = 0
    last = 0
    for r in rows:
        gap = int(r["start_ns"]) - last
        if gap > after_ns:
            idle += hw.idle_w * after_ns * 1e-9
            deep += deep_w * (gap - after_ns) * 1e-9
            wakes += 1
        else:
            idle += hw.idle_w * max(0, gap) * 1e-9
        last = int(r["end_ns"])
    tail = end_ns - last
    idle += hw.idle_w * min(tail, after_ns) * 1e-9
    deep += deep_w * max(0, tail - after_ns) * 1e-9
    bd = e["breakdown_j"]
    assert wakes >= 2  # the sparse arrivals give several deep gaps
    assert e["wakeups"] == wakes
    assert e["wake_latency_total_ms"] == pytest.approx(wakes * wake_us / 1e3)
    assert bd["idle_j"] == pytest.approx(idle, abs=2e-3)
    assert bd["deep_idle_j"] == pytest.approx(deep, abs=2e-3)
    assert bd["wake_j"] == pytest.approx(wakes * wake_j, abs=1e-3)
    # totals are the sum of the components
    assert e["total_j"] == pytest.approx(sum(bd.values()), abs=1e-2)
    # per output token and per completed request
    reqs = [r for r in csv.DictReader((out / "requests.csv").open()) if r["status"] == "finished"]
    tokens = sum(int(r["output_tokens"]) for r in reqs)
    assert s["completed"] == len(reqs) > 0
    assert e["j_per_output_token"] == pytest.approx(e["total_j"] / tokens, rel=1e-5)
    assert e["j_per_request"] == pytest.approx(e["total_j"] / len(reqs), rel=1e-5)
    # deep idle saves energy against the same run without power states (timing is not changed by them)
    plain = _run(tmp_path, "plain", _sparse("H100-SXM"))
    sp = json.loads((plain / "summary.json").read_text())
    assert (plain / "iterations.csv").read_text().count("\n") == len(rows) + 1
    assert sp["simulated_duration_s"] == s["simulated_duration_s"]
    assert e["total_j"] < sp["energy"]["total_j"]


def test_energy_per_token_and_request_per_instance(tmp_path: Path):
    cfg = small_run_dict(instances=[{"name": "a", "hardware": "H100-SXM"}, {"name": "b", "hardware": "RTX4090"}])
    out = _run(tmp_path, "two", cfg)
    s = json.loads((out / "summary.json").read_text())
    e = s["energy"]
    reqs = [r for r in csv.DictReader((out / "requests.csv").open()) if r["status"] == "finished"]
    tokens = sum(int(r["output_tokens"]) for r in reqs)
    assert e["j_per_output_token"] == pytest.approx(e["total_j"] / tokens, rel=1e-5)
    assert e["j_per_request"] == pytest.approx(e["total_j"] / s["completed"], rel=1e-5)
    assert e["total_j"] == pytest.approx(sum(e["breakdown_j"].values()), abs=1e-2)
    per = {p["name"]: p for p in e["per_instance"]}
    assert set(per) == {"a", "b"}
    assert sum(p["total_j"] for p in per.values()) == pytest.approx(e["total_j"], abs=1e-2)
    for name, p in per.items():
        mine = [r for r in reqs if r["instance"] == name]
        assert p["total_j"] == pytest.approx(sum(p["breakdown_j"].values()), abs=1e-2)
        assert p["j_per_request"] == pytest.approx(p["total_j"] / len(mine), rel=1e-5)
        assert p["j_per_output_token"] == pytest.approx(p["total_j"] / sum(int(r["output_tokens"]) for r in mine),
                                                        rel=1e-5)


def test_power_columns_crafted_idle_gaps_and_timeline(tmp_path: Path):
    """Per iteration: the gap before it at idle up to the threshold, then in deep idle with a wake-up; power_w is
    the iteration's energy over its duration; rows + the trailing gap add up to the run's total; the timeline's
    power counter shows the idle and deep-idle watts of each gap."""
    after_ms, deep_w, wake_j = 50.0, 20.0, 0.3
    hwp = _hw_file(tmp_path, "states", idle_to_deep_idle_ms=after_ms, deep_idle_w=deep_w, wake_energy_j=wake_j,
                   wake_latency_us=150.0)
    out = _run(tmp_path, "cols", _sparse(hwp))
    s = json.loads((out / "summary.json").read_text())
    hw = HardwareSpec(**yaml.safe_load(Path(hwp).read_text()))
    rows = list(csv.DictReader((out / "iterations.csv").open()))
    assert list(rows[0])[17:23] == ["power_w", "idle_ns", "deep_idle_ns", "idle_j", "deep_idle_j", "wake_j"]
    last = 0
    total = 0.0
    short = deep = 0
    for r in rows:
        gap = int(r["start_ns"]) - last
        idle_ns, deep_ns = int(r["idle_ns"]), int(r["deep_idle_ns"])
        assert idle_ns + deep_ns == gap
        if gap > after_ms * 1e6:  # a long gap: idle for the threshold, deep idle after, one wake-up
            deep += 1
            assert idle_ns == after_ms * 1e6
            assert float(r["deep_idle_j"]) == pytest.approx(deep_w * deep_ns * 1e-9, abs=1e-6)
            assert float(r["wake_j"]) == pytest.approx(wake_j)
        else:  # a short gap: idle only, no wake-up
            short += 1
            assert deep_ns == 0 and float(r["wake_j"]) == 0
        assert float(r["idle_j"]) == pytest.approx(hw.idle_w * idle_ns * 1e-9, abs=1e-6)
        dur = int(r["end_ns"]) - int(r["start_ns"])
        assert float(r["power_w"]) == pytest.approx(float(r["energy_j"]) / (dur * 1e-9), rel=1e-4, abs=1e-3)
        total += float(r["energy_j"]) + float(r["idle_j"]) + float(r["deep_idle_j"]) + float(r["wake_j"])
        last = int(r["end_ns"])
    assert deep >= 2 and short >= 2
    tail = round(s["simulated_duration_s"] * 1e9) - last
    total += hw.idle_w * min(tail, after_ms * 1e6) * 1e-9 + deep_w * max(0, tail - after_ms * 1e6) * 1e-9
    assert total == pytest.approx(s["energy"]["total_j"], abs=1e-3)
    c = tmp_path / "tl.yaml"
    c.write_text(yaml.safe_dump(_sparse(hwp)))
    r = runner.invoke(app, ["run", str(c), "--quiet", "--out", str(tmp_path / "o_tl"), "--timeline",
                            str(tmp_path / "tl.json")])
    assert r.exit_code == 0, r.output
    tl = json.loads((tmp_path / "tl.json").read_text())
    events = tl["traceEvents"] if isinstance(tl, dict) else tl
    watts = {e["args"]["W"] for e in events if e.get("name") == "power_w"}
    assert deep_w in watts and hw.idle_w in watts


def test_wake_latency_applied_lengthens_the_waking_iteration(tmp_path: Path):
    states = dict(idle_to_deep_idle_ms=50.0, deep_idle_w=20.0, wake_energy_j=0.3, wake_latency_us=150.0)
    cfg = _sparse(_hw_file(tmp_path, "rep", **states))
    cfg["workload"]["num_requests"] = 3
    rep = list(csv.DictReader((_run(tmp_path, "rep", cfg) / "iterations.csv").open()))
    cfg = _sparse(_hw_file(tmp_path, "app", **states, wake_latency_applied=True))
    cfg["workload"]["num_requests"] = 3
    app = list(csv.DictReader((_run(tmp_path, "app", cfg) / "iterations.csv").open()))
    assert len(rep) == len(app)
    shift = 0
    woke = 0
    for a, b in zip(rep, app, strict=True):
        d_a = int(a["end_ns"]) - int(a["start_ns"])
        d_b = int(b["end_ns"]) - int(b["start_ns"])
        if float(b["wake_j"]):  # the first iteration after a deep gap lasts the wake-up longer
            woke += 1
            assert d_b == d_a + 150_000
            shift += 150_000
        else:
            assert d_b == d_a
        assert int(b["start_ns"]) - int(a["start_ns"]) <= shift
    assert woke >= 2
