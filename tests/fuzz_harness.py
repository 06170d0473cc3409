"""Shared pieces of the fuzz suite: run the CLI in-process with a time limit and check the invariant.

Invariant for every input: exit 0 with valid, mutually consistent outputs, or exit 2 with one `error:` line
that names where the problem is (a file, `file:line`, a field path or a flag). Never a traceback (any other
exception or exit code), never a hang (each invocation runs under an alarm).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import traceback
from contextlib import contextmanager
from pathlib import Path

from typer.testing import CliRunner

from frontend.cli import app

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# a place: a flag, a file with a known suffix (optionally :line), a dotted/indexed field path, or a file:line
WHERE = re.compile(r"(--[a-z][a-z-]+|\.(ya?ml|jsonl?|csv)\b|[A-Za-z_]+(\[\d+\])?(\.[A-Za-z_][A-Za-z_0-9]*|\[\d+\])+"
                   r"|:\d+\b|/[^ ]+)")
TIME_LIMIT_S = 60


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: int = TIME_LIMIT_S):
    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def invoke(args: list[str], seconds: int = TIME_LIMIT_S):
    with time_limit(seconds):
        return runner.invoke(app, [str(a) for a in args])


def _strict_json(path: Path):
    def bad(name: str):
        raise AssertionError(f"{path}: {name} is not valid JSON")

    return json.loads(path.read_text(), parse_constant=bad)


def error_line(output: str) -> str:
    lines = [ANSI.sub("", ln) for ln in output.splitlines()]
    errs = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    assert len(errs) == 1, f"expected one error line, got:\n{output}"
    rest = [ln for ln in lines[errs[0] + 1:] if ln.strip()]
    assert not rest, f"the error message spans several lines:\n{output}"
    return lines[errs[0]]


def check_exit(r, what: str = "") -> int:
    """0 or 2 per the invariant (asserting the message); returns the exit code."""
    exc = r.exception
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(exc))
        raise AssertionError(f"{what}: traceback instead of an answer:\n{tb}")
    assert "Traceback" not in r.output, f"{what}: {r.output}"
    assert r.exit_code in (0, 2), f"{what}: exit {r.exit_code}:\n{r.output}"
    if r.exit_code == 2:
        line = error_line(r.output)
        assert WHERE.search(line.removeprefix("error:")), f"{what}: message does not say where: {line}"
    log = os.environ.get("ASTRASERVE_FUZZ_LOG")
    if log:  # tally of inputs and outcomes per test (ASTRASERVE_FUZZ_LOG=path)
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("[")[0]
        with open(log, "a") as f:
            f.write(f"{test}\t{r.exit_code}\n")
    return r.exit_code


def check_run_outputs(out: Path, what: str = "") -> dict:
    """A finished run directory: every output present, strict JSON, CSVs consistent with the summary."""
    for f in ("requests.csv", "iterations.csv", "summary.json", "run_info.json"):
        assert (out / f).is_file(), f"{what}: {f} missing in {out}"
    s = _strict_json(out / "summary.json")
    info = _strict_json(out / "run_info.json")
    assert info["wall_s"] >= 0 and "config" in info and "backend" in info and "compute" in info
    with (out / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == s["requests"] == s["completed"] + s["rejected"], what
    assert len({r["request_id"] for r in rows}) == len(rows), f"{what}: duplicate request ids"
    rej = {}
    for r in rows:
        if r["status"] == "finished":
            a, f1, fin = int(r["arrival_ns"]), int(r["first_token_ns"]), int(r["finish_ns"])
            assert 0 <= a < f1 <= fin, f"{what}: implausible times {r}"
            assert int(r["output_tokens"]) >= 1 and int(r["input_tokens"]) >= 1
        else:
            assert r["status"] == "rejected" and r["reject_reason"], f"{what}: {r}"
            rej[r["reject_reason"]] = rej.get(r["reject_reason"], 0) + 1
    assert rej == {k: v["count"] for k, v in s["rejections"].items()}, what
    with (out / "iterations.csv").open() as f:
        its = list(csv.DictReader(f))
    assert len(its) == s["iterations"], what
    for it in its:
        assert 0 <= int(it["start_ns"]) < int(it["end_ns"]), f"{what}: {it}"
    assert not list(out.parent.glob(f".{out.name}.partial-*")), f"{what}: staging directory left behind"
    return s
