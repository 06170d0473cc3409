"""Collective cost at serving sizes: the fit of a network dimension to a measured table, the presets,
and the torch.distributed collectives profiler on CPU (gloo, 2 processes)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from astra_bridge.embedded.network import GIB, Dimension, SystemKnobs, collective_time_ns
from frontend.config.loader import CONFIGS
from frontend.config.schema import NetworkDim
from frontend.network_fit import (
    COLLECTIVE_TYPES,
    FIT_KNOBS,
    astra_comm_size,
    dims_from_bundle,
    fit_link,
    fit_table,
    main,
    model_terms,
    write_preset,
)
from frontend.profiler.collectives import CSV_COLUMNS, CollectiveRow, parse_sizes, read_table, write_table

SERVING_SIZES = [1 << k for k in range(12, 26)]  # 4 KiB .. 32 MiB


def _row(coll: str, n: int, nbytes: int, us: float) -> CollectiveRow:
    return CollectiveRow(coll, n, nbytes, us, us, us, 20, "nccl", "cuda", "bf16")


def _model_table(dim: Dimension, knobs: SystemKnobs) -> list[CollectiveRow]:
    """A table as the ASTRA-sim model itself would measure it on `dim`."""
    rows = []
    for coll, ct in COLLECTIVE_TYPES.items():
        for s in SERVING_SIZES:
            t = collective_time_ns(int(ct), astra_comm_size(coll, s, dim.npus), (dim,), (True,), knobs)
            rows.append(_row(coll, dim.npus, s, t / 1e3))
    return rows


def test_parse_sizes():
    assert parse_sizes("1K-8K") == [1024, 2048, 4096, 8192]
    assert parse_sizes("4K,1M, 64") == [64, 4096, 1 << 20]
    assert parse_sizes("1KiB-2KiB,256M") == [1024, 2048, 256 << 20]
    with pytest.raises(ValueError):
        parse_sizes("8K-1K")


def test_astra_comm_size_follows_the_model_step_sizes():
    """nccl-tests sizes map to the comm_size whose ring steps carry what NCCL's ring carries:
    all-reduce 2(N-1) steps of S/N, all-gather / reduce-scatter N-1 steps of S/N."""
    n, s = 4, 1 << 20
    knobs = SystemKnobs(preferred_dataset_splits=1)
    for coll, steps in (("ALL_REDUCE", 2 * (n - 1)), ("ALL_GATHER", n - 1), ("REDUCE_SCATTER", n - 1)):
        a, b, _ = model_terms(coll, s, n, "FullyConnected", "ring", knobs)
        assert a == steps  # one latency per ring step (hops = 1)
        assert b == pytest.approx(steps * s / n, rel=1e-6)  # bytes serialised on the critical path
    assert astra_comm_size("ALL_GATHER", s, n) == s // n


@pytest.mark.parametrize("dim,knobs", [
    (Dimension("FullyConnected", 2, 37.25, 14000.0, "ring"), SystemKnobs(preferred_dataset_splits=1)),
    (Dimension("Switch", 4, 20.0, 3000.0, "ring"), SystemKnobs()),  # 4 fixed chunks, 2 hops per step
    (Dimension("FullyConnected", 8, 100.0, 700.0, "direct"), SystemKnobs(preferred_dataset_splits=2)),
])
def test_fit_recovers_the_link_a_model_table_was_made_with(dim: Dimension, knobs: SystemKnobs):
    fits = {f.collective: f for f in fit_table(_model_table(dim, knobs), knobs, dim.topology, dim.algorithm)}
    assert set(fits) == set(COLLECTIVE_TYPES)
    for f in fits.values():
        assert f.latency_ns == pytest.approx(dim.latency_ns, rel=1e-2), f.summary()  # ns truncations
        assert f.bw_gbps == pytest.approx(dim.bw_gbps, rel=2e-3), f.summary()
        assert f.max_rel_err < 5e-3  # integer-ns truncations of the model at the smallest sizes


def test_fit_alpha_beta_table_reproduced_through_the_embedded_model():
    """A table from the alpha-beta model of nccl-tests (t = alpha + S * 2(N-1)/N / busbw), alpha 28 us,
    busbw 40 GB/s (= 40 B/ns). The model charges each byte of a 2-rank all-reduce S/busbw on the link
    plus 3 * (S/2) / local_mem_bw for the local reduction copies, so the fitted link bandwidth is the
    rest: 1 / (1/40 - 1.5/1600) B/ns; it reproduces every measured time within 2%."""
    alpha_us, busbw = 28.0, 40e9
    rows = [_row("ALL_REDUCE", 2, s, alpha_us + s / busbw * 1e6) for s in SERVING_SIZES]
    f = fit_link(rows, "ALL_REDUCE", 2)
    assert f.busbw_gbs == pytest.approx(1 / (1 / 40 - 1.5 / FIT_KNOBS.local_mem_bw_gbps), rel=2e-3)
    assert 2 * f.latency_ns / 1e3 == pytest.approx(alpha_us, rel=0.02)  # two ring steps carry alpha
    assert f.max_rel_err < 0.02
    for p in f.points:  # the reported errors are the model's own, computed through collective_time_ns
        t = collective_time_ns(0, p["bytes"], (f.dimension,), (True,), FIT_KNOBS) / 1e3
        assert t == pytest.approx(p["model_us"], abs=1e-3)
        assert abs(t - p["measured_us"]) / p["measured_us"] < 0.02


def test_fit_window_and_errors():
    rows = [_row("ALL_REDUCE", 2, s, 30.0 + s / 4e4) for s in SERVING_SIZES]
    f = fit_link(rows, "ALL_REDUCE", 2, window=(64 << 10, 1 << 20))
    assert [p["bytes"] for p in f.points] == [s for s in SERVING_SIZES if (64 << 10) <= s <= (1 << 20)]
    with pytest.raises(ValueError, match="fewer than two sizes"):
        fit_link(rows, "ALL_REDUCE", 4)
    flat = [_row("ALL_REDUCE", 2, s, 30.0 - s * 1e-9) for s in SERVING_SIZES]
    with pytest.raises(ValueError, match="do not grow with size"):
        fit_link(flat, "ALL_REDUCE", 2)


def test_preset_written_from_a_table_loads_and_reproduces(tmp_path: Path):
    truth = Dimension("FullyConnected", 2, 37.25, 14000.0, "ring")
    table = write_table(_model_table(truth, FIT_KNOBS), tmp_path / "bundle" / "bf16" / "collectives.csv")
    with table.open() as fh:
        assert tuple(next(csv.reader(fh))) == CSV_COLUMNS
    assert main([str(tmp_path / "bundle"), "--dtype", "bf16", "--npus", "2", "--out", str(tmp_path / "p.yaml")]) == 0
    raw = yaml.safe_load((tmp_path / "p.yaml").read_text())
    (dim,) = [NetworkDim.model_validate(d) for d in raw["dims"]]
    assert (dim.topology, dim.npus, dim.algorithm) == ("FullyConnected", 2, "ring")
    assert dim.latency_ns == pytest.approx(14000, rel=1e-3) and dim.bw_gbps == pytest.approx(37.25, rel=1e-3)
    assert {c["collective"] for c in raw["fit"]["collectives"]} == set(COLLECTIVE_TYPES)
    assert raw["fit"]["knobs"]["preferred_dataset_splits"] == 1
    # the function the config side calls gives the same dimension
    (d2,) = dims_from_bundle(tmp_path / "bundle", 2, "bf16")
    assert d2["latency_ns"] == pytest.approx(dim.latency_ns, rel=1e-3)
    # write_preset's YAML header is a comment block; the loader only reads dims
    p = write_preset(fit_table(read_table(table)), 2, tmp_path / "q.yaml", "t")
    assert p.read_text().startswith("# Fitted by")


def test_network_presets_load_and_rtxpro6000_serving_sizes():
    for p in sorted((CONFIGS / "networks").glob("*.yaml")):
        raw = yaml.safe_load(p.read_text())
        dims = [NetworkDim.model_validate(d) for d in raw["dims"]]
        assert dims, p
    raw = yaml.safe_load((CONFIGS / "networks" / "pcie5-rtxpro6000-2.yaml").read_text())
    (d,) = [NetworkDim.model_validate(x) for x in raw["dims"]]
    assert (d.topology, d.npus) == ("FullyConnected", 2)  # the aware binary aborts on a 2-NPU Ring
    dim = Dimension(d.topology, d.npus, d.bw_gbps, d.latency_ns, d.algorithm)
    assert 5.0 <= d.bw_gbps * GIB / 1e9 <= 63.0  # GB/s: at most PCIe 5.0 x16's 63 GB/s per direction

    def ar(nbytes: int) -> float:
        return collective_time_ns(0, nbytes, (dim,), (True,), FIT_KNOBS) / 1e3

    assert 20.0 <= ar(40 << 10) <= 40.0  # a decode-batch TP all-reduce on a 2-GPU PCIe box
    times = [ar(s) for s in SERVING_SIZES]
    assert times == sorted(times)
    # one chunk: the fixed cost is the two ring steps' latency, not multiplied by a chunk count
    assert ar(1 << 10) == pytest.approx(2 * d.latency_ns / 1e3, rel=0.02)


def test_preset_resolves_in_a_tp2_run(tmp_path: Path):
    from frontend.config.loader import load_and_resolve

    raw = yaml.safe_load((CONFIGS / "examples" / "quickstart.yaml").read_text())
    raw["instances"] = [dict(raw["instances"][0], tp=2, network={"preset": "pcie5-rtxpro6000-2"})]
    raw["output"] = {"dir": str(tmp_path / "out")}
    cfg = tmp_path / "tp2.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    inst = load_and_resolve(cfg).instances[0]
    assert [(d.topology, d.npus, d.latency_ns) for d in inst.dims] == [("FullyConnected", 2, 14000.0)]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_collectives_profiler_gloo_two_processes(tmp_path: Path):
    """`astraserve profile --collectives` on CPU: two spawned gloo ranks, tiny sizes."""
    from frontend.cli import app

    r = CliRunner().invoke(app, ["profile", "--collectives", "--device", "cpu", "--dtype", "fp32", "--out",
                                 str(tmp_path / "b"), "--sizes", "4K,64K", "--ranks", "2", "--collective-iters", "3"])
    assert r.exit_code == 0, r.output
    rows = read_table(tmp_path / "b" / "fp32" / "collectives.csv")
    assert sorted((x.collective, x.bytes) for x in rows) == sorted(
        (c, s) for c in COLLECTIVE_TYPES for s in (4096, 65536))
    for x in rows:
        assert x.num_ranks == 2 and x.backend == "gloo" and x.device == "cpu" and x.iters == 3
        assert 0 < x.min_us <= x.time_us <= x.max_rank_us
    meta = yaml.safe_load((tmp_path / "b" / "fp32" / "meta.yaml").read_text())["collectives"]
    assert meta["backend"] == "gloo" and meta["num_ranks"] == [2] and meta["sizes_bytes"] == [4096, 65536]
    assert "median" in meta["method"] and meta["table"] == "collectives.csv"


def test_cli_errors(tmp_path: Path):
    from frontend.cli import app

    r = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "b"), "--device", "cpu"])
    assert r.exit_code == 2 and "--model is required" in r.output
    r = CliRunner().invoke(app, ["profile", "--collectives", "--out", str(tmp_path / "b"), "--device", "cpu",
                                 "--sizes", "8K-1K"])
    assert r.exit_code == 2 and "size range" in r.output
    assert main([str(tmp_path / "missing"), "--npus", "2", "--out", str(tmp_path / "p.yaml")]) == 2
