"""Drive an upstream ASTRA-sim analytical binary on the same traces.

Per iteration: write the .et files and network/system/memory/comm-group files
into a work directory, run the binary, parse every rank's
`sys[r] finished, N cycles, exposed communication M cycles.` line (1 cycle =
1 ns). Never a silent success: a missing rank, a rank the network does not have,
a rank reported twice with different times, a non-zero exit, an exit by signal,
a timeout, or an implausible time (0 cycles for a rank with work, or less than
the sum of the rank's compute nodes, which run one at a time) is an error.
Identical iterations hit a result cache; independent iterations
(compare runs) go through a pool of worker processes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from astra_bridge.backend import InstanceSystem, ResultCache, backend_stats
from astra_bridge.inputs import network_npus, write_input_set
from astra_bridge.result import IterationResult
from chakra_gen.et_io import DEFAULT_COMPUTE_TIME, with_micro_durations
from chakra_gen.graph import COMP, Graph

REPO = Path(__file__).resolve().parents[1]
BINARY_NAMES = ("AstraSim_Analytical_Congestion_Unaware", "AstraSim_Analytical_Congestion_Aware")
SEARCH_UNDER = ("build/astra_analytical/build/bin", "build/astra_analytical/build/AstraSim_Analytical",
                "bin", "build/bin")
FINISHED = re.compile(r"sys\[(\d+)\] finished, (\d+) cycles(?:, exposed communication (\d+) cycles)?")


class AstraSimError(RuntimeError):
    pass


def find_binary(configured: str | None = None) -> tuple[Path | None, str]:
    """The binary from config, ASTRA_SIM_BIN, or under extern/astra-sim/; else why not."""
    for label, cand in (("config backend.astra_sim.binary", configured), ("ASTRA_SIM_BIN", os.environ.get("ASTRA_SIM_BIN"))):
        if cand:
            p = Path(cand).expanduser()
            if p.is_file() and os.access(p, os.X_OK):
                return p, f"from {label}"
            return None, f"{label} points at {p}, which is not an executable file"
    root = REPO / "extern" / "astra-sim"
    if not root.is_dir():
        return None, ("no binary: set ASTRA_SIM_BIN or backend.astra_sim.binary, or build ASTRA-sim under "
                      "extern/astra-sim/ (see its README)")
    for sub in SEARCH_UNDER:
        for name in BINARY_NAMES:
            p = root / sub / name
            if p.is_file() and os.access(p, os.X_OK):
                return p, "found under extern/astra-sim/"
    return None, "extern/astra-sim/ exists but holds no built analytical binary (build it per its README)"


def parse_finished(stdout: str, num_ranks: int) -> tuple[list[int], list[int]]:
    finish: dict[int, int] = {}
    exposed: dict[int, int] = {}
    for m in FINISHED.finditer(stdout):
        r = int(m.group(1))
        f, e = int(m.group(2)), int(m.group(3) or 0)
        if r in finish and (finish[r], exposed[r]) != (f, e):
            raise AstraSimError(f"ASTRA-sim reported rank {r} finished twice ({finish[r]} and {f} cycles)")
        finish[r] = f
        exposed[r] = e
    missing = [r for r in range(num_ranks) if r not in finish]
    if missing:
        raise AstraSimError(f"ASTRA-sim printed no 'finished' line for ranks {missing[:16]} "
                            f"(mismatched send/recv or collectives hang silently)")
    extra = sorted(r for r in finish if r >= num_ranks)
    if extra:
        raise AstraSimError(f"ASTRA-sim reported ranks {extra[:16]} that the {num_ranks}-NPU trace set does not have")
    return [finish[r] for r in range(num_ranks)], [exposed[r] for r in range(num_ranks)]


def compute_floor_ns(g: Graph) -> int:
    """A rank's compute nodes run one at a time: their sum (0 ns → 1 ns) bounds its finish from below."""
    return sum(max(1, x) for t, x in zip(g.types, g.durations_ns, strict=True) if t == COMP)


def check_plausible(graphs: list[Graph], finish: list[int], compute_time: str) -> None:
    """Reject results that cannot be right (a rank with work at 0 cycles, or faster than its compute)."""
    for g, f in zip(graphs, finish, strict=True):
        if len(g) and f <= 0:
            raise AstraSimError(f"ASTRA-sim reported rank {g.rank} finished at {f} cycles but it has {len(g)} nodes")
        floor = compute_floor_ns(with_micro_durations(g, compute_time))
        if f < floor:
            raise AstraSimError(f"ASTRA-sim reported rank {g.rank} finished at {f} ns, before its compute alone "
                                f"({floor} ns) could")


def _digest(system: InstanceSystem, graphs: list[Graph]) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(repr(system.fingerprint()).encode())
    for g in graphs:
        h.update(g.digest().encode())
    return h.hexdigest()


