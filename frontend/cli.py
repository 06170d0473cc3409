"""`astraserve` command line.

Every command runs under one error path: a UserError (bad run file, catalog entry, workload, reference
set, bundle, flag or output path; ProfileError and AstraSimError count as such) is printed as one line
naming where, exit 2. Anything else is an internal invariant broken, reported as a bug (exit 3).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from frontend.compute.errors import ProfileError
from frontend.errors import EXIT_BUG, EXIT_USER, ConfigError, UserError, bug_message, one_line

if TYPE_CHECKING:
    from rich.console import Console

# Start-up: a command imports only what it uses. rich (tables, progress), the config loader (pydantic), the
# astra-sim bridge, the profiler and validation load inside the commands that need them; `--help` and the
# error path of a command load none of them.
app = typer.Typer(add_completion=False, no_args_is_help=True, help="AstraServe: simulate LLM serving clusters.")
backends_app = typer.Typer(no_args_is_help=True, help="Inspect timing backends.")
app.add_typer(backends_app, name="backends")
F = TypeVar("F", bound=Callable[..., Any])
# progress lines when stderr is not a terminal (logs, CI): one every PROGRESS_INTERVAL_S seconds of wall time
PROGRESS_INTERVAL_S = float(os.environ.get("ASTRASERVE_PROGRESS_S", "10"))


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types printed as one line (exit 2). AstraSimError is only raised by the astra-sim
    bridge, so it is looked for only once that module has been imported: no command pays for importing
    it just to be able to catch it."""
    found: list[type[BaseException]] = [UserError, ProfileError]
    mod = sys.modules.get("astra_bridge.astrasim")
    if mod is not None:
        found.append(mod.AstraSimError)
    return tuple(found)


def _is_astra_sim_error(e: BaseException) -> bool:
    mod = sys.modules.get("astra_bridge.astrasim")
    return mod is not None and isinstance(e, mod.AstraSimError)


