"""Measure collective latency by message size and rank count with torch.distributed.

`astraserve profile --collectives` spawns one process per rank (torch.multiprocessing
spawn; NCCL on CUDA with one GPU per rank, gloo on CPU) for every rank count asked
for, and times ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER and ALL_TO_ALL at each size.

Size convention (`bytes` column) follows nccl-tests (doc/PERFORMANCE.md): the
largest per-rank buffer of the operation:

    ALL_REDUCE      the reduced buffer, in = out = S
    ALL_GATHER      the gathered output, N * per-rank input (input = S / N)
    REDUCE_SCATTER  the input, N * per-rank output (output = S / N)
    ALL_TO_ALL      the per-rank send (= receive) buffer, S / N to each peer

so that bus bandwidth is busbw = S / t * factor with factor 2(N-1)/N for
all-reduce and (N-1)/N for the other three (nccl-tests PERFORMANCE.md).
`frontend.network_fit.astra_comm_size` converts to the size ASTRA-sim's
collective node carries.

Method, per (collective, size): `warmup` untimed calls, then `iters` samples.
Each sample: all ranks synchronise (device sync + barrier, device sync), then
each rank times one call: CUDA events around the call on CUDA (device time from
an idle stream, so the host launch gap of an eager-mode call is included, as in
an eager serving step; a CUDA-graph replay does not pay it), perf_counter around
the call on CPU. A rank that arrives early
waits inside the collective for the last one, so a sample's collective time is
the minimum over ranks (the last arriver's start to its completion, ranks
finishing together); `time_us` is the median and `min_us` the minimum of those
samples, `max_rank_us` the median of the per-sample maximum over ranks (the
arrival skew included).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import socket
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

COLLECTIVES = ("ALL_REDUCE", "ALL_GATHER", "REDUCE_SCATTER", "ALL_TO_ALL")
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
CSV_COLUMNS = ("collective", "num_ranks", "bytes", "time_us", "min_us", "max_rank_us", "iters", "backend", "device",
               "dtype")


@dataclass(frozen=True)
class CollectiveRow:
    collective: str
    num_ranks: int
    bytes: int
    time_us: float
    min_us: float
    max_rank_us: float
    iters: int
    backend: str
    device: str
    dtype: str


def parse_size(text: str) -> int:
    """'64', '4K', '1KiB', '16M', '1G' -> bytes (binary multiples)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def parse_sizes(spec: str) -> list[int]:
    """'1K-256M' (powers of two between) or '4K,64K,1M' or a mix: '1K-8K,1M'."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (parse_size(x) for x in part.split("-", 1))
            if lo <= 0 or hi < lo:
                raise ValueError(f"size range {part!r}: need 0 < low <= high")
            x = lo
            while x <= hi:
                out.add(x)
                x *= 2
        else:
            v = parse_size(part)
            if v <= 0:
                raise ValueError(f"size {part!r} must be positive")
            out.add(v)
    if not out:
        raise ValueError(f"no sizes in {spec!r}")
    return sorted(out)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _elements(nbytes: int, n: int, elem: int) -> int:
    """Elements of the per-rank tensor that makes the op's nccl-tests size nbytes, rounded so N divides it."""
    per = max(1, nbytes // elem)
    return max(n, per - per % n)


def _op(collective: str, n: int, numel: int, dtype, device: str):  # noqa: ANN001 - torch types stay lazy
    """A zero-argument callable running one collective on pre-allocated buffers."""
    import torch
    import torch.distributed as dist

    if collective == "ALL_REDUCE":
        buf = torch.ones(numel, dtype=dtype, device=device)
        return lambda: dist.all_reduce(buf)
    if collective == "ALL_GATHER":
        inp = torch.ones(numel // n, dtype=dtype, device=device)
        out = torch.empty(numel, dtype=dtype, device=device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
        return lambda: gather(out, inp)
    if collective == "REDUCE_SCATTER":
        inp = torch.ones(numel, dtype=dtype, device=device)
        out = torch.empty(numel // n, dtype=dtype, device=device)
        if device == "cpu":  # gloo has no reduce_scatter_tensor; reduce_scatter over a list of chunks is the same op
            chunks = list(inp.chunk(n))
            return lambda: dist.reduce_scatter(out, chunks)
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # renamed in torch 2.13
        return lambda: scatter(out, inp)
    if collective == "ALL_TO_ALL":
        inp = torch.ones(numel, dtype=dtype, device=device)
        out = torch.empty(numel, dtype=dtype, device=device)
        return lambda: dist.all_to_all_single(out, inp)
    raise ValueError(f"unknown collective {collective!r} (expected one of {COLLECTIVES})")


def _worker(rank: int, n: int, port: int, backend: str, device: str, dtype_name: str, sizes: list[int],
            collectives: list[str], iters: int, warmup: int, result_path: str) -> None:
    """One rank: time every (collective, size); rank 0 writes the rows as JSON to result_path."""
    import time

    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dev = "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank)
        dev = f"cuda:{rank}"
    kw = {"device_id": torch.device(dev)} if device == "cuda" else {}
    try:
        dist.init_process_group(backend, rank=rank, world_size=n, **kw)
    except TypeError:  # torch < 2.3 has no device_id
        dist.init_process_group(backend, rank=rank, world_size=n)
    dtype = getattr(torch, TORCH_DTYPES[dtype_name])
    elem = torch.tensor([], dtype=dtype).element_size()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        if device == "cuda":
            torch.cuda.synchronize()

    rows = []
    try:
        for coll in collectives:
            for nbytes in sizes:
                numel = _elements(nbytes, n, elem)
                fn = _op(coll, n, numel, dtype, dev)
                for _ in range(warmup):
                    fn()
                sync()
                samples = []
                for _ in range(iters):
                    sync()
                    if device == "cuda":
                        a = torch.cuda.Event(enable_timing=True)
                        b = torch.cuda.Event(enable_timing=True)
                        a.record()
                        fn()
                        b.record()
                        b.synchronize()
                        samples.append(a.elapsed_time(b) * 1000.0)  # ms -> us
                    else:
                        t0 = time.perf_counter()
                        fn()
                        samples.append((time.perf_counter() - t0) * 1e6)
                mine = torch.tensor(samples, dtype=torch.float64, device=dev)  # NCCL gathers device tensors
                gathered = [torch.zeros_like(mine) for _ in range(n)]
                dist.all_gather(gathered, mine)
                if rank == 0:
                    per = torch.stack([g.cpu() for g in gathered])  # ranks x samples
                    lo = per.min(dim=0).values.tolist()
                    hi = per.max(dim=0).values.tolist()
                    rows.append(asdict(CollectiveRow(
                        coll, n, numel * elem, round(statistics.median(lo), 3), round(min(lo), 3),
                        round(statistics.median(hi), 3), iters, backend, device, dtype_name)))
                del fn
        if rank == 0:
            Path(result_path).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def measure(world_sizes: Sequence[int], sizes: Sequence[int], collectives: Sequence[str] = COLLECTIVES,
            device: str = "cuda", dtype: str = "bf16", iters: int = 50, warmup: int = 5,
            progress: Callable[[str], None] | None = None) -> list[CollectiveRow]:
    """Spawn one process per rank for every world size and return the measured rows."""
    try:
        import torch
        import torch.multiprocessing as mp
    except ImportError as e:  # optional extra
        raise RuntimeError("the collectives profiler needs PyTorch: pip install -e '.[profile]'") from e
    for c in collectives:
        if c not in COLLECTIVES:
            raise ValueError(f"unknown collective {c!r} (expected one of {', '.join(COLLECTIVES)})")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but no CUDA device is visible")
        avail = torch.cuda.device_count()
        too_big = [w for w in world_sizes if w > avail]
        if too_big:
            raise RuntimeError(f"rank counts {too_big} exceed the {avail} visible GPUs (one GPU per rank)")
        backend = "nccl"
    elif device == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"device: expected cuda or cpu, got {device!r}")
    if any(w < 2 for w in world_sizes):
        raise ValueError("rank counts must be >= 2")
    if iters < 1 or warmup < 0:
        raise ValueError("iters must be >= 1 and warmup >= 0")
    say = progress or (lambda s: None)
    rows: list[CollectiveRow] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in world_sizes:
            say(f"collectives on {n} ranks ({backend})")
            out = Path(tmp) / f"n{n}.json"
            mp.spawn(_worker, args=(n, _free_port(), backend, device, dtype, list(sizes), list(collectives), iters,
                                    warmup, str(out)), nprocs=n, join=True)
            rows += [CollectiveRow(**r) for r in json.loads(out.read_text())]
    return rows


def write_table(rows: Sequence[CollectiveRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    return path


def read_table(path: Path) -> list[CollectiveRow]:
    """Read collectives.csv (the columns written by write_table; extra columns are ignored)."""
    rows = []
    with Path(path).open(newline="") as f:
        for i, r in enumerate(csv.DictReader(f), start=2):
            try:
                rows.append(CollectiveRow(
                    collective=r["collective"].strip().upper(), num_ranks=int(r["num_ranks"]), bytes=int(r["bytes"]),
                    time_us=float(r["time_us"]), min_us=float(r.get("min_us") or r["time_us"]),
                    max_rank_us=float(r.get("max_rank_us") or r["time_us"]), iters=int(r.get("iters") or 0),
                    backend=r.get("backend", ""), device=r.get("device", ""), dtype=r.get("dtype", "")))
            except (KeyError, ValueError) as e:
                raise ValueError(f"{path}:{i}: bad collectives row ({e})") from e
    return rows


def table_path(bundle: Path, dtype: str | None = None) -> Path:
    """collectives.csv of a bundle: a CSV path itself, <bundle>/<dtype>/collectives.csv or <bundle>/collectives.csv."""
    bundle = Path(bundle)
    if bundle.is_file():
        return bundle
    cands = ([bundle / dtype / "collectives.csv"] if dtype else []) + [bundle / "collectives.csv"]
    cands += sorted(bundle.glob("*/collectives.csv"))
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(f"no collectives.csv in {bundle} (looked at {', '.join(str(c) for c in cands[:3])})")


def _nccl_version() -> str | None:
    import torch

    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)


def profile_collectives(out: Path, device: str = "cuda", dtype: str = "bf16", world_sizes: Sequence[int] | None = None,
                        sizes: Sequence[int] | None = None, collectives: Sequence[str] = COLLECTIVES,
                        iters: int = 50, warmup: int = 5, hardware: str = "unknown",
                        progress: Callable[[str], None] | None = None) -> Path:
    """Measure and write <out>/<dtype>/collectives.csv; record the method under `collectives:` in meta.yaml.

    Also writes <out>/<dtype>/network-fit-n<N>.yaml, the all-reduce fit per rank count
    (frontend.network_fit, default fit knobs), where the table determines one.

    world_sizes defaults to 2..(visible GPUs) on CUDA and [2] on CPU; sizes to 1 KiB..256 MiB doubling.
    Returns the CSV path.
    """
    try:
        import torch
    except ImportError as e:  # optional extra
        raise RuntimeError("the collectives profiler needs PyTorch: pip install -e '.[profile]'") from e

    if world_sizes is None:
        top = torch.cuda.device_count() if device == "cuda" and torch.cuda.is_available() else 2
        world_sizes = list(range(2, max(2, top) + 1))
    sizes = list(sizes) if sizes is not None else parse_sizes("1K-256M")
    rows = measure(world_sizes, sizes, collectives, device, dtype, iters, warmup, progress)
    ddir = Path(out) / dtype
    csv_path = write_table(rows, ddir / "collectives.csv")
    meta_path = ddir / "meta.yaml"
    meta = (yaml.safe_load(meta_path.read_text()) or {}) if meta_path.exists() else {
        "profiler": "astraserve", "hardware": hardware, "variant": dtype}
    meta["collectives"] = {
        "table": "collectives.csv",
        "profiled_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        "backend": "nccl" if device == "cuda" else "gloo",
        "nccl_version": _nccl_version() if device == "cuda" else None,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else "cpu",
        "hardware": hardware,
        "dtype": dtype,
        "num_ranks": list(world_sizes),
        "collectives": list(collectives),
        "sizes_bytes": sizes,
        "iters": iters,
        "warmup": warmup,
        "size_convention": "nccl-tests: ALL_REDUCE buffer; ALL_GATHER output (N x input); REDUCE_SCATTER input "
                           "(N x output); ALL_TO_ALL per-rank buffer",
        "method": "one process per rank (torch.multiprocessing spawn), one GPU per rank; per sample all ranks sync "
                  "(device sync + barrier) then time one call ("
                  + ("CUDA events from an idle stream, host launch gap included" if device == "cuda" else "perf_counter")
                  + "); sample = min over ranks (the "
                  "last arriver's time); time_us = median, min_us = min over samples; max_rank_us = median of the "
                  "per-sample max over ranks",
        "env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")},
    }
    from frontend.network_fit import fit_table, write_preset  # imports this module; lazy to avoid the cycle

    fits = fit_table(rows)
    presets = []
    for n in sorted({f.num_ranks for f in fits if f.collective == "ALL_REDUCE"}):
        presets.append(write_preset(fits, n, ddir / f"network-fit-n{n}.yaml", str(csv_path)).name)
    meta["collectives"]["fitted_presets"] = presets
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    return csv_path
