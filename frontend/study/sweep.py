"""Sweeps: many runs of one base run file over a grid (and random samples) of its fields, times seeds.

A sweep file (YAML):

    base: quickstart.yaml            # run file, relative to the sweep file
    grid:                            # cartesian product over dotted paths of the run file
      engine.max_num_seqs: [64, 256]
      workload.arrival.rate_per_s: [10, 20, 40]
    samples:                         # optional: K random points, each value drawn from its list (seeded)
      n: 8
      seed: 0
      space: {engine.max_num_batched_tokens: [512, 1024, 2048, 4096]}
    seeds: [1, 2, 3]                 # optional: every point once per seed (else the run file's seed)
    overrides: {workload: {num_requests: 500}}   # optional: applied to every point
    slo: [ttft_p99_ms=2000]          # optional: adds slo_met and goodput columns
    usd_per_gpu_hour: 2.5            # optional: adds goodput per dollar

The points are the grid's product crossed with the samples (either may be absent) crossed with the seeds.
A dotted path may index a list of the run file (`instances.0.tp`). Every point is checked against the run
file's schema before anything runs, so a misspelt path fails with the run file's own field-path error.

Each point is one simulation; its row in DIR/results.csv holds the point id (a stable hash of its parameters
and seed), every swept parameter, the seed, and the summary metrics (wall_s last, the one column that differs
between identical runs). Rows are appended as points finish and the file is rewritten sorted by point id at
the end, so local processes and Ray give the same table. Re-running a sweep into the same DIR skips the points
already there (points that failed are run again). DIR/results.parquet is written when pyarrow is importable.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontend.errors import ConfigError, UserError, bug_message, one_line

METRIC_COLUMNS = [
    "completed", "rejected",
    *(f"{m}_ms_{q}" for m in ("ttft", "tpot", "e2e") for q in ("mean", "p50", "p90", "p99")),
    "throughput_rps", "throughput_tok_s", "tok_s_per_gpu", "gpus", "simulated_s",
]
SLO_COLUMNS = ["slo_met", "good_requests", "goodput_rps", "goodput_rps_per_gpu"]
USD_COLUMN = "goodput_per_usd"
TAIL_COLUMNS = ["error", "wall_s"]  # wall_s last: the only column that differs between identical runs
MAX_POINTS = 1_000_000


def point_id(params: dict[str, Any], seed: int | None) -> str:
    """Stable id of a point: a hash of its parameters (order-free) and seed."""
    blob = json.dumps({"params": params, "seed": seed}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Point:
    params: dict[str, Any]
    seed: int | None

    @property
    def id(self) -> str:
        return point_id(self.params, self.seed)


@dataclass
class SweepSpec:
    source: str
    base: Path
    params: list[str]  # swept dotted paths, in file order (grid first, then sample space)
    points: list[Point]
    overrides: dict[str, Any] = field(default_factory=dict)
    slos: list[str] = field(default_factory=list)
    usd_per_gpu_hour: float | None = None

    @property
    def columns(self) -> list[str]:
        return table_columns(self.params, bool(self.slos), self.usd_per_gpu_hour is not None)


def table_columns(params: Sequence[str], slo: bool, usd: bool) -> list[str]:
    return ["point_id", *params, "seed", *METRIC_COLUMNS, *(SLO_COLUMNS if slo else []),
            *([USD_COLUMN] if slo and usd else []), *TAIL_COLUMNS]


# ---------------------------------------------------------------- overrides from dotted paths


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({one_line(str(e))})") from None


def _set_dotted(tree: dict[str, Any], path: str, value: Any, where: str) -> None:
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ConfigError(f"{where}: {path!r} is not a dotted path (e.g. engine.max_num_seqs)")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            try:
                idx = int(part)
            except ValueError:
                raise ConfigError(f"{where}: {path}: {'.'.join(parts[:i])} is a list; expected an index, "
                                  f"got {part!r}") from None
            if not -len(node) <= idx < len(node):
                raise ConfigError(f"{where}: {path}: index {idx} out of range ({'.'.join(parts[:i])} has "
                                  f"{len(node)} entries)")
            if last:
                node[idx] = value
            else:
                node[idx] = _copy_container(node[idx])
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node[part] = _copy_container(node.get(part))
                node = node[part]
        else:
            raise ConfigError(f"{where}: {path}: {'.'.join(parts[:i])} is a value ({node!r}), not a section")


def _copy_container(v: Any) -> Any:
    if isinstance(v, dict):
        return dict(v)
    if isinstance(v, list):
        return list(v)
    return {} if v is None else v


def point_overrides(base_raw: dict[str, Any], overrides: dict[str, Any], params: dict[str, Any],
                    seed: int | None, where: str = "sweep") -> dict[str, Any]:
    """The run-file overrides of one point: the sweep's overrides, then each dotted path set (whole top-level
    sections are handed over where a path touches them, so list indices work), then the seed."""
    from frontend.config.loader import deep_merge

    if not params:
        ov = dict(overrides)
    else:
        merged = deep_merge(base_raw, overrides)
        for path, value in params.items():
            _set_dotted(merged, path, value, where)
        ov = deep_merge(overrides, {p.split(".")[0]: merged[p.split(".")[0]] for p in params})
    if seed is not None:
        ov["seed"] = seed
    return ov


# ---------------------------------------------------------------- the sweep file


def _value_list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where}: expected a non-empty list of values, got {v!r}")
    return v


def load_sweep(path: str | Path) -> SweepSpec:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    raw = _read_yaml(p)
    src = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: expected a mapping with base: and grid: (or samples:)")
    known = {"base", "grid", "samples", "seeds", "overrides", "slo", "usd_per_gpu_hour"}
    extra = sorted(set(raw) - known)
    if extra:
        raise ConfigError(f"{src}: {extra[0]}: unknown key (expected {', '.join(sorted(known))})")
    if not isinstance(raw.get("base"), str):
        raise ConfigError(f"{src}: base: expected the path of a run file (relative to the sweep file)")
    base = (p.parent / raw["base"]).resolve()
    if not base.is_file():
        raise ConfigError(f"{src}: base: {raw['base']}: no such run file (looked at {base})")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{src}: grid: expected a mapping of dotted paths to value lists")
    grid_lists = {str(k): _value_list(v, f"{src}: grid.{k}") for k, v in grid.items()}
    samples = raw.get("samples")
    sample_points: list[dict[str, Any]] = [{}]
    sample_keys: list[str] = []
    if samples is not None:
        if not isinstance(samples, dict) or set(samples) - {"n", "seed", "space"} or "space" not in samples:
            raise ConfigError(f"{src}: samples: expected {{n: K, space: {{dotted.path: [values]}}, seed: S}}")
        n = samples.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_POINTS:
            raise ConfigError(f"{src}: samples.n: expected an integer 1..{MAX_POINTS}, got {n!r}")
        s_seed = samples.get("seed", 0)
        if not isinstance(s_seed, int) or isinstance(s_seed, bool):
            raise ConfigError(f"{src}: samples.seed: expected an integer, got {s_seed!r}")
        space = samples["space"]
        if not isinstance(space, dict) or not space:
            raise ConfigError(f"{src}: samples.space: expected a mapping of dotted paths to value lists")
        space_lists = {str(k): _value_list(v, f"{src}: samples.space.{k}") for k, v in space.items()}
        both = sorted(set(space_lists) & set(grid_lists))
        if both:
            raise ConfigError(f"{src}: {both[0]} is both in grid: and samples.space:")
        rng = random.Random(s_seed)
        sample_points = [{k: rng.choice(vs) for k, vs in space_lists.items()} for _ in range(n)]
        sample_keys = list(space_lists)
    seeds = raw.get("seeds")
    if seeds is None:
        seed_list: list[int | None] = [None]
    else:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                               for s in seeds):
            raise ConfigError(f"{src}: seeds: expected a non-empty list of integers, got {seeds!r}")
        seed_list = list(dict.fromkeys(seeds))
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{src}: overrides: expected a mapping (nested run-file fields)")
    slos = raw.get("slo") or []
    if isinstance(slos, str):
        slos = [slos]
    if not isinstance(slos, list) or not all(isinstance(s, str) for s in slos):
        raise ConfigError(f"{src}: slo: expected a list like [ttft_p99_ms=2000, tpot_p50_ms=50]")
    from frontend.study.slo import parse_slos

    parse_slos(slos, f"{src}: slo:")
    usd = raw.get("usd_per_gpu_hour")
    if usd is not None and (isinstance(usd, bool) or not isinstance(usd, (int, float)) or not usd > 0):
        raise ConfigError(f"{src}: usd_per_gpu_hour: expected a positive number, got {usd!r}")
    grid_points = [dict(zip(grid_lists, combo, strict=True)) for combo in itertools.product(*grid_lists.values())]
    total = len(grid_points) * len(sample_points) * len(seed_list)
    if total > MAX_POINTS:
        raise ConfigError(f"{src}: {total} points; at most {MAX_POINTS}")
    points: list[Point] = []
    seen: set[str] = set()
    for g in grid_points:
        for s in sample_points:
            for seed in seed_list:
                pt = Point({**g, **s}, seed)
                if pt.id not in seen:  # random samples may repeat a point
                    seen.add(pt.id)
                    points.append(pt)
    spec = SweepSpec(src, base, [*grid_lists, *sample_keys], points, overrides, slos,
                     float(usd) if usd is not None else None)
    check_points(spec)
    return spec


def check_points(spec: SweepSpec) -> None:
    """Every point against the run file's schema, before anything runs: a misspelt path or a bad value fails
    here with the run file's own field-path message, naming the point."""
    from frontend.config.loader import load_config

    base_raw = _read_yaml(spec.base) or {}
    if not isinstance(base_raw, dict):
        load_config(spec.base)  # the loader's own message
    checked: set[str] = set()
    for pt in spec.points:
        key = json.dumps(pt.params, sort_keys=True, default=str)  # the seed cannot make a point invalid
        if key in checked:
            continue
        checked.add(key)
        where = f"{spec.source}: point {_label(pt.params)}"
        ov = point_overrides(base_raw, spec.overrides, pt.params, pt.seed, where)
        try:
            load_config(spec.base, ov)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _label(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "(base)"


# ---------------------------------------------------------------- one point


@dataclass
class Task:
    """Everything a worker needs to run one point (picklable; no open files, no loaded config)."""

    base: str
    overrides: dict[str, Any]
    params: dict[str, Any]
    seed: int | None
    slos: list[str]
    usd_per_gpu_hour: float | None

    @property
    def id(self) -> str:
        return point_id(self.params, self.seed)


def make_tasks(spec: SweepSpec, points: Sequence[Point] | None = None) -> list[Task]:
    base_raw = _read_yaml(spec.base) or {}
    return [Task(str(spec.base), point_overrides(base_raw, spec.overrides, pt.params, pt.seed,
                                                 f"{spec.source}: point {_label(pt.params)}"),
                 pt.params, pt.seed, list(spec.slos), spec.usd_per_gpu_hour)
            for pt in (spec.points if points is None else points)]


def run_point(task: Task) -> dict[str, Any]:
    """One point: load, simulate (records in memory), summarize. Errors become the row's `error`."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {"point_id": task.id, **task.params, "seed": task.seed}
    try:
        row.update(_metrics(task))
    except UserError as e:
        row["error"] = one_line(str(e))
    except Exception as e:  # noqa: BLE001 - one broken point must not lose the others' rows
        row["error"] = "bug: " + one_line(bug_message(e))
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    return row


def _metrics(task: Task) -> dict[str, Any]:
    from frontend.config.loader import load_and_resolve
    from frontend.metrics.report import summarize
    from frontend.session import simulate
    from frontend.study.slo import good_requests, goodput, meets, num_gpus, parse_slos

    resolved = load_and_resolve(task.base, task.overrides)
    result, extra = simulate(resolved, None, warn=lambda _msg: None)
    s = summarize(result, extra)
    gpus = num_gpus(resolved)
    thr = s["throughput"]
    out: dict[str, Any] = {"seed": s["seed"], "completed": s["completed"], "rejected": s["rejected"]}
    for m in ("ttft", "tpot", "e2e"):
        for q in ("mean", "p50", "p90", "p99"):
            out[f"{m}_ms_{q}"] = s[f"{m}_ms"][q]
    out.update(throughput_rps=thr["requests_per_s"], throughput_tok_s=thr["output_tokens_per_s"],
               tok_s_per_gpu=round(thr["output_tokens_per_s"] / gpus, 3) if gpus else 0.0, gpus=gpus,
               simulated_s=s["simulated_duration_s"])
    if task.slos:
        slos = parse_slos(task.slos)
        good = good_requests(result.requests, slos)
        out["slo_met"] = meets(s, slos)
        out.update(goodput(good, s["simulated_duration_s"], gpus, task.usd_per_gpu_hour))
    out["error"] = ""
    return out


# ---------------------------------------------------------------- running many points


def execute(tasks: Sequence[Task], workers: int | None = None, ray_address: str | None = None,
            on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run the tasks: in this process (one worker), on local processes, or as Ray tasks (`ray_address` not
    None; "" or "auto" = ray.init()'s default: RAY_ADDRESS, a running local cluster, or a new local one).
    Rows come back in completion order; `on_row` sees each as it arrives."""
    rows: list[dict[str, Any]] = []

    def got(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    if not tasks:
        return rows
    if ray_address is not None:
        _execute_ray(tasks, ray_address, got)
        return rows
    n = workers or os.cpu_count() or 1
    n = max(1, min(n, len(tasks)))
    if n == 1:
        for t in tasks:
            got(run_point(t))
        return rows
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # fork where there is no other thread to copy mid-state (the CLI's progress bar refreshes by hand), so a
    # worker starts with the simulator imported and a script run from stdin works; spawn otherwise

    method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() \
        else "spawn"
    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context(method)) as pool:
        futures = [pool.submit(run_point, t) for t in tasks]
        try:
            for f in as_completed(futures):
                got(f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return rows


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--ray: the ray package is not installed; install the optional extra: "
                        "pip install -e '.[ray]'") from None
    return ray


def _execute_ray(tasks: Sequence[Task], address: str, got: Callable[[dict[str, Any]], None]) -> None:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=None if address in ("", "auto") else address, include_dashboard=False,
                     log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(f"--ray {address or ''}: cannot connect to or start Ray: {one_line(str(e))}") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(run_point)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                got(ray.get(ref))
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- the results table


def cell(v: Any) -> str:
    """One CSV cell: '' for None, JSON for lists/dicts, str otherwise (deterministic)."""
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def read_table(path: Path, columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """Rows of an existing results.csv by point id; its header must be this sweep's."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        r = csv.reader(f)
        header = next(r, None)
        if header is None:
            return {}
        if header != list(columns):
            raise UserError(f"{path}: written by a different sweep (its columns differ from this sweep's: "
                            f"{', '.join(sorted(set(header) ^ set(columns))) or 'order'}); use another --out")
        rows = {}
        for rec in r:
            if len(rec) != len(columns) or not rec[-1]:  # a row cut short by an interrupted run
                continue
            rows[rec[0]] = dict(zip(columns, rec, strict=True))
    return rows


def write_table(path: Path, columns: Sequence[str], rows: dict[str, dict[str, Any]]) -> None:
    """results.csv sorted by point id, written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for pid in sorted(rows):
            w.writerow([cell(rows[pid].get(c)) for c in columns])
    os.replace(tmp, path)


TEXT_COLUMNS = ("point_id", "error")  # text whatever they hold (a hex id may look like a number: 1234e5678901)


def write_parquet(csv_path: Path) -> Path | None:
    """DIR/results.parquet from results.csv, or None when pyarrow is not importable. Column types are inferred
    from the cells (int64, double, bool, string) except TEXT_COLUMNS, always strings; only an empty cell is null
    (pyarrow's default would also null 'nan', 'NA' or 'None'), so every cell reads back as the CSV holds it."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        return None
    out = csv_path.with_suffix(".parquet")
    opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in TEXT_COLUMNS}, null_values=[""],
                                strings_can_be_null=False)
    pq.write_table(pacsv.read_csv(csv_path, convert_options=opts), out)
    return out


@dataclass
class SweepOutcome:
    path: Path
    total: int
    skipped: int
    ran: int
    failed: list[dict[str, Any]]
    parquet: Path | None
    wall_s: float


def run_sweep(spec: SweepSpec, out: Path, workers: int | None = None, ray_address: str | None = None,
              on_start: Callable[[int, int], None] | None = None,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> SweepOutcome:
    """Run the points of `spec` not already in out/results.csv; write results.csv (+ .parquet)."""
    t0 = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.csv"
    columns = spec.columns
    rows: dict[str, dict[str, Any]] = read_table(path, columns)
    done = {pid for pid, r in rows.items() if not r.get("error")}
    todo = [pt for pt in spec.points if pt.id not in done]
    skipped = len(spec.points) - len(todo)
    write_table(path, columns, rows)  # drops a cut-short row; the appends below need the header
    if on_start is not None:
        on_start(len(todo), skipped)
    failed: list[dict[str, Any]] = []
    with path.open("a", newline="") as f:
        w = csv.writer(f)

        def got(row: dict[str, Any]) -> None:
            rows[row["point_id"]] = row
            w.writerow([cell(row.get(c)) for c in columns])  # appended now: an interrupted sweep resumes
            f.flush()
            if row.get("error"):
                failed.append(row)
            if on_row is not None:
                on_row(row)

        execute(make_tasks(spec, todo), workers, ray_address, got)
    write_table(path, columns, rows)
    pq = write_parquet(path)
    return SweepOutcome(path, len(spec.points), skipped, len(todo), failed, pq, time.perf_counter() - t0)