class AstraSimBackend:
    name = "astra-sim"
    runahead_safe = False  # every iteration goes to the binary as it comes (no engine run-ahead)

    def __init__(self, cfg=None, cache: bool = True, binary: Path | None = None) -> None:
        configured = getattr(cfg, "binary", None) if cfg is not None else None
        if binary is None:
            binary, why = find_binary(configured)
            if binary is None:
                raise AstraSimError(f"astra-sim backend unusable: {why}")
        self.binary = Path(binary)
        self.timeout_s = float(getattr(cfg, "timeout_s", 120.0) if cfg is not None else 120.0)
        self.workers = int(getattr(cfg, "workers", 1) if cfg is not None else 1)
        wd = getattr(cfg, "work_dir", None) if cfg is not None else None
        # A work_dir the user names keeps every iteration's inputs (to rerun them by hand); the default
        # temporary one keeps only the inputs of a failed iteration (the error names them) and goes away
        # with the backend when it is empty, so long runs do not fill /tmp with one folder per iteration.
        self.keep_inputs = bool(wd)
        self.work_dir = Path(wd) if wd else Path(tempfile.mkdtemp(prefix="astraserve-astrasim-"))
        if not self.keep_inputs:
            weakref.finalize(self, _remove_if_empty, self.work_dir)
        self.cache = ResultCache() if cache else None
        self.compute_time = str(getattr(cfg, "compute_time", DEFAULT_COMPUTE_TIME) if cfg is not None
                                else DEFAULT_COMPUTE_TIME)
        self.runs = 0

    def _run_one(self, system: InstanceSystem, graphs: list[Graph]) -> IterationResult:
        key = _digest(system, graphs)
        d = self.work_dir / key
        paths = write_input_set(d, system, graphs, compute_time=self.compute_time)
        cmd = [str(self.binary), f"--workload-configuration={paths['workload']}",
               f"--system-configuration={paths['system']}", f"--network-configuration={paths['network']}",
               f"--remote-memory-configuration={paths['memory']}", f"--logging-folder={d / 'log'}"]
        if "comm_groups" in paths:
            cmd.append(f"--comm-group-configuration={paths['comm_groups']}")
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s, cwd=d)
        except subprocess.TimeoutExpired:
            raise AstraSimError(f"ASTRA-sim timed out after {self.timeout_s:.0f} s on {d}") from None
        if p.returncode < 0:
            tail = (p.stdout + p.stderr)[-800:]
            raise AstraSimError(f"ASTRA-sim was ended by signal {-p.returncode} on {d}:\n{tail}")
        if p.returncode != 0:
            tail = (p.stdout + p.stderr)[-800:]
            raise AstraSimError(f"ASTRA-sim exited with {p.returncode} on {d}:\n{tail}")
        n_ranks = network_npus(system)
        finish, exposed = parse_finished(p.stdout, n_ranks)
        by_rank = {g.rank: i for i, g in enumerate(graphs)}
        order = sorted(by_rank)
        finish = [finish[r] for r in order]
        exposed = [exposed[r] for r in order]
        ordered = [graphs[by_rank[r]] for r in order]
        check_plausible(ordered, finish, self.compute_time)
        slow = max(range(len(finish)), key=lambda r: finish[r])
        comp = compute_floor_ns(with_micro_durations(ordered[slow], self.compute_time))
        shutil.rmtree(d if not self.keep_inputs else d / "log", ignore_errors=True)
        return IterationResult(duration_ns=finish[slow], per_rank_finish_ns=finish, compute_ns=comp,
                               exposed_comm_ns=exposed[slow])

    def run(self, system: InstanceSystem, graphs: list[Graph], start_ns: int = 0) -> IterationResult:
        def simulate() -> IterationResult:
            self.runs += 1
            return self._run_one(system, graphs)

        return simulate() if self.cache is None else self.cache.run(system, graphs, simulate)

    def run_many(self, jobs: list[tuple[InstanceSystem, list[Graph]]]) -> list[IterationResult]:
        """Independent iterations in parallel worker processes."""
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return list(pool.map(lambda j: self.run(*j), jobs))

    def stats(self) -> dict[str, int]:
        return backend_stats(self.runs, self.cache)


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def probe_binary(path: Path) -> tuple[bool, str]:
    """Run a two-rank, one-node workload and check both ranks finish."""
    from astra_bridge.embedded.network import Dimension

    g = []
    for r in range(2):
        gr = Graph(rank=r)
        gr.add("probe", COMP, duration_ns=5000)
        g.append(gr)
    system = InstanceSystem(name="probe", num_npus=2, dims=(Dimension("FullyConnected", 2, 50, 500),))
    try:
        b = AstraSimBackend(binary=path, cache=False)
        r = b.run(system, g)
        shutil.rmtree(b.work_dir, ignore_errors=True)
    except (AstraSimError, OSError) as e:
        return False, str(e)
    return (r.duration_ns == 5000, f"probe workload finished at {r.duration_ns} ns (expect 5000)")
