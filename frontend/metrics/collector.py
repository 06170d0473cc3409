"""Per-iteration and per-request records, streamed as they complete.

Each finished (or rejected) request and each iteration is written to its CSV
the moment it is known, when a writer is attached, and folded into running
aggregates; only what the summary needs is kept (latency samples as packed
8-byte arrays), so memory stays flat in the number of requests. Runs that ask
to keep the rows (tests, benches) get them as lists too.
"""

from __future__ import annotations

import csv
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from frontend.instance.runtime import InstanceRuntime, StepOutcome
    from frontend.workload.request import Request

ITER_COLUMNS = [
    "instance", "start_ns", "end_ns", "num_seqs", "prefill_tokens", "decode_tokens", "kv_blocks_used",
    "kv_blocks_total", "compute_ns", "comm_ns", "exposed_comm_ns", "mem_ns", "exposed_mem_ns", "comm_bytes",
    "preempted", "cached", "energy_j",
]
# the power time series, written when an instance has power states (hardware idle_to_deep_idle_ms) or a PIM
# device: power_w = energy_j / the iteration's duration; the gap before the iteration split into its time at idle
# and in deep idle with their energies (PIM devices' idle energy in idle_j) and the wake-up energy. energy_j +
# idle_j + deep_idle_j + wake_j over the rows, plus the run's trailing gap, is the run's energy total.
POWER_COLUMNS = ["power_w", "idle_ns", "deep_idle_ns", "idle_j", "deep_idle_j", "wake_j"]
# queued_ns: when the instance's engine core took the request into its waiting queue (vLLM's queued_ts; later than
# arrival_ns when it arrived during a step under async scheduling), -1 for a rejected request
REQ_COLUMNS = ["request_id", "arrival_ns", "first_token_ns", "finish_ns", "input_tokens", "output_tokens",
               "cached_tokens", "preemptions", "instance", "status", "reject_reason", "queued_ns"]

# rejection reason codes (requests.csv `reject_reason`, summary `rejections`), from the scheduler's messages
REASONS = (("must generate at least one token", "no_output_tokens"),
           ("exceed max_model_len", "exceeds_max_model_len"),
           ("KV blocks but the instance has", "exceeds_kv_capacity"))


def reason_code(msg: str) -> str:
    for needle, code in REASONS:
        if needle in msg:
            return code
    return "other"


@dataclass
class InstanceIterStats:
    iterations: int = 0
    busy_ns: int = 0


