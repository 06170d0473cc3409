"""Start-up and small-run wall time of whole `astraserve` processes, this tree next to an older commit.

For each code version (this working tree, and `--before REF` checked out into a temporary git worktree)
and each of N rounds (versions interleaved, so machine noise hits both alike) it times whole processes:
  help        `astraserve --help`
  first-iter  process start -> the first simulated iteration of the quickstart (a wrapper records the
              wall clock when InstanceRuntime.step is first called)
  quickstart  `astraserve run configs/examples/quickstart.yaml -q` (1000 synthetic requests), whole process
  sharegpt300 the 300-request ShareGPT replay on the RTX4090 example, whole process (needs ../shared)
and prints min / median seconds per version. Usage:
  python bench/bench_startup.py [--rounds 7] [--before 943fdde] [--out bench/results/startup.txt]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAREGPT = REPO.parent / "shared/data/llmservingsim/workloads/sharegpt-llama-3.1-8b-300-sps10.jsonl"

# runs the CLI of the tree in the working directory; prints the wall clock of the first step
FIRST_ITER = """
import sys, time
import frontend.instance.runtime as rt
orig = rt.InstanceRuntime.step
def step(self, *a, **k):
    if not getattr(rt, "_seen", False):
        rt._seen = True
        print(f"FIRST {time.time():.6f}", file=sys.stderr, flush=True)
    return orig(self, *a, **k)
rt.InstanceRuntime.step = step
import frontend.cli
sys.argv = ["astraserve", *sys.argv[1:]]
frontend.cli.main()
"""


def timed(cmd: list[str], cwd: Path) -> tuple[float, float | None]:
    """(whole-process wall seconds, seconds from spawn to the first step if the child reported it)."""
    t0 = time.time()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{p.stderr[-2000:]}")
    first = next((float(x.split()[1]) - t0 for x in p.stderr.splitlines() if x.startswith("FIRST ")), None)
    return wall, first


def measure(tree: Path, out_dir: Path) -> dict[str, float]:
    py = sys.executable
    res: dict[str, float] = {}
    res["help"], _ = timed([py, "-c", "import sys; from frontend.cli import main; sys.argv[0] = 'astraserve'; main()",
                            "--help"], tree)
    _, first = timed([py, "-c", FIRST_ITER, "run", "configs/examples/quickstart.yaml", "-q", "--num-requests", "1",
                      "--out", str(out_dir / "first")], tree)
    assert first is not None
    res["first-iter"] = first
    res["quickstart"], _ = timed([py, "-m", "frontend.cli", "run", "configs/examples/quickstart.yaml", "-q", "--out",
                                  str(out_dir / "qs")], tree)
    if SHAREGPT.is_file():
        res["sharegpt300"], _ = timed([py, "-m", "frontend.cli", "run", "configs/examples/rtx4090-llama3.1-8b.yaml",
                                       "-q", "--workload", str(SHAREGPT), "--out", str(out_dir / "sg")], tree)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--before", default="943fdde", help="git ref to compare with ('' for none)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"after": REPO}
        if a.before:
            base = Path(tmp) / "before"
            subprocess.run(["git", "worktree", "add", "--detach", "-f", str(base), a.before], cwd=REPO, check=True,
                           capture_output=True)
            trees = {"before": base, "after": REPO}
        try:
            samples: dict[str, dict[str, list[float]]] = {k: {} for k in trees}
            for i in range(a.rounds):
                for name, tree in trees.items():
                    for k, v in measure(tree, Path(tmp) / f"{name}{i}").items():
                        samples[name].setdefault(k, []).append(v)
        finally:
            if a.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / "before")], cwd=REPO,
                               capture_output=True)
    lines = [f"# python bench/bench_startup.py --rounds {a.rounds} --before {a.before or '-'} "
             f"(whole processes, {sys.executable}; versions interleaved per round)",
             f"{'measure':12s} {'version':8s} {'min_s':>7s} {'median_s':>8s}"]
    for k in samples["after"]:
        for name in trees:
            v = samples[name].get(k)
            if v:
                lines.append(f"{k:12s} {name:8s} {min(v):7.3f} {statistics.median(v):8.3f}")
    print("\n".join(lines))
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
