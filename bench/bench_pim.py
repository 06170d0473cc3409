"""PIM attention offload: TPOT and energy per output token of one decode step vs batch size, for
HBM-only (attention on the H100), PIM offload (every decode sequence's attention on the PIM devices) and PIM
with NeuPIMs sub-batch interleaving. Llama-3.1-8B on one H100 (configs/examples/pim-llama3.1-8b-hbm-pim.yaml),
every sequence decoding one token over a `--context`-token KV cache.

How it is measured: for each batch size one decode step is built (chakra_gen: the accelerator's graph, and with
PIM the PIM device as rank 1) and timed by the embedded backend; TPOT = the step's duration (each sequence emits
one token), energy = the instance's power model over the step (NPU compute/standby, HBM and link bits, PIM
devices' active/idle) divided by the batch. `fits` says whether the batch's KV fits the KV capacity
(H100 HBM after weights for HBM-only; the PIM devices' capacity with PIM).
Usage: python bench/bench_pim.py [--context 2048] [--device hbm-pim-aquabolt-xl] [--devices 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from astra_bridge.embedded.backend import EmbeddedBackend  # noqa: E402
from chakra_gen.builder import build_graphs  # noqa: E402
from chakra_gen.pim import pim_busy_ns  # noqa: E402
from frontend.compute.batch import BatchShape  # noqa: E402
from frontend.config.loader import load_and_resolve  # noqa: E402
from frontend.instance.runtime import compute_busy_ns  # noqa: E402
from frontend.metrics.power import InstancePower  # noqa: E402
from frontend.session import build_instances  # noqa: E402

CFG = REPO / "configs/examples/pim-llama3.1-8b-hbm-pim.yaml"
BATCHES = (1, 4, 16, 32, 64, 128, 256)


def runtime(pim: dict | None):
    over: dict = {"placement": {"pim": pim}} if pim else {"placement": {"pim": None}}
    run = load_and_resolve(CFG, over)
    be = EmbeddedBackend(cache=False)
    return build_instances(run, be)[0], be


def step(rt, be, shape: BatchShape) -> tuple[int, float]:
    """(duration ns, energy J) of one step."""
    if rt.pim is not None:
        graphs = rt.pim.graphs(shape)
        r = be.run(rt.system, graphs)
        p = InstancePower(rt.inst.hardware, rt.inst.num_npus)
        p.pim_active_w, p.pim_idle_w = rt.pim.active_w, rt.pim.idle_w
        e = p.iteration(0, r.duration_ns, compute_busy_ns(graphs[0]), graphs[0].tensor_bytes_total(), r.comm_bytes, 0)
        return r.duration_ns, e + p.pim(0, r.duration_ns, pim_busy_ns(graphs[1]))
    graphs = build_graphs(rt.spec, [rt.costs(shape)])
    r = be.run(rt.system, graphs)
    p = InstancePower(rt.inst.hardware, rt.inst.num_npus)
    return r.duration_ns, p.iteration(0, r.duration_ns, r.compute_ns, graphs[0].tensor_bytes_total(), r.comm_bytes, 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--device", default="hbm-pim-aquabolt-xl")
    ap.add_argument("--devices", type=int, default=5)
    a = ap.parse_args()
    modes = {"hbm": runtime(None),
             "pim": runtime({"device": a.device, "devices": a.devices, "interleave": False}),
             "pim+il": runtime({"device": a.device, "devices": a.devices, "interleave": True})}
    hbm_rt = modes["hbm"][0]
    print(f"Llama-3.1-8B, one H100; decode step at context {a.context}; PIM: {a.devices} x {a.device} "
          f"(KV capacity {hbm_rt.inst.num_gpu_blocks} blocks HBM-only, {modes['pim'][0].inst.num_gpu_blocks} on PIM)")
    print(f"{'batch':>5s} | {'TPOT ms':>8s} {'J/tok':>7s} {'fits':>4s} (HBM) | {'TPOT ms':>8s} {'J/tok':>7s} {'fits':>4s} "
          f"(PIM) | {'TPOT ms':>8s} {'J/tok':>7s} (PIM+interleave)")
    for b in BATCHES:
        shape = BatchShape(q=[1] * b, ctx=[a.context] * b, num_sampled=b)
        cells = []
        for rt, be in modes.values():
            ns, j = step(rt, be, shape)
            blocks = b * -(-(a.context + 1) // rt.inst.engine.block_size)
            fits = "yes" if blocks <= rt.inst.num_gpu_blocks else "no"
            cells.append((ns / 1e6, j / b, fits))
        (h, hj, hf), (p, pj, pf), (i, ij, _) = cells
        print(f"{b:5d} | {h:8.3f} {hj:7.4f} {hf:>4s}       | {p:8.3f} {pj:7.4f} {pf:>4s}       | {i:8.3f} {ij:7.4f}")


if __name__ == "__main__":
    main()