@dataclass
class IterationLog:
    rows: list[tuple] = field(default_factory=list)
    tier_names: list[str] = field(default_factory=list)
    keep: bool = True
    power_columns: bool = False  # POWER_COLUMNS after ITER_COLUMNS (runs with power states or a PIM device)
    count: int = 0
    busy_ns: int = 0
    exposed_comm_ns: int = 0
    exposed_mem_ns: int = 0
    per_instance: dict[str, InstanceIterStats] = field(default_factory=dict)
    _writer: object | None = None

    @property
    def columns(self) -> list[str]:
        cols = list(ITER_COLUMNS)
        if self.power_columns:
            cols += POWER_COLUMNS
        for t in self.tier_names:
            cols += [f"{t}_load_blocks", f"{t}_store_blocks", f"{t}_load_bytes", f"{t}_store_bytes",
                     f"{t}_occupancy_blocks"]
        return cols

    def attach(self, f: IO[str]) -> None:
        """Stream rows into `f` (CSV with a header) from now on."""
        w = csv.writer(f)
        w.writerow(self.columns)
        self._writer = w

    def add(self, inst: InstanceRuntime, start: int, end: int, out: StepOutcome) -> None:
        # runs once per simulated iteration: plain locals, no per-row helper calls without tiers
        p = out.plan
        r = out.result
        tiers = r.mem_bytes_by_tier
        host = sum(tiers.values()) if tiers else 0
        hbm = out.tensor_bytes - host // max(1, out.num_ranks)
        dur = end - start
        if self.power_columns:
            energy, power_cells = self._power(inst, start, dur, out, hbm, host)
        else:
            energy = inst.power.iteration(start, dur, r.compute_ns, max(0, hbm), r.comm_bytes, host)
        pool = inst.pool
        row = (inst.name, start, end, len(p.requests), p.num_prefill_tokens, p.num_decode_tokens,
               pool.num_used, pool.num_blocks, r.compute_ns, r.comm_ns, r.exposed_comm_ns,
               r.mem_ns, r.exposed_mem_ns, r.comm_bytes, len(p.preempted), int(r.cached),
               round(energy, 6))
        if self.power_columns:
            row += power_cells
        if self.tier_names:
            row += self._tier_cells(inst, p)
        self.count += 1
        self.busy_ns += dur
        self.exposed_comm_ns += r.exposed_comm_ns
        self.exposed_mem_ns += r.exposed_mem_ns
        st = self.per_instance.get(inst.name)
        if st is None:
            st = self.per_instance[inst.name] = InstanceIterStats()
        st.iterations += 1
        st.busy_ns += dur
        if self._writer is not None:
            self._writer.writerow(row)  # type: ignore[attr-defined]
        if self.keep:
            self.rows.append(row)

    @staticmethod
    def _power(inst: InstanceRuntime, start: int, dur: int, out: StepOutcome, hbm: int, host: int
               ) -> tuple[float, tuple]:
        """The iteration's energy and its POWER_COLUMNS cells (the gap before it as the power model bills it)."""
        pw = inst.power
        r = out.result
        e = pw.energy
        gap = max(0, start - pw.last_end_ns)
        before = (e.idle_j, e.deep_idle_j, e.wake_j, e.pim_j)
        if inst.pim is None:
            energy = pw.iteration(start, dur, r.compute_ns, max(0, hbm), r.comm_bytes, host)
            pim_gap = 0.0
        else:  # the accelerator's own compute time; the PIM device's energy beside it
            energy = pw.iteration(start, dur, out.npu_compute_ns, max(0, hbm), r.comm_bytes, host)
            p0 = e.pim_j
            it = pw.pim(gap, dur, out.pim_busy_ns, out.pim_work)
            energy += it
            pim_gap = e.pim_j - p0 - it
        after = pw.deep_after_ns
        idle_ns = gap if after is None else min(gap, after)
        cells = (round(energy / (dur * 1e-9), 3) if dur > 0 else 0.0, idle_ns, gap - idle_ns,
                 round(e.idle_j - before[0] + pim_gap, 6), round(e.deep_idle_j - before[1], 6),
                 round(e.wake_j - before[2], 6))
        return energy, cells

    def _tier_cells(self, inst: InstanceRuntime, plan) -> tuple:
        if not self.tier_names:
            return ()
        moved: dict[tuple[str, str], int] = {}
        for m in plan.kv_moves:
            moved[(m.tier, m.direction)] = moved.get((m.tier, m.direction), 0) + m.blocks
        occ = {t.name: t.occupancy_blocks() for t in inst.lower_tiers}
        bb = inst.inst.kv_block_bytes * inst.inst.num_npus
        cells: list = []
        for t in self.tier_names:
            lo, st = moved.get((t, "load"), 0), moved.get((t, "store"), 0)
            cells += [lo, st, lo * bb, st * bb, occ.get(t, "")]
        return tuple(cells)

    def __len__(self) -> int:
        return self.count


@dataclass
class InstanceReqStats:
    finished: int = 0
    preemptions: int = 0
    ttft_ns: array = field(default_factory=lambda: array("q"))


