"""The upstream ASTRA-sim backend: failure handling (fake binary, runs everywhere) and a real
cross-check against the embedded backend that runs only when ASTRA_SIM_BIN points at a binary."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from astra_bridge.astrasim import AstraSimBackend, AstraSimError, find_binary, parse_finished
from astra_bridge.backend import InstanceSystem
from astra_bridge.embedded.backend import make_executor
from astra_bridge.embedded.memory import MemoryTierModel
from astra_bridge.embedded.network import Dimension
from chakra_gen.graph import COLL, COMP, MEM_LOAD, Graph

REAL = os.environ.get("ASTRA_SIM_BIN")
needs_bin = pytest.mark.skipif(not REAL, reason="set ASTRA_SIM_BIN to an upstream analytical binary")


def _fake(tmp: Path, body: str) -> Path:
    p = tmp / "fake_astrasim"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


def _two_rank():
    gs = []
    for r in range(2):
        g = Graph(rank=r)
        g.add("c", COMP, duration_ns=3000)
        gs.append(g)
    return InstanceSystem("t", 2, (Dimension("FullyConnected", 2, 50, 500),)), gs


def test_parse_all_ranks_and_missing_rank():
    out = ("sys[1] finished, 20 cycles, exposed communication 5 cycles.\n"
           "sys[0] finished, 10 cycles, exposed communication 0 cycles.\n")
    assert parse_finished(out, 2) == ([10, 20], [0, 5])
    with pytest.raises(AstraSimError, match=r"ranks \[1\]"):
        parse_finished("sys[0] finished, 10 cycles, exposed communication 0 cycles.", 2)


def test_fake_binary_success_missing_rank_failure_timeout(tmp_path: Path):
    system, gs = _two_rank()
    ok = _fake(tmp_path, 'echo "sys[0] finished, 3000 cycles, exposed communication 0 cycles."\n'
                         'echo "sys[1] finished, 3000 cycles, exposed communication 0 cycles."')
    assert AstraSimBackend(binary=ok, cache=False).run(system, gs).per_rank_finish_ns == [3000, 3000]
    miss = _fake(tmp_path, 'echo "sys[0] finished, 3000 cycles, exposed communication 0 cycles."')
    with pytest.raises(AstraSimError, match="no 'finished' line"):
        AstraSimBackend(binary=miss, cache=False).run(system, gs)
    bad = _fake(tmp_path, "echo boom >&2; exit 3")
    with pytest.raises(AstraSimError, match="exited with 3"):
        AstraSimBackend(binary=bad, cache=False).run(system, gs)

    class Cfg:
        binary = None
        timeout_s = 0.5
        workers = 1
        work_dir = None

    slow = _fake(tmp_path, "sleep 5")
    b = AstraSimBackend(Cfg(), binary=slow, cache=False)
    with pytest.raises(AstraSimError, match="timed out"):
        b.run(system, gs)


def test_work_dir_keeps_only_failed_inputs_unless_named(tmp_path: Path):
    system, gs = _two_rank()
    ok = _fake(tmp_path, 'echo "sys[0] finished, 3000 cycles, exposed communication 0 cycles."\n'
                         'echo "sys[1] finished, 3000 cycles, exposed communication 0 cycles."')
    b = AstraSimBackend(binary=ok, cache=False)
    b.run(system, gs)
    assert list(b.work_dir.iterdir()) == []  # a finished iteration leaves nothing behind
    root = b.work_dir
    del b
    assert not root.exists()  # the empty temporary folder goes with the backend
    bad = _fake(tmp_path, "exit 3")
    b = AstraSimBackend(binary=bad, cache=False)
    with pytest.raises(AstraSimError) as e:
        b.run(system, gs)
    (kept,) = list(b.work_dir.iterdir())
    assert str(kept) in str(e.value) and any(kept.iterdir())  # the failed inputs stay where the error says

    class Cfg:
        binary = None
        timeout_s = 10.0
        workers = 1
        work_dir = str(tmp_path / "inputs")

    ok = _fake(tmp_path, 'echo "sys[0] finished, 3000 cycles, exposed communication 0 cycles."\n'
                         'echo "sys[1] finished, 3000 cycles, exposed communication 0 cycles."')
    b = AstraSimBackend(Cfg(), binary=ok, cache=False)
    b.run(system, gs)
    (kept,) = list((tmp_path / "inputs").iterdir())
    assert any(kept.iterdir())  # a named work_dir keeps every iteration's inputs


def test_cache_runs_identical_iteration_once(tmp_path: Path):
    system, gs = _two_rank()
    log = tmp_path / "calls"
    ok = _fake(tmp_path, f'echo x >> {log}\necho "sys[0] finished, 3000 cycles, exposed communication 0 cycles."\n'
                         'echo "sys[1] finished, 3000 cycles, exposed communication 0 cycles."')
    b = AstraSimBackend(binary=ok, cache=True)
    b.run(system, gs)
    b.run(system, [Graph(rank=g.rank, names=list(g.names), types=list(g.types), durations_ns=list(g.durations_ns),
                         deps=list(g.deps), ctrl_deps=list(g.ctrl_deps), num_ops=list(g.num_ops),
                         tensor_bytes=list(g.tensor_bytes), attrs=list(g.attrs)) for g in gs])
    assert log.read_text().count("x") == 1 and b.stats()["cache_hits"] == 1


def test_find_binary_reports_why(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("ASTRA_SIM_BIN", str(tmp_path / "nope"))
    path, why = find_binary(None)
    assert path is None and "not an executable" in why


@needs_bin
def test_real_binary_collectives_and_memory_match_embedded():
    b = AstraSimBackend(binary=Path(REAL), cache=False)
    dims = (Dimension("Switch", 8, 450, 500),)
    for size in (16384, 1 << 20, 64 << 20):
        gs = []
        for r in range(8):
            g = Graph(rank=r)
            c = g.add("c", COMP, duration_ns=7000)
            g.add("ar", COLL, deps=(c,), attrs={"comm_type": 0, "comm_size": size})
            gs.append(g)
        system = InstanceSystem("t", 8, dims)
        assert b.run(system, gs).duration_ns == make_executor(system).run(gs).duration_ns
    tier = MemoryTierModel("dram", "PER_NPU_MEMORY_EXPANSION", 100, 1000)
    system = InstanceSystem("m", 2, (Dimension("FullyConnected", 2, 50, 500),), tiers=(tier,))
    gs = []
    for r in range(2):
        g = Graph(rank=r)
        g.add("load", MEM_LOAD, tensor_bytes=16 << 20, attrs={"tier": "dram"})
        gs.append(g)
    assert b.run(system, gs).per_rank_finish_ns == [168772, 168772]


@needs_bin
@pytest.mark.slow
@pytest.mark.parametrize("example", ["h100x8-llama3.1-70b-tp8.yaml", "h100-2x4-llama3.1-70b-tp4pp2.yaml",
                                     "rtx4090-llama3.1-8b.yaml"])
def test_dumped_tp_pp_traces_agree_within_0p1pct(repo: Path, example: str, tmp_path: Path):
    from astra_bridge.compare import compare_backends
    from frontend.config.loader import load_and_resolve

    cfg = yaml.safe_load((repo / "configs/examples" / example).read_text())
    cfg["workload"]["num_requests"] = 12
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    rows = compare_backends(load_and_resolve(p), {0, 1, 4, 9})
    assert len(rows) == 4
    for r in rows:
        assert abs(r["diff_pct"]) < 0.1, r


def test_backends_check_cli(monkeypatch, tmp_path: Path):
    from typer.testing import CliRunner

    from frontend.cli import app

    monkeypatch.setenv("ASTRA_SIM_BIN", str(tmp_path / "missing"))
    r = CliRunner().invoke(app, ["backends", "check"])
    assert r.exit_code == 0
    assert "embedded" in r.output and "astra-sim" in r.output and "not an executable" in r.output
    ok = _fake(tmp_path, 'echo "sys[0] finished, 5000 cycles, exposed communication 0 cycles."\n'
                         'echo "sys[1] finished, 5000 cycles, exposed communication 0 cycles."')
    monkeypatch.setenv("ASTRA_SIM_BIN", str(ok))
    r = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["backends", "check"])
    assert r.exit_code == 0 and "probe workload finished at 5000 ns" in r.output