def fail(msg: str, code: int = EXIT_USER) -> None:
    _console(stderr=True).print(f"[bold red]error:[/] {one_line(msg)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn: F) -> F:
    """One error path for a command: user errors exit 2 with one line, bugs exit 3 with a short report."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except OSError as e:  # a file the user named could not be read or written
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")
        except KeyboardInterrupt:
            _console(stderr=True).print("interrupted")
            raise typer.Exit(130) from None
        except RecursionError as e:
            _bug(e)
        except Exception as e:  # noqa: BLE001 - the last resort: report a bug, never a traceback or exit 0
            if isinstance(e, user_errors()):
                fail(str(e))
            _bug(e)

    return wrapper  # type: ignore[return-value]


def _bug(e: BaseException) -> None:
    if os.environ.get("ASTRASERVE_DEBUG"):
        import traceback

        traceback.print_exception(e)
    _console(stderr=True).print(f"[bold red]bug:[/] {bug_message(e)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(EXIT_BUG)


def _overrides(workload: Path | None, num_requests: int | None, backend: str | None, profile: Path | None,
               engine_meta: Path | None, compute: str | None = None, seed: int | None = None,
               workload_format: str | None = None) -> dict[str, Any]:
    ov: dict[str, Any] = {}
    if num_requests is not None and not 1 <= num_requests <= 100_000_000:
        raise ConfigError(f"--num-requests: expected 1..100000000, got {num_requests}")
    if workload_format is not None and workload is None:
        raise ConfigError("--workload-format: names the format of --workload FILE; give --workload too")
    if workload is not None:
        if not workload.is_file():
            from frontend.workload.jsonl import WorkloadError

            raise WorkloadError(f"--workload {workload}: no such file")
        ov["workload"] = _workload_override(workload, workload_format)
        if num_requests is not None:
            ov["workload"]["num_requests"] = num_requests
    elif num_requests is not None:
        ov["workload"] = {"num_requests": num_requests}
    if backend is not None:
        if backend not in ("embedded", "astra-sim"):
            raise ConfigError(f"--backend: expected 'embedded' or 'astra-sim', got {backend!r}")
        ov["backend"] = {"kind": backend}
    if compute is not None and compute not in ("roofline", "profile"):
        raise ConfigError(f"--compute: expected 'roofline' or 'profile', got {compute!r}")
    if profile is not None:
        if compute == "roofline":
            raise ConfigError("--compute roofline and --profile contradict each other; drop one")
        if not profile.is_dir():
            raise ConfigError(f"--profile {profile}: not a directory (a bundle's model folder)")
        ov["compute"] = {"kind": "profile", "profile": str(profile.resolve())}
    elif compute == "roofline":
        ov["compute"] = {"kind": "roofline", "profile": None}
    elif compute == "profile":
        ov["compute"] = {"kind": "profile"}
    if seed is not None:
        ov["seed"] = seed
    if engine_meta is not None:
        from frontend.validation.reference import engine_from_meta

        ov["engine"] = engine_from_meta(engine_meta)
    return ov


def _workload_override(path: Path, fmt: str | None) -> dict[str, Any]:
    """--workload FILE [--workload-format NAME]: the project's JSONL, or a trace (format detected when omitted)."""
    from frontend.workload.sources import BUILTIN_FORMATS, detect_format

    if fmt is None:
        fmt = detect_format(path) or "jsonl"
    elif fmt != "jsonl" and fmt not in BUILTIN_FORMATS:
        raise ConfigError(f"--workload-format: expected jsonl, {', '.join(BUILTIN_FORMATS)}, got {fmt!r}")
    if fmt == "jsonl":
        return {"kind": "jsonl", "path": str(path.resolve())}
    return {"kind": "trace", "path": str(path.resolve()), "format": fmt}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    out = _console()
    t = Table(title=f"{s.get('name', 'run')}: {s['completed']} completed, {s['rejected']} rejected, "
                    f"{s['iterations']} iterations, {s['simulated_duration_s']:.2f} s simulated, "
                    f"{s['wall_s']:.2f} s wall")
    t.add_column("metric")
    for c in ("mean", "p50", "p90", "p99"):
        t.add_column(c, justify="right")
    for key, label in (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("e2e_ms", "E2E (ms)")):
        t.add_row(label, *(_fmt(s[key][c], ".2f") for c in ("mean", "p50", "p90", "p99")))
    out.print(t)
    thr = s["throughput"]
    out.print(f"throughput: {thr['requests_per_s']:.3f} req/s, {thr['output_tokens_per_s']:.1f} output tok/s; "
              f"exposed comm share {s['exposed_comm_share']:.3%}")
    pc = s.get("prefix_cache", {})
    if pc.get("warning"):
        out.print(f"[yellow]note:[/] {pc['warning']}")


def _rejection_line(s: dict[str, Any]) -> str:
    parts = [f"{code} x{v['count']} (e.g. {v['example']})" for code, v in s["rejections"].items()]
    return "; ".join(parts)


class ProgressLines:
    """Progress for logs: one plain line to stderr every `interval` seconds of wall time."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = PROGRESS_INTERVAL_S if interval is None else interval
        self.t0 = time.perf_counter()
        self.last = self.t0

    def __call__(self, now_ns: int, done: int, total: int) -> None:
        w = time.perf_counter()
        if w - self.last >= self.interval:
            self.last = w
            print(f"progress: {done}/{total} requests done, simulated {now_ns / 1e9:.2f} s, wall {w - self.t0:.0f} s",
                  file=sys.stderr, flush=True)


@app.command()
@guarded
def run(
    config: Annotated[Path, typer.Argument(help="run file (YAML)")],
    out: Annotated[Path | None, typer.Option(help="output directory (default: the config's output.dir)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: the config's)")] = None,
    workload: Annotated[Path | None, typer.Option(help="workload replacing the config's: the project's JSONL or a "
                                                  "trace (Azure / BurstGPT CSV, Mooncake JSONL, mini-swe-agent "
                                                  "trajectories, Copilot Chat OTel JSON lines, TraceLab rounds)")] = None,
    workload_format: Annotated[str | None, typer.Option(help="jsonl | azure | burstgpt | mooncake | swe_traj | "
                                                        "copilot_otel | tracelab (default: detected from the file's "
                                                        "first line)")] = None,
    num_requests: Annotated[int | None, typer.Option(help="limit/override the number of requests")] = None,
    backend: Annotated[str | None, typer.Option(help="embedded | astra-sim")] = None,
    compute: Annotated[str | None, typer.Option(help="roofline | profile: the compute model (roofline ignores a "
                                                "bundle the config names)")] = None,
    profile: Annotated[Path | None, typer.Option(help="profile bundle model folder")] = None,
    engine_meta: Annotated[Path | None, typer.Option(help="take engine settings from a vLLM run's meta.json")] = None,
    dump_chakra: Annotated[Path | None, typer.Option(help="write ASTRA-sim input sets of chosen iterations here")] = None,
    dump_iterations: Annotated[str, typer.Option(help="iterations to dump, e.g. 0,10,100-110")] = "0",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or table")] = False,
    router: Annotated[str | None, typer.Option(help="round_robin | least_loaded | session_affinity | kv_overlap")] = None,
    scheduling: Annotated[str | None, typer.Option(help="fcfs | program_fcfs | plas")] = None,
    retention: Annotated[str | None, typer.Option(help="lru | ttl_pin | min_waste | invocation_distance | saga")] = None,
    prefetch: Annotated[str | None, typer.Option(help="none | invocation_distance")] = None,
    run_ahead: Annotated[bool, typer.Option("--run-ahead/--no-run-ahead", help="advance runs of unchanged decode "
                                            "batches in one step (outputs are identical either way)")] = True,
    timeline: Annotated[Path | None, typer.Option(help="also write a Chrome/Perfetto trace (JSON) of the run here: "
                                                 "iterations, requests, tool gaps, KV transfers, counters")] = None,
) -> None:
    """Simulate a serving run and write requests.csv, iterations.csv, summary.json and run_info.json."""
    from frontend.config.loader import load_and_resolve, load_config
    from frontend.metrics.output import StagedDir
    from frontend.metrics.report import write_summary
    from frontend.session import ChakraDumper, parse_iteration_spec, simulate

    ov = _overrides(workload, num_requests, backend, profile, engine_meta, compute, seed, workload_format)
    if compute == "profile" and profile is None and load_config(config).compute.profile is None:
        raise ConfigError("--compute profile: no profile bundle: give --profile DIR or compute.profile in the run file")
    pol = {k: v for k, v in (("scheduling", scheduling), ("retention", retention), ("prefetch", prefetch)) if v}
    if pol:
        ov["policy"] = pol
    if router:
        ov["router"] = {"policy": router}
    resolved = load_and_resolve(config, ov)
    cfg = resolved.config
    if pol and cfg.workload.kind != "agents" and not _is_session_trace(resolved):
        flags = ", ".join(f"--{k}" for k in pol)
        raise ConfigError(f"{flags}: agent-program policies; this run's workload ({cfg.workload.kind}) has no programs")
    dump = None
    dump_stage = None
    if dump_chakra:  # staged like --out: a failed run leaves no partial dump, a new dump never mixes with an old
        wanted = parse_iteration_spec(dump_iterations)
        dump_stage = StagedDir(dump_chakra, "--dump-chakra", owned=(), owned_glob="iter*")
        dump = ChakraDumper(wanted, dump_stage.path)
    out_dir = out or Path(cfg.output.dir)  # a relative output.dir is relative to the working directory
    show = not quiet and sys.stderr.isatty()
    warned: list[str] = []

    def warn(msg: str) -> None:
        if msg not in warned:
            warned.append(msg)
            if not quiet:
                _console(stderr=True).print(f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)

    with StagedDir(out_dir, "--out" if out else "output.dir") as stage, dump_stage or nullcontext(), \
            _astra_sim_context(cfg):
        if show:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn(), console=_console(stderr=True), transient=True) as prog:
                task = prog.add_task("simulating", total=None)

                def progress(now_ns: int, done: int, total: int) -> None:
                    prog.update(task, completed=done, total=total,
                                description=f"simulated {now_ns / 1e9:8.2f} s")

                result, extra = simulate(resolved, None, progress=progress, dump=dump, warn=warn,
                                         stream_dir=stage.path, run_ahead=run_ahead)
        else:
            result, extra = simulate(resolved, None, progress=None if quiet else ProgressLines(), dump=dump,
                                     warn=warn, stream_dir=stage.path, run_ahead=run_ahead)
        info = {**result.info, "warnings": warned, "command": ["astraserve", *sys.argv[1:]] if sys.argv else []}
        summary = write_summary(result, stage.path, extra, info)
        stage.commit()
        if dump_stage is not None:
            dump_stage.commit()
    if timeline is not None:  # from the committed CSVs: the run streamed its rows there
        from frontend.metrics.timeline import write_timeline

        write_timeline(result, timeline, run_dir=out_dir)
        if not quiet:
            _console().print(f"timeline in {timeline} (open in ui.perfetto.dev or chrome://tracing)")
    if dump is not None:
        missing = sorted(dump.wanted - set(dump.written))
        if missing:
            warn(f"--dump-iterations: run had {dump.counter} iterations; not dumped: {missing[:10]}")
    if not quiet:
        print_summary(summary)
        _console().print(f"outputs in {out_dir}/")
    if summary["rejected"]:
        line = _rejection_line(summary)
        if summary["completed"] == 0:
            fail(f"all {summary['rejected']} requests were rejected, no latency to report (outputs in {out_dir}/): "
                 f"{line}")
        warn(f"{summary['rejected']} of {summary['requests']} requests rejected: {line}")


@contextmanager
def _astra_sim_context(cfg) -> Iterator[None]:
    """AstraSimError messages name the binary they came from (config key or ASTRA_SIM_BIN)."""
    try:
        yield
    except Exception as e:
        if not _is_astra_sim_error(e) or cfg.backend.kind != "astra-sim":
            raise
        from astra_bridge.astrasim import AstraSimError, find_binary

        path, label = find_binary(cfg.backend.astra_sim.binary)
        msg = str(e)
        if path is not None and str(path) not in msg:
            src = label.removeprefix("from ").removeprefix("config ")
            raise AstraSimError(f"{src} {path}: {msg}") from None
        raise


def _is_session_trace(resolved) -> bool:
    """A JSONL workload holding agentic session lines runs through the orchestrator."""
    wl = resolved.config.workload
    if wl.kind != "jsonl":
        return False
    from frontend.session import _first_line, _resolve_path

    return '"sub_requests"' in _first_line(_resolve_path(resolved, wl.path, "workload.path"))


@backends_app.command("check")
@guarded
def backends_check(config: Annotated[Path | None, typer.Argument(help="run file naming a binary")] = None) -> None:
    """Report which backends are usable here and why not."""
    from rich.table import Table

    from astra_bridge.astrasim import find_binary, probe_binary
    from frontend.config.loader import load_and_resolve

    t = Table(title="backends")
    t.add_column("backend")
    t.add_column("usable")
    t.add_column("details")
    t.add_row("embedded", "yes", "pure Python analytical engine (default)")
    cfg_bin = None
    if config is not None:
        cfg_bin = load_and_resolve(config).config.backend.astra_sim.binary
    path, why = find_binary(cfg_bin)
    if path is None:
        t.add_row("astra-sim", "no", why)
    else:
        ok, detail = probe_binary(path)
        t.add_row("astra-sim", "yes" if ok else "no", f"{path}: {detail}")
    _console().print(t)


@app.command()
@guarded
def convert(
    src: Annotated[Path, typer.Argument(metavar="IN", help="a trace file (Azure / BurstGPT CSV, Mooncake JSONL, "
                                                          "mini-swe-agent trajectories, Copilot Chat OTel JSON "
                                                          "lines, TraceLab rounds)")],
    dst: Annotated[Path, typer.Argument(metavar="OUT", help="the project's flat JSONL to write")],
    fmt: Annotated[str | None, typer.Option("--format", help="azure | burstgpt | mooncake | swe_traj | copilot_otel | "
                                            "tracelab (default: detected from the file's first line)")] = None,
    num_requests: Annotated[int | None, typer.Option(help="convert only the first N requests")] = None,
) -> None:
    """Convert a trace to the project's JSONL (request_id, arrival_time_ns, input_toks, output_toks[, input_tok_ids])."""
    from frontend.workload.trace import convert_to_jsonl

    if num_requests is not None and not 1 <= num_requests <= 100_000_000:
        raise ConfigError(f"--num-requests: expected 1..100000000, got {num_requests}")
    n, notes = convert_to_jsonl(src, dst, fmt, num_requests)
    for note in notes:
        print(note)
    print(f"wrote {n} requests to {dst}")


@app.command()
@guarded
def compare(
    config: Annotated[Path, typer.Argument(help="run file")],
    iterations: Annotated[str, typer.Option(help="iterations to compare, e.g. 0-20")] = "0-9",
    workload: Annotated[Path | None, typer.Option()] = None,
    num_requests: Annotated[int | None, typer.Option()] = None,
    out: Annotated[Path | None, typer.Option(help="write the comparison as JSON")] = None,
) -> None:
    """Run chosen iterations through the embedded and the upstream ASTRA-sim backend and diff them."""
    from rich.table import Table

    from astra_bridge.astrasim import AstraSimError
    from astra_bridge.compare import compare_backends
    from frontend.config.loader import load_and_resolve
    from frontend.metrics.output import check_writable_dir, dumps_json
    from frontend.session import parse_iteration_spec

    if out is not None:
        if out.is_dir():
            raise ConfigError(f"--out {out}: is a directory (expected a JSON file path)")
        check_writable_dir(out.parent if str(out.parent) else Path("."), "--out")
    resolved = load_and_resolve(config, _overrides(workload, num_requests, None, None, None))
    wanted = parse_iteration_spec(iterations, "--iterations")
    try:
        rows = compare_backends(resolved, wanted)
    except RuntimeError as e:
        if isinstance(e, AstraSimError):
            raise
        raise AstraSimError(str(e)) from None
    t = Table(title="embedded vs astra-sim per iteration")
    for c in ("iteration", "instance", "embedded_ns", "astrasim_ns", "diff_%"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["iteration"]), r["instance"], str(r["embedded_ns"]), str(r["astrasim_ns"]),
                  f"{r['diff_pct']:+.3f}")
    _console().print(t)
    if out:
        out.write_text(dumps_json(rows))