@dataclass
class ProgramTurns:
    turns: int = 0
    queue_ns: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class RequestLog:
    """Every request that left the system (finished or rejected), folded into the summary's aggregates."""

    tier_names: list[str] = field(default_factory=list)
    keep: bool = True
    requests: list[Request] = field(default_factory=list)
    total: int = 0
    finished: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    reason_example: dict[str, str] = field(default_factory=dict)
    output_tokens: int = 0
    preemptions: int = 0
    without_content: int = 0
    ttft_ns: array = field(default_factory=lambda: array("q"))
    e2e_ns: array = field(default_factory=lambda: array("q"))
    tpot_ns: array = field(default_factory=lambda: array("d"))
    per_instance: dict[str, InstanceReqStats] = field(default_factory=dict)
    looked_up_tokens: int = 0
    tier_hit_tokens: Counter = field(default_factory=Counter)
    programs: dict[str, ProgramTurns] = field(default_factory=dict)
    later_cached: int = 0
    later_input: int = 0
    turn_ttft_ns: dict[str, array] = field(default_factory=dict)
    # streaming: latency samples are not held in memory but read back from the CSV for the summary
    csv_path: Path | None = None
    _writer: object | None = None

    @property
    def columns(self) -> list[str]:
        return REQ_COLUMNS + ([f"cached_tokens_{t}" for t in ["hbm", *self.tier_names]] if self.tier_names else [])

    def attach(self, f: IO[str]) -> None:
        """Stream rows into `f`; latency samples are then read back from that file, not kept."""
        w = csv.writer(f)
        w.writerow(self.columns)
        self._writer = w
        name = getattr(f, "name", None)
        self.csv_path = Path(name) if isinstance(name, str) else None

    def add(self, r: Request) -> None:
        self.total += 1
        if not r.content.has_content:
            self.without_content += 1
        self.preemptions += r.preemptions
        for t, n in r.cached_tokens_by_tier.items():
            self.tier_hit_tokens[t] += n
        code = ""
        if r.status == "finished":
            self.finished += 1
            self.output_tokens += r.output_tokens
            self.looked_up_tokens += r.input_tokens
            ttft = r.first_token_ns - r.arrival_ns
            if self.csv_path is None:
                self.ttft_ns.append(ttft)
                self.e2e_ns.append(r.finish_ns - r.arrival_ns)
                if r.output_tokens > 1:
                    self.tpot_ns.append((r.finish_ns - r.first_token_ns) / (r.output_tokens - 1))
            st = self.per_instance.get(r.instance)
            if st is None:
                st = self.per_instance[r.instance] = InstanceReqStats()
            st.finished += 1
            st.preemptions += r.preemptions
            if self.csv_path is None:
                st.ttft_ns.append(ttft)
            if r.program_id:
                k = "first" if r.turn_index == 0 else "later"
                self.turn_ttft_ns.setdefault(k, array("q")).append(ttft)
                if r.turn_index > 0:
                    self.later_cached += r.cached_tokens
                    self.later_input += r.input_tokens
        elif r.status == "rejected":
            self.rejected += 1
            code = reason_code(r.reject_reason)
            self.reasons[code] += 1
            self.reason_example.setdefault(code, r.reject_reason)
        else:
            from frontend.errors import InternalError

            raise InternalError(f"request {r.request_id} recorded with status {r.status!r}")
        if r.program_id:
            pt = self.programs.get(r.program_id)
            if pt is None:
                pt = self.programs[r.program_id] = ProgramTurns()
            pt.turns += 1
            if r.scheduled_ns >= 0:
                pt.queue_ns += max(0, r.scheduled_ns - r.arrival_ns)
            pt.input_tokens += r.input_tokens
            pt.cached_tokens += r.cached_tokens
        if self._writer is not None:
            row = [r.request_id, r.arrival_ns, r.first_token_ns, r.finish_ns, r.input_tokens, r.output_tokens,
                   r.cached_tokens, r.preemptions, r.instance, r.status, code, r.queued_ns]
            if self.tier_names:
                row += [r.cached_tokens_by_tier.get(t, 0) for t in ["hbm", *self.tier_names]]
            self._writer.writerow(row)  # type: ignore[attr-defined]
        if self.keep:
            self.requests.append(r)


def csv_samples(path: Path, metric: str, instance: str | None = None, size: int | None = None) -> array:
    """One latency sample per finished request of a streamed requests.csv, in file order (the order the
    in-memory path appends them): 'ttft' / 'e2e' / 'tpot' in ns as float64 (exact for integer ns below 2^53).
    `size` (an upper bound on the count) preallocates the array so it never over-allocates."""
    out = array("d", [0.0]) * size if size else array("d")  # no zeroed bytes copy: 8 bytes per sample at peak
    k = 0

    def put(v: float) -> None:
        nonlocal k
        if size:
            out[k] = v
        else:
            out.append(v)
        k += 1

    with path.open(newline="") as f:
        rows = csv.reader(f)
        head = next(rows)
        ix = {c: i for i, c in enumerate(head)}
        st, arr, first, fin, outt, inst = (ix["status"], ix["arrival_ns"], ix["first_token_ns"], ix["finish_ns"],
                                           ix["output_tokens"], ix["instance"])
        for row in rows:
            if row[st] != "finished" or (instance is not None and row[inst] != instance):
                continue
            if metric == "ttft":
                put(int(row[first]) - int(row[arr]))
            elif metric == "e2e":
                put(int(row[fin]) - int(row[arr]))
            else:
                n = int(row[outt])
                if n > 1:
                    put((int(row[fin]) - int(row[first])) / (n - 1))
    if size and k < size:
        del out[k:]
    return out
