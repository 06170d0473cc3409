"""`astraserve` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from astra_bridge.astrasim import AstraSimError
from frontend.compute.profile import ProfileError
from frontend.config.loader import ConfigError, load_and_resolve
from frontend.workload.jsonl import WorkloadError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="AstraServe: simulate LLM serving clusters.")
backends_app = typer.Typer(no_args_is_help=True, help="Inspect timing backends.")
app.add_typer(backends_app, name="backends")
err = Console(stderr=True)


def fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _overrides(workload: Path | None, num_requests: int | None, backend: str | None, profile: Path | None,
               engine_meta: Path | None) -> dict[str, Any]:
    ov: dict[str, Any] = {}
    if workload is not None:
        ov["workload"] = {"kind": "jsonl", "path": str(workload.resolve())}
        if num_requests is not None:
            ov["workload"]["num_requests"] = num_requests
    elif num_requests is not None:
        ov["workload"] = {"num_requests": num_requests}
    if backend is not None:
        ov["backend"] = {"kind": backend}
    if profile is not None:
        ov["compute"] = {"kind": "profile", "profile": str(profile.resolve())}
    if engine_meta is not None:
        from frontend.validation.reference import engine_from_meta

        ov["engine"] = engine_from_meta(engine_meta)
    return ov


def print_summary(s: dict[str, Any]) -> None:
    out = Console()
    t = Table(title=f"{s.get('name', 'run')}: {s['completed']} completed, {s['rejected']} rejected, "
                    f"{s['iterations']} iterations, {s['simulated_duration_s']:.2f} s simulated, "
                    f"{s['wall_s']:.2f} s wall")
    t.add_column("metric")
    for c in ("mean", "p50", "p90", "p99"):
        t.add_column(c, justify="right")
    for key, label in (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("e2e_ms", "E2E (ms)")):
        t.add_row(label, *(f"{s[key][c]:.2f}" for c in ("mean", "p50", "p90", "p99")))
    out.print(t)
    thr = s["throughput"]
    out.print(f"throughput: {thr['requests_per_s']:.3f} req/s, {thr['output_tokens_per_s']:.1f} output tok/s; "
              f"exposed comm share {s['exposed_comm_share']:.3%}")
    pc = s.get("prefix_cache", {})
    if pc.get("warning"):
        out.print(f"[yellow]note:[/] {pc['warning']}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="run file (YAML)")],
    out: Annotated[Path | None, typer.Option(help="output directory (default: the config's output.dir)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: the config's)")] = None,
    workload: Annotated[Path | None, typer.Option(help="JSONL workload replacing the config's")] = None,
    num_requests: Annotated[int | None, typer.Option(help="limit/override the number of requests")] = None,
    backend: Annotated[str | None, typer.Option(help="embedded | astra-sim")] = None,
    profile: Annotated[Path | None, typer.Option(help="profile bundle model folder")] = None,
    engine_meta: Annotated[Path | None, typer.Option(help="take engine settings from a vLLM run's meta.json")] = None,
    dump_chakra: Annotated[Path | None, typer.Option(help="write ASTRA-sim input sets of chosen iterations here")] = None,
    dump_iterations: Annotated[str, typer.Option(help="iterations to dump, e.g. 0,10,100-110")] = "0",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or table")] = False,
    router: Annotated[str | None, typer.Option(help="round_robin | least_loaded | session_affinity | kv_overlap")] = None,
    scheduling: Annotated[str | None, typer.Option(help="fcfs | program_fcfs | plas")] = None,
    retention: Annotated[str | None, typer.Option(help="lru | ttl_pin | min_waste | invocation_distance")] = None,
    prefetch: Annotated[str | None, typer.Option(help="none | invocation_distance")] = None,
) -> None:
    """Simulate a serving run and write requests.csv, iterations.csv and summary.json."""
    from frontend.metrics.report import write_outputs
    from frontend.session import ChakraDumper, parse_iteration_spec, simulate

    try:
        if backend is not None and backend not in ("embedded", "astra-sim"):
            raise ConfigError(f"--backend: expected 'embedded' or 'astra-sim', got {backend!r}")
        ov = _overrides(workload, num_requests, backend, profile, engine_meta)
        pol = {k: v for k, v in (("scheduling", scheduling), ("retention", retention), ("prefetch", prefetch)) if v}
        if pol:
            ov["policy"] = pol
        if router:
            ov["router"] = {"policy": router}
        resolved = load_and_resolve(config, ov)
        dump = ChakraDumper(parse_iteration_spec(dump_iterations), dump_chakra) if dump_chakra else None
    except (ConfigError, WorkloadError, ValueError) as e:
        fail(str(e))
        return
    out_dir = out or Path(resolved.config.output.dir)
    show = not quiet and sys.stderr.isatty()
    warned: set[str] = set()

    def warn(msg: str) -> None:
        if msg not in warned:
            warned.add(msg)
            err.print(f"[yellow]warning:[/] {msg}", highlight=False)

    try:
        if show:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn(), console=err, transient=True) as prog:
                task = prog.add_task("simulating", total=None)

                def progress(now_ns: int, done: int, total: int) -> None:
                    prog.update(task, completed=done, total=total,
                                description=f"simulated {now_ns / 1e9:8.2f} s")

                result, extra = simulate(resolved, seed, progress=progress, dump=dump, warn=warn)
        else:
            result, extra = simulate(resolved, seed, dump=dump, warn=warn)
    except (ConfigError, WorkloadError, ProfileError, AstraSimError) as e:
        fail(str(e))
        return
    summary = write_outputs(result, out_dir, extra)
    if dump is not None:
        missing = sorted(dump.wanted - set(dump.written))
        if missing:
            warn(f"--dump-iterations: run had {dump.counter} iterations; not dumped: {missing[:10]}")
    if not quiet:
        print_summary(summary)
        Console().print(f"outputs in {out_dir}/")


@backends_app.command("check")
def backends_check(config: Annotated[Path | None, typer.Argument(help="run file naming a binary")] = None) -> None:
    """Report which backends are usable here and why not."""
    from astra_bridge.astrasim import find_binary, probe_binary

    t = Table(title="backends")
    t.add_column("backend")
    t.add_column("usable")
    t.add_column("details")
    t.add_row("embedded", "yes", "pure Python analytical engine (default)")
    cfg_bin = None
    if config is not None:
        try:
            cfg_bin = load_and_resolve(config).config.backend.astra_sim.binary
        except ConfigError as e:
            fail(str(e))
    path, why = find_binary(cfg_bin)
    if path is None:
        t.add_row("astra-sim", "no", why)
    else:
        ok, detail = probe_binary(path)
        t.add_row("astra-sim", "yes" if ok else "no", f"{path}: {detail}")
    Console().print(t)


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="run file")],
    iterations: Annotated[str, typer.Option(help="iterations to compare, e.g. 0-20")] = "0-9",
    workload: Annotated[Path | None, typer.Option()] = None,
    num_requests: Annotated[int | None, typer.Option()] = None,
    out: Annotated[Path | None, typer.Option(help="write the comparison as JSON")] = None,
) -> None:
    """Run chosen iterations through the embedded and the upstream ASTRA-sim backend and diff them."""
    from astra_bridge.compare import compare_backends

    try:
        resolved = load_and_resolve(config, _overrides(workload, num_requests, None, None, None))
        from frontend.session import parse_iteration_spec

        rows = compare_backends(resolved, parse_iteration_spec(iterations))
    except (ConfigError, WorkloadError, ValueError, RuntimeError) as e:
        fail(str(e))
        return
    t = Table(title="embedded vs astra-sim per iteration")
    for c in ("iteration", "instance", "embedded_ns", "astrasim_ns", "diff_%"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["iteration"]), r["instance"], str(r["embedded_ns"]), str(r["astrasim_ns"]),
                  f"{r['diff_pct']:+.3f}")
    Console().print(t)
    if out:
        out.write_text(json.dumps(rows, indent=2) + "\n")


@app.command()
def validate(
    run: Annotated[Path, typer.Option(help="a simulation's output directory (requests.csv, iterations.csv)")],
    reference: Annotated[Path, typer.Option(help="a real vLLM run: requests.jsonl, timeseries.csv, meta.json")],
    out: Annotated[Path | None, typer.Option(help="where validate.json and the plots go (default: --run)")] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots")] = False,
) -> None:
    """Compare TTFT/TPOT/E2E, throughput and KV usage of a simulated run with a real vLLM run."""
    from frontend.validation.compare import STATS, compare, save, write_plots

    try:
        res = compare(run, reference)
    except (OSError, ValueError, KeyError) as e:
        fail(f"validate: {e}")
        return
    out_dir = out or run
    out_dir.mkdir(parents=True, exist_ok=True)
    t = Table(title=f"{run} vs {reference} ({res['requests']['sim']} / {res['requests']['real']} requests)")
    t.add_column("metric")
    t.add_column("stat")
    t.add_column("real (ms)", justify="right")
    t.add_column("sim (ms)", justify="right")
    t.add_column("error", justify="right")
    for key in ("ttft", "tpot", "e2e"):
        for st in STATS:
            c = res["latency"][key][st]
            t.add_row(key.upper(), st, f"{c['real_ms']:.2f}", f"{c['sim_ms']:.2f}", f"{c['error_pct']:+.2f}%")
    con = Console()
    con.print(t)
    thr = res["throughput"]
    con.print(f"output throughput: real {thr['real_output_tok_s']:.1f} tok/s, sim {thr['sim_output_tok_s']:.1f} tok/s "
              f"({thr['error_pct']:+.2f}%)")
    for key in ("timeseries_kv_cache_pct", "timeseries_gen_throughput"):
        if key in res:
            v = res[key]
            con.print(f"{key}: mean abs error {v['mae']:.2f} (real mean {v['real_mean']:.2f}, sim mean {v['sim_mean']:.2f})")
    save(res, out_dir)
    if not no_plots:
        for p in write_plots(run, reference, out_dir):
            con.print(f"wrote {p}")


@app.command("profile")
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
) -> None:
    """Measure dense / per-sequence / attention latency tables (or, with --collectives, collective
    latencies) with PyTorch and write a bundle."""
    from frontend.config.loader import find_catalog_file
    from frontend.config.models import load_model_spec
    from frontend.profiler.run import profile

    if device not in ("cuda", "cpu"):
        fail(f"--device: expected cuda or cpu, got {device!r}")
    if dtype not in ("bf16", "fp16", "fp32"):
        fail(f"--dtype: expected bf16, fp16 or fp32, got {dtype!r}")
    if collectives:
        from frontend.profiler.collectives import parse_sizes, profile_collectives

        try:
            table = profile_collectives(out, device, dtype, [int(x) for x in ranks.split(",")] if ranks else None,
                                        parse_sizes(sizes), iters=collective_iters, hardware=hardware,
                                        progress=err.print)
        except (RuntimeError, ValueError) as e:
            fail(str(e))
            return
        Console().print(f"wrote {table} (method in {table.parent / 'meta.yaml'}; fitted presets network-fit-n*.yaml)")
        return
    if model is None:
        fail("--model is required (unless --collectives)")
        return
    try:
        spec = load_model_spec(find_catalog_file(model, "models", None))
        show = sys.stderr.isatty()
        path = profile(spec, device, out, dtype, tp, max_tokens, max_seqs, max_kv, iters, hardware=hardware,
                       progress=(lambda s: err.print(s, end="\r")) if show else None)
    except (ConfigError, RuntimeError, ValueError) as e:
        fail(str(e))
        return
    Console().print(f"wrote bundle {path} ({dtype}/meta.yaml, {dtype}/tp{tp}/*.csv)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