@app.command()
@guarded
def validate(
    run: Annotated[Path, typer.Option(help="a simulation's output directory (requests.csv, iterations.csv)")],
    reference: Annotated[Path, typer.Option(help="a real vLLM run (requests.jsonl, timeseries.csv, meta.json) or a "
                                            "reference set directory holding one in vllm/")],
    out: Annotated[Path | None, typer.Option(help="where validate.json and the plots go (default: --run)")] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots")] = False,
    partial: Annotated[bool, typer.Option("--partial", help="the run replayed only the reference's first N requests: "
                                          "compare with those N (default: the counts must match)")] = False,
) -> None:
    """Compare TTFT/TPOT/E2E, throughput and KV usage of a simulated run with a real vLLM run."""
    from rich.table import Table

    from frontend.metrics.output import VALIDATE_OUTPUTS, StagedDir
    from frontend.validation.compare import STATS, compare, save, write_plots
    from frontend.validation.reference import resolve_reference_dir

    reference = resolve_reference_dir(reference)
    out_dir = out or run
    with StagedDir(out_dir, "--out" if out else "--run", owned=VALIDATE_OUTPUTS) as stage:
        res = compare(run, reference, partial)
        t = Table(title=f"{run} vs {reference} ({res['requests']['sim']} / {res['requests']['real']} requests)")
        t.add_column("metric")
        t.add_column("stat")
        t.add_column("real (ms)", justify="right")
        t.add_column("sim (ms)", justify="right")
        t.add_column("error", justify="right")
        for key in ("ttft", "tpot", "e2e"):
            for st in STATS:
                c = res["latency"][key][st]
                t.add_row(key.upper(), st, _fmt(c["real_ms"], ".2f"), _fmt(c["sim_ms"], ".2f"),
                          "-" if c["error_pct"] is None else f"{c['error_pct']:+.2f}%")
        con = _console()
        con.print(t)
        thr = res["throughput"]
        con.print(f"output throughput: real {_fmt(thr['real_output_tok_s'], '.1f')} tok/s, sim "
                  f"{_fmt(thr['sim_output_tok_s'], '.1f')} tok/s "
                  f"({'-' if thr['error_pct'] is None else format(thr['error_pct'], '+.2f')}%)")
        for key in ("timeseries_kv_cache_pct", "timeseries_gen_throughput"):
            if key in res:
                v = res[key]
                con.print(f"{key}: mean abs error {v['mae']:.2f} (real mean {v['real_mean']:.2f}, "
                          f"sim mean {v['sim_mean']:.2f})")
        for note in res.get("notes", []):
            _console(stderr=True).print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        save(res, stage.path)
        written = [] if no_plots else write_plots(run, reference, stage.path, partial)
        stage.commit()
    for p in written:
        con.print(f"wrote {out_dir / p.name}")


