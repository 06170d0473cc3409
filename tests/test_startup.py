"""Start-up: `astraserve` imports only what a command needs, and a plain `run` command line skips typer's
per-parameter adapters while calling `run` with exactly what typer would pass."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import frontend.cli as cli
from tests.conftest import REPO, small_run_dict

HEAVY = ("rich", "numpy", "frontend.config.loader", "pydantic", "astra_bridge.astrasim", "google.protobuf",
         "frontend.validation.compare", "frontend.profiler.run", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("LOADED:"), out.stdout
    return [m for m in line.removeprefix("LOADED:").split(",") if m]


def test_importing_the_cli_loads_no_heavy_module():
    assert _loaded_after("import frontend.cli") == []


def test_help_loads_neither_the_config_stack_nor_numpy():
    loaded = _loaded_after("import sys\nsys.argv = ['astraserve', '--help']\nimport frontend.cli\n"
                           "try:\n    frontend.cli.main()\nexcept SystemExit:\n    pass")
    assert not {"numpy", "frontend.config.loader", "astra_bridge.astrasim", "google.protobuf"} & set(loaded)


def _base(t: object) -> object:
    """Path | None -> Path, Annotated[int, ...] -> int."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return _base(args[0]) if args and typing.get_origin(t) is not None else t


def test_fast_path_table_matches_the_typer_command():
    cmd = typer.main.get_command(cli.app).commands["run"]  # type: ignore[attr-defined]
    hints = typing.get_type_hints(cli.run, include_extras=True)
    seen_opts: set[str] = set()
    for p in cmd.params:
        if p.name == "config":
            continue
        names = [*p.opts, *p.secondary_opts]
        seen_opts.update(names)
        if p.is_flag:
            assert all(cli.RUN_FLAGS[n][0] == p.name for n in names)
            assert cli.RUN_FLAGS[p.opts[0]][1] is True
            for n in p.secondary_opts:
                assert cli.RUN_FLAGS[n][1] is False
        else:
            assert names == [n for n, (param, _) in cli.RUN_OPTIONS.items() if param == p.name]
            assert cli.RUN_OPTIONS[names[0]][1] is _base(typing.get_args(hints[p.name])[0]), p.name
    assert seen_opts == set(cli.RUN_OPTIONS) | set(cli.RUN_FLAGS)


def test_parse_run_fast_reads_plain_command_lines():
    assert cli.parse_run_fast(["run", "a.yaml"]) == {"config": Path("a.yaml")}
    assert cli.parse_run_fast(["run", "--seed", "3", "a.yaml", "-q", "--out=o", "--no-run-ahead"]) == {
        "config": Path("a.yaml"), "seed": 3, "quiet": True, "out": Path("o"), "run_ahead": False}


@pytest.mark.parametrize("argv", [
    ["run"], ["run", "--help"], ["run", "a.yaml", "--help"], ["validate", "a.yaml"], ["run", "a.yaml", "b.yaml"],
    ["run", "a.yaml", "--seed"], ["run", "a.yaml", "--seed", "x"], ["run", "a.yaml", "--seed", "-1"],
    ["run", "a.yaml", "--seed", "1", "--seed", "2"], ["run", "a.yaml", "--bogus", "1"], ["run", "a.yaml", "-q", "-q"],
    ["run", "a.yaml", "--"], ["run", "a.yaml", "--quiet=1"], ["run", "a.yaml", "--out="],
])
def test_anything_unusual_goes_through_typer(argv: list[str]):
    assert cli.parse_run_fast(argv) is None


def test_fast_path_and_typer_write_the_same_run(tmp_path: Path):
    import json

    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps(small_run_dict()))
    args = ["run", str(cfg), "--num-requests", "15", "-q"]
    r = CliRunner().invoke(cli.app, [*args, "--out", str(tmp_path / "typer")])
    assert r.exit_code == 0, r.output
    p = subprocess.run([sys.executable, "-c", "import sys; from frontend.cli import main; sys.argv[0] = 'astraserve'; "
                        "main()", *args, "--out", str(tmp_path / "fast")], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for name in ("requests.csv", "iterations.csv"):
        assert (tmp_path / "typer" / name).read_bytes() == (tmp_path / "fast" / name).read_bytes()


def test_fast_path_reports_user_errors_like_typer(tmp_path: Path):
    p = subprocess.run([sys.executable, "-c", "from frontend.cli import main; main()", "run",
                        str(tmp_path / "missing.yaml"), "-q"], cwd=REPO, capture_output=True, text=True)
    r = CliRunner().invoke(cli.app, ["run", str(tmp_path / "missing.yaml"), "-q"])
    assert p.returncode == r.exit_code == 2
    assert "no such run file" in p.stderr and "no such run file" in r.output
