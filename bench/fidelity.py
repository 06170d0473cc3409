"""Fidelity against real vLLM on every reference set in ../shared/data: profile and roofline paths.

For each set (one example config per set under configs/examples/validate-*.yaml) this prints
 - the `astraserve validate` table (TTFT/TPOT/E2E mean/p50/p90/p95/p99, signed error) for the
   profile path and the roofline path side by side, and output throughput;
 - per-iteration compute time of the roofline model against the measured profile on the same
   batch shapes (where the physics of the roofline model shows);
 - the light-load TTFT breakdown: for requests that arrived to an idle engine, real
   (queued -> scheduled -> first token) against simulated.
Usage: python bench/fidelity.py [--sets NAME,...] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from frontend.compute.batch import BatchShape
from frontend.compute.profile import ProfileModel
from frontend.config.loader import load_and_resolve
from frontend.metrics.report import write_outputs
from frontend.session import simulate
from frontend.validation.compare import STATS, compare

REPO = Path(__file__).resolve().parents[1]
SETS = {
    "RTX4090-Llama-3.1-8B": "validate-rtx4090-llama3.1-8b.yaml",
    "RTXPRO6000-Qwen3-32B": "validate-rtxpro6000-qwen3-32b-tp2.yaml",
    "RTXPRO6000-Qwen3-30B-A3B": "validate-rtxpro6000-qwen3-30b-a3b-dp2ep2.yaml",
}


def run_set(cfg: Path, compute: str) -> tuple[dict, object, Path]:
    ov = {"compute": {"kind": "roofline"}} if compute == "roofline" else None
    run = load_and_resolve(cfg, ov)
    res, ex = simulate(run)
    d = Path(tempfile.mkdtemp(prefix=f"fid-{compute}-"))
    write_outputs(res, d, ex)
    return res, run, d


def light_load(ref: Path, run_dir: Path, n: int = 6) -> list[str]:
    """The first requests of the run (the engine still lightly loaded): real queued -> first token against
    the simulated one, both measured from the engine core's queue (vLLM's queued_ts, the run's queued_ns)."""
    import csv

    rows = [json.loads(x) for x in (ref / "requests.jsonl").read_text().splitlines() if x.strip()]
    sim = {r["request_id"]: r for r in csv.DictReader((run_dir / "requests.csv").open())}
    t0 = min(r["queued_ts"] for r in rows)
    lines = []
    for i, r in enumerate(rows[:n]):
        s = sim.get(f"req-{i}")
        sim_ms = (int(s["first_token_ns"]) - max(int(s["arrival_ns"]), int(s.get("queued_ns") or -1))) / 1e6 \
            if s and s["status"] == "finished" else float("nan")
        lines.append(f"  {r['request_id']:8s} prompt {r['input_toks']:5d}, queued at {r['queued_ts'] - t0:6.3f} s: "
                     f"real queued->first token {1e3 * (r['first_token_ts'] - r['queued_ts']):7.1f} ms, "
                     f"simulated {sim_ms:7.1f} ms")
    return lines


def per_group_step(results: dict) -> list[str]:
    """A DP group's step (every member the same batch): the chain's compute and collectives, profile vs roofline."""
    from frontend.cluster import padded_tokens

    shapes = [("decode 1 x ctx 512 per member", BatchShape([1], [511], 1)),
              ("decode 64 x ctx 1024 per member", BatchShape([1] * 64, [1023] * 64, 64)),
              ("decode 128 x ctx 1024 per member", BatchShape([1] * 128, [1023] * 128, 128)),
              ("prefill 1024 per member", BatchShape([1024], [0], 1)),
              ("mixed 1536 + 32 decode per member", BatchShape([1536] + [1] * 32, [0] + [800] * 32, 33))]
    out = [f"  {'batch':34s} {'profile ms':>10s} {'roofline ms':>11s} {'error':>8s} {'of which collectives ms':>24s}"]
    for name, sh in shapes:
        row = []
        for compute in ("profile", "roofline"):
            _, res = results[compute]
            g = res.instances[0].unit
            t = padded_tokens(sh.num_tokens, g.capture_sizes)
            tokens = t or sh.num_tokens
            cost = g._group_cost([sh] * g.dp, tokens, g.dp * tokens, bool(t))
            g.size_collectives(tokens)
            from chakra_gen.builder import build_graphs

            r = g.backend.run(g.system, build_graphs(g.spec, [cost]), start_ns=0)
            row.append((r.duration_ns / 1e6, r.comm_ns / 1e6))
        (p, pc), (q, _) = row
        out.append(f"  {name:34s} {p:10.3f} {q:11.3f} {100 * (q - p) / p:+7.1f}% {pc:24.3f}")
    return out