@app.command()
@guarded
def plot(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="a run's output directory (requests.csv, "
                                              "iterations.csv) or a sweep's (results.csv)")],
    x: Annotated[str | None, typer.Option(help="sweep: the parameter column on the x axis (default: the first "
                                          "swept one)")] = None,
    y: Annotated[list[str] | None, typer.Option(help="sweep: a metric column to plot (repeatable; default: "
                                                "ttft_ms_p99, tpot_ms_p50, output_tokens_per_s_per_gpu)")] = None,
    latency: Annotated[str | None, typer.Option(help="sweep: the Pareto plot's latency column (default "
                                                "ttft_ms_p99)")] = None,
    throughput: Annotated[str | None, typer.Option(help="sweep: the Pareto plot's throughput column (default "
                                                   "output_tokens_per_s_per_gpu)")] = None,
) -> None:
    """Write PNG plots into DIR: latency CDFs and per-instance time series of a run; metric vs parameter and the
    throughput/latency Pareto front of a sweep."""
    from frontend.metrics.plots import plot as draw

    for p in draw(directory, x, y, latency, throughput):
        _console().print(f"wrote {p}")


@app.command("profile")
@guarded
def profile_cmd(
    out: Annotated[Path, typer.Option(help="bundle model folder to write")],
    model: Annotated[str | None, typer.Option(help="model catalog name or HF config.json path")] = None,
    device: Annotated[str, typer.Option(help="cuda | cpu")] = "cuda",
    dtype: Annotated[str, typer.Option(help="bf16 | fp16 | fp32")] = "bf16",
    tp: Annotated[int, typer.Option(help="profile one TP shard of the layer")] = 1,
    max_tokens: Annotated[int, typer.Option()] = 2048,
    max_seqs: Annotated[int, typer.Option()] = 256,
    max_kv: Annotated[int, typer.Option()] = 16384,
    iters: Annotated[int, typer.Option()] = 3,
    hardware: Annotated[str, typer.Option(help="hardware name recorded in meta.yaml")] = "unknown",
    collectives: Annotated[bool, typer.Option("--collectives", help="measure collectives by size and rank count "
                                              "(torch.distributed) into <out>/<dtype>/collectives.csv")] = False,
    sizes: Annotated[str, typer.Option(help="--collectives: sizes, e.g. 1K-256M (doubling) or 4K,64K,1M")] = "1K-256M",
    ranks: Annotated[str | None, typer.Option(help="--collectives: rank counts, e.g. 2,4 (default 2..GPUs)")] = None,
    collective_iters: Annotated[int, typer.Option(help="--collectives: timed samples per size")] = 50,
    lora_ranks: Annotated[str | None, typer.Option(help="also time the batched LoRA kernels into lora.csv at these "
                                                   "ranks, e.g. 8,16,32,64")] = None,
    lora_adapters: Annotated[str, typer.Option(help="--lora-ranks: distinct adapters per batch to time")] = "1,4,16",
) -> None:
    """Measure dense / per-sequence / attention latency tables (with --lora-ranks also the batched LoRA
    kernels; or, with --collectives, collective latencies) with PyTorch and write a bundle."""
    from frontend.config.loader import find_catalog_file
    from frontend.config.models import load_model_spec
    from frontend.metrics.output import check_writable_dir
    from frontend.profiler.run import profile

    for flag, v in (("--tp", tp), ("--max-tokens", max_tokens), ("--max-seqs", max_seqs), ("--max-kv", max_kv),
                    ("--iters", iters)):
        if v < 1:
            fail(f"{flag}: must be >= 1, got {v}")
    check_writable_dir(out, "--out")
    if device not in ("cuda", "cpu"):
        fail(f"--device: expected cuda or cpu, got {device!r}")
    if dtype not in ("bf16", "fp16", "fp32"):
        fail(f"--dtype: expected bf16, fp16 or fp32, got {dtype!r}")
    if collectives:
        from frontend.profiler.collectives import parse_sizes, profile_collectives

        try:
            table = profile_collectives(out, device, dtype, [int(x) for x in ranks.split(",")] if ranks else None,
                                        parse_sizes(sizes), iters=collective_iters, hardware=hardware,
                                        progress=_console(stderr=True).print)
        except (RuntimeError, ValueError) as e:
            fail(str(e))
            return
        _console().print(f"wrote {table} (method in {table.parent / 'meta.yaml'}; fitted presets network-fit-n*.yaml)")
        return
    if model is None:
        fail("--model is required (unless --collectives)")
        return
    ranks_l = adapters_l = None
    if lora_ranks is not None:
        try:
            ranks_l = [int(x) for x in lora_ranks.split(",") if x.strip()]
            adapters_l = [int(x) for x in lora_adapters.split(",") if x.strip()]
        except ValueError:
            fail(f"--lora-ranks / --lora-adapters: comma-separated integers, got {lora_ranks!r} / {lora_adapters!r}")
            return
        if not ranks_l or not adapters_l or min(ranks_l + adapters_l) < 1:
            fail("--lora-ranks / --lora-adapters: at least one value each, all >= 1")
            return
    try:
        try:
            spec = load_model_spec(find_catalog_file(model, "models", None))
        except ConfigError as e:
            raise ConfigError(f"--model: {e}") from None
        show = sys.stderr.isatty()
        path = profile(spec, device, out, dtype, tp, max_tokens, max_seqs, max_kv, iters, hardware=hardware,
                       progress=(lambda s: _console(stderr=True).print(s, end="\r")) if show else None,
                       lora_ranks=ranks_l, lora_adapters=adapters_l)
    except (ConfigError, RuntimeError, ValueError) as e:
        fail(str(e))
        return
    _console().print(f"wrote bundle {path} ({dtype}/meta.yaml, {dtype}/tp{tp}/*.csv)")


def _ray_address(ray: bool, address: str | None) -> str | None:
    """--ray / --ray-address ADDRESS: None = local processes; "" = ray.init()'s default (RAY_ADDRESS or a local
    Ray)."""
    if address is not None:
        return address
    return "" if ray else None


@app.command()
@guarded
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="sweep file (YAML): base:, grid:, samples:, seeds:, overrides:")],
    out: Annotated[Path, typer.Option(help="output directory (results.csv; re-running resumes)")],
    workers: Annotated[int | None, typer.Option(help="local worker processes (default: CPU count)")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="run the points as Ray tasks (RAY_ADDRESS, a running local "
                                                    "Ray or a new one); needs ray (pip install ray)")] = False,
    ray_address: Annotated[str | None, typer.Option(help="the Ray cluster to run on (implies --ray)")] = None,
    slo: Annotated[list[str] | None, typer.Option(help="SLO, e.g. ttft_p99_ms=2000 (adds slo_met and goodput "
                                                       "columns; repeatable)")] = None,
    usd_per_gpu_hour: Annotated[float | None, typer.Option(help="GPU price: adds goodput per dollar")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress")] = False,
) -> None:
    """Run a grid (and random samples) of a run file's fields, times seeds; one row per point in DIR/results.csv."""
    from frontend.study.slo import parse_slos
    from frontend.study.sweep import load_sweep, run_sweep

    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: expected at least 1, got {workers}")
    if usd_per_gpu_hour is not None and not usd_per_gpu_hour > 0:
        raise ConfigError(f"--usd-per-gpu-hour: expected a positive price, got {usd_per_gpu_hour}")
    parse_slos(slo or [])
    spec = load_sweep(sweep_file)
    if slo:
        spec.slos = list(slo)
    if usd_per_gpu_hour is not None:
        spec.usd_per_gpu_hour = usd_per_gpu_hour
    if spec.usd_per_gpu_hour is not None and not spec.slos:
        raise ConfigError("--usd-per-gpu-hour: goodput per dollar needs an SLO (--slo or slo: in the sweep file)")
    err = _console(stderr=True)
    bar = not quiet and sys.stderr.isatty()
    state: dict[str, Any] = {"done": 0, "total": 0}
    prog = None
    task = None

    def on_start(todo: int, skipped: int) -> None:
        nonlocal prog, task
        state["total"] = todo
        if not quiet:
            err.print(f"sweep: {todo} points to run, {skipped} already in {out}/results.csv", highlight=False)
        if bar and todo:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            # refreshed by hand (no refresher thread), so the worker processes can be forked
            prog = Progress(TextColumn("sweep"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), console=err, transient=True, auto_refresh=False)
            prog.start()
            task = prog.add_task("sweep", total=todo)
            prog.refresh()

    def on_row(row: dict[str, Any]) -> None:
        state["done"] += 1
        if prog is not None:
            prog.update(task, advance=1)
            prog.refresh()
        elif not quiet:
            params = " ".join(f"{k}={row.get(k)}" for k in spec.params)
            what = f"error: {row['error']}" if row.get("error") else \
                f"TTFT p99 {_fmt(row.get('ttft_ms_p99'), '.1f')} ms, {_fmt(row.get('throughput_tok_s'), '.0f')} tok/s"
            print(f"[{state['done']}/{state['total']}] {row['point_id']} {params} seed={row.get('seed')}: {what} "
                  f"({row['wall_s']:.1f} s)", file=sys.stderr, flush=True)

    try:
        res = run_sweep(spec, out, workers, _ray_address(ray, ray_address), on_start, on_row)
    finally:
        if prog is not None:
            prog.stop()
    if not quiet:
        note = f", {res.parquet}" if res.parquet else " (no pyarrow: results.parquet skipped)"
        _console().print(f"sweep: {res.ran} points run, {res.skipped} skipped, {res.wall_s:.1f} s wall; "
                         f"{res.path}{note}", highlight=False)
    if res.failed:
        fail(f"{len(res.failed)} of {res.total} points failed (their rows hold the error; re-running retries "
             f"them), e.g. {res.failed[0]['point_id']}: {res.failed[0]['error']}")