def per_iteration(run, res) -> list[str]:
    if run.instances[0].dp_group is not None:
        return []
    inst = run.instances[0]
    rt = res.instances[0]
    roof = rt.compute if not isinstance(rt.compute, ProfileModel) else rt.compute.roof
    cfg = run.config.compute
    if cfg.kind != "profile":
        return []
    bundle = Path(cfg.profile)
    if not bundle.is_absolute():
        bundle = run.config.base_dir / bundle
    pm = ProfileModel(bundle, inst.engine.dtype, inst.tp, roof)
    L = inst.model.num_layers
    shapes = [("decode 1 x ctx 512", BatchShape([1], [511], 1)),
              ("decode 32 x ctx 1024", BatchShape([1] * 32, [1023] * 32, 32)),
              ("decode 128 x ctx 1024", BatchShape([1] * 128, [1023] * 128, 128)),
              ("prefill 512", BatchShape([512], [0], 1)), ("prefill 2048", BatchShape([2048], [0], 1)),
              ("mixed 1536 prefill + 32 decode", BatchShape([1536] + [1] * 32, [0] + [800] * 32, 33))]
    out = [f"  {'batch':32s} {'profile ms':>10s} {'roofline ms':>11s} {'error':>8s}"]
    for name, sh in shapes:
        def total(m, sh=sh):
            return (sum(o.duration_ns for o in m.prologue_ops(sh) + m.epilogue_ops(sh))
                    + L * sum(o.duration_ns for o in m.layer_ops(sh))) / 1e6
        p, r = total(pm), total(roof)
        out.append(f"  {name:32s} {p:10.3f} {r:11.3f} {100 * (r - p) / p:+7.1f}%")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default=",".join(SETS))
    a = ap.parse_args()
    for name in a.sets.split(","):
        cfg = REPO / "configs/examples" / SETS[name]
        run = load_and_resolve(cfg)
        ref = (cfg.parent / run.config.engine_meta).parent
        tables, dirs, results = {}, {}, {}
        for compute in ("profile", "roofline"):
            res, r, d = run_set(cfg, compute)
            tables[compute], dirs[compute], results[compute] = compare(d, ref), d, (r, res)
        print(f"== {name} ({SETS[name]})")
        print(f"{'metric':6s} {'stat':5s} {'vLLM ms':>11s} {'profile ms':>11s} {'error':>8s} {'roofline ms':>12s} "
              f"{'error':>8s}")
        worst = {"profile": 0.0, "roofline": 0.0}
        for key in ("ttft", "tpot", "e2e"):
            for st in STATS:
                p = tables["profile"]["latency"][key][st]
                q = tables["roofline"]["latency"][key][st]
                print(f"{key.upper():6s} {st:5s} {p['real_ms']:11.2f} {p['sim_ms']:11.2f} {p['error_pct']:+7.2f}% "
                      f"{q['sim_ms']:12.2f} {q['error_pct']:+7.2f}%")
                for c, t in (("profile", p), ("roofline", q)):
                    worst[c] = max(worst[c], abs(t["error_pct"]))
        for c in ("profile", "roofline"):
            t = tables[c]["throughput"]
            print(f"{c}: output throughput {t['sim_output_tok_s']:.1f} tok/s vs {t['real_output_tok_s']:.1f} "
                  f"({t['error_pct']:+.2f}%); worst |error| {worst[c]:.2f}%")
        if run.instances[0].dp_group is not None:
            print("per-step time of the DP group (compute and collectives), roofline vs profile, same batches:")
            print("\n".join(per_group_step(results)))
        else:
            print("per-iteration compute, roofline vs profile (all layers + head), same batch:")
            print("\n".join(per_iteration(*results["profile"])))
        print("start of the run (lightly loaded), profile path:")
        print("\n".join(light_load(ref, dirs["profile"])))
        print()


if __name__ == "__main__":
    main()