@app.command()
@guarded
def capacity(
    config: Annotated[Path, typer.Argument(help="run file (YAML)")],
    slo: Annotated[list[str], typer.Option(help="SLO the run must meet, e.g. ttft_p99_ms=2000 (repeatable)")],
    num_requests: Annotated[int | None, typer.Option(help="limit/override the number of requests")] = None,
    workload: Annotated[Path | None, typer.Option(help="JSONL workload replacing the config's")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: the config's)")] = None,
    backend: Annotated[str | None, typer.Option(help="embedded | astra-sim")] = None,
    compute: Annotated[str | None, typer.Option(help="roofline | profile")] = None,
    profile: Annotated[Path | None, typer.Option(help="profile bundle model folder")] = None,
    rate_lo: Annotated[float | None, typer.Option(help="lower end of the first bracket, req/s (default: half the "
                                                       "run file's rate)")] = None,
    rate_hi: Annotated[float | None, typer.Option(help="upper end of the first bracket, req/s (default: twice "
                                                       "the run file's rate)")] = None,
    tolerance: Annotated[float, typer.Option(help="stop when (failing - passing) <= tolerance x passing")] = 0.05,
    workers: Annotated[int | None, typer.Option(help="local worker processes (default: CPU count)")] = None,
    per_round: Annotated[int | None, typer.Option(help="rates run in parallel per round (default: max(2, "
                                                       "workers))")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="run the rates as Ray tasks")] = False,
    ray_address: Annotated[str | None, typer.Option(help="the Ray cluster to run on (implies --ray)")] = None,
    usd_per_gpu_hour: Annotated[float | None, typer.Option(help="GPU price: adds goodput per dollar")] = None,
    out: Annotated[Path | None, typer.Option(help="write DIR/capacity.csv (every rate tried)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only the answer")] = False,
) -> None:
    """Find the highest arrival rate that meets the SLOs (bracketing, then parallel bisection)."""
    from frontend.study.capacity import find_capacity, write_capacity_csv
    from frontend.study.slo import parse_slos

    slos = parse_slos(slo)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: expected at least 1, got {workers}")
    if per_round is not None and not 1 <= per_round <= 64:
        raise ConfigError(f"--per-round: expected 1..64, got {per_round}")
    ov = _overrides(workload, num_requests, backend, profile, None, compute, seed)

    def on_round(rnd: int, rows: list[dict[str, Any]]) -> None:
        if not quiet:
            got = ", ".join(f"{r['rate_per_s']:g} {'pass' if r['slo_met'] else 'fail'}" for r in rows)
            print(f"round {rnd}: {got}", file=sys.stderr, flush=True)

    res = find_capacity(config, slos, ov, rate_lo, rate_hi, tolerance, workers, per_round, _ray_address(ray, ray_address),
                        usd_per_gpu_hour, on_round)
    if out is not None:
        write_capacity_csv(res, out / "capacity.csv")
    con = _console()
    for n in res.notes:
        con.print(f"[yellow]note:[/] {n}", highlight=False)
    names = " ".join(str(s) for s in slos)
    lo, hi = res.bracket
    if res.rate is None:
        fail(f"capacity: no arrival rate meets {names} (lowest tried {res.rows[0]['rate_per_s']:g} req/s fails)")
    best = next(r for r in res.rows if r["rate_per_s"] == res.rate)
    bracket = f"[{lo:g} passing, {hi:g} failing]" if hi is not None else f"[{lo:g} passing, none failing]"
    con.print(f"capacity: {res.rate:g} req/s meets {names}; bracket {bracket}, {res.rounds} rounds, "
              f"{len(res.rows)} runs; goodput {best['goodput_rps']:g} req/s "
              f"({best['goodput_rps_per_gpu']:g} per GPU)", highlight=False)
    if out is not None:
        con.print(f"rates tried in {out / 'capacity.csv'}", highlight=False)
    if not res.converged:
        fail(f"capacity: the search did not close the bracket to --tolerance {tolerance:g} (see notes)")


# `astraserve run`'s options for the start-up fast path below: option -> (parameter, type); flags map to a
# fixed value. tests/test_startup.py checks this table against the typer command, so the two cannot drift.
RUN_OPTIONS: dict[str, tuple[str, type]] = {
    "--out": ("out", Path), "--seed": ("seed", int), "--workload": ("workload", Path),
    "--workload-format": ("workload_format", str),
    "--num-requests": ("num_requests", int), "--backend": ("backend", str), "--compute": ("compute", str),
    "--profile": ("profile", Path), "--engine-meta": ("engine_meta", Path), "--dump-chakra": ("dump_chakra", Path),
    "--dump-iterations": ("dump_iterations", str), "--router": ("router", str), "--scheduling": ("scheduling", str),
    "--retention": ("retention", str), "--prefetch": ("prefetch", str), "--timeline": ("timeline", Path),
}
RUN_FLAGS: dict[str, tuple[str, bool]] = {"--quiet": ("quiet", True), "-q": ("quiet", True),
                                          "--run-ahead": ("run_ahead", True), "--no-run-ahead": ("run_ahead", False)}


def parse_run_fast(argv: list[str]) -> dict[str, Any] | None:
    """Keyword arguments of `run` for a plain `run CONFIG [--option value | --flag]...` command line, else None.

    typer builds a pydantic adapter per parameter before it calls a command (tens of milliseconds, a third
    of a small run's start-up). A plain command line is read here instead and `run` is called with exactly
    the arguments typer would pass; anything else (help, an unknown or repeated option, a value that looks
    like an option or does not convert) returns None and goes through typer, which prints its usual message.
    """
    if len(argv) < 2 or argv[0] != "run":
        return None
    kw: dict[str, Any] = {}
    config: str | None = None
    i = 1
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("-"):
            if config is not None:
                return None
            config = tok
            i += 1
            continue
        name, eq, val = tok.partition("=")
        if name in RUN_FLAGS and not eq:
            param, flag = RUN_FLAGS[name]
            if param in kw:
                return None
            kw[param] = flag
            i += 1
            continue
        spec = RUN_OPTIONS.get(name)
        if spec is None:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            val = argv[i + 1]
            i += 1
        i += 1
        param, typ = spec
        if param in kw or not val or val.startswith("-"):
            return None
        try:
            kw[param] = typ(val)
        except ValueError:
            return None
    if config is None:
        return None
    return {"config": Path(config), **kw}


def main() -> None:
    fast = parse_run_fast(sys.argv[1:])
    if fast is None:
        app()
        return
    try:
        run(**fast)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _console(stderr=True).print("Aborted!")
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
