"""Decode attention on a PIM device (issue 16 item 1): the bank-level timing model against a hand calculation,
channel balance, the Chakra graphs (PIM rank, sub-batch interleaving), capacity and energy."""

from __future__ import annotations

import math
import random

import pytest

from astra_bridge.embedded.backend import EmbeddedBackend
from chakra_gen.graph import COMP, RECV, SEND
from frontend.compute.batch import BatchShape
from frontend.compute.pim import AttentionShape, BankParallelPIM, load_pim_device
from frontend.config.loader import CONFIGS, ConfigError, parse_config, resolve
from frontend.metrics.report import summarize
from frontend.session import simulate
from tests.conftest import small_run_dict

AQB = load_pim_device(CONFIGS / "pim" / "hbm-pim-aquabolt-xl.yaml")
LLAMA8B = AttentionShape(kv_heads=8, group=4, head_dim=128, kv_bytes=2)


def test_item_time_hand_calculation():
    # Aquabolt-XL: 16 banks / 2 per PCU = 8 units per channel; t_ck = 1/300 MHz = 3.333 ns
    # 2048 tokens of one KV head: 256 tokens per unit = 256 x 128 x 2 B = 65536 B -> 64 rows of 1 KB
    # reads 65536 / 32 = 2048 cycles; MACs 4 query heads x 256 x 128 / 16 = 8192 cycles (MAC-bound)
    # one GEMV: CL 14 + 64 x (tRCD 14 + tRP 14) + 8192 x 3.333 = 14 + 1792 + 27306.67 ns; K and V: x2
    m = BankParallelPIM(AQB, LLAMA8B)
    gemv = 14 + 64 * 28 + 8192 * (1e3 / 300)
    assert m.gemv_ns(2048) == pytest.approx(gemv)
    assert m.item_ns(2048) == math.ceil(2 * gemv)
    # read-bound with one query head per KV head: 2048 read cycles
    mha = BankParallelPIM(AQB, AttentionShape(kv_heads=8, group=1, head_dim=128, kv_bytes=2))
    assert mha.gemv_ns(2048) == pytest.approx(14 + 64 * 28 + 2048 * (1e3 / 300))
    # one sequence, 8 KV heads over 16 channels: one head per channel, the device time is one item
    s = m.schedule([2048])
    assert s.duration_ns == m.item_ns(2048)
    assert sorted(c for _, _, c in s.assignment) == list(range(8))
    # internal bandwidth = channels x units x 32 B / t_ck = 16 x 8 x 9.6 GB/s
    assert AQB.internal_bw_gbps == pytest.approx(16 * 8 * 32 * 0.3)
    assert AQB.external_bw_gbps == pytest.approx(1024 * 2.4 / 8)


def test_channel_assignment_balanced_longest_first():
    rng = random.Random(3)
    m = BankParallelPIM(AQB, LLAMA8B, devices=2)
    ctxs = [rng.randint(1, 6000) for _ in range(37)]
    s = m.schedule(ctxs)
    # every (sequence, KV head) exactly once
    assert sorted((i, h) for i, h, _ in s.assignment) == [(i, h) for i in range(37) for h in range(8)]
    # greedy onto the least-loaded channel: no channel exceeds another by more than the largest item
    assert max(s.channel_ns) - min(s.channel_ns) <= max(s.item_ns)
    assert s.duration_ns == max(s.channel_ns) and sum(s.channel_ns) == sum(s.item_ns)
    # longest first: the items are placed in non-increasing time
    assert s.item_ns == sorted(s.item_ns, reverse=True)
    # LPT bound: within 4/3 of the lower bound max(mean load, largest item)
    lb = max(sum(s.item_ns) / m.channels, max(s.item_ns))
    assert s.duration_ns <= 4 / 3 * lb
    # a long sequence splits across channels by KV head
    one = m.schedule([8000, 10])
    assert len({c for i, _, c in one.assignment if i == 0}) == 8


def _pim_run(interleave: bool = False, **over):
    d = small_run_dict(placement={"pim": {"device": "hbm-pim-aquabolt-xl", "devices": 5, "interleave": interleave}})
    d.update(over)
    return resolve(parse_config(d, "x.yaml"))


def test_kv_capacity_is_the_pim_devices():
    run = _pim_run()
    inst = run.instances[0]
    assert inst.num_gpu_blocks == int(5 * 6 * 2**30 // inst.kv_block_bytes)
    with pytest.raises(ConfigError, match="placement.pim is simulated with tp = pp = dp = 1"):
        _pim_run(instances=[{"name": "g", "hardware": "H100-SXM", "tp": 2,
                             "network": {"dims": [{"topology": "Switch", "npus": 2, "bw_gbps": 450,
                                                   "latency_ns": 500, "algorithm": "direct"}]}}])


def _graphs(interleave: bool, shape: BatchShape):
    run = _pim_run(interleave)
    res, _ = simulate(run)
    rt = res.instances[0]
    return rt, rt.pim.graphs(shape)


def test_graphs_pim_rank_and_messages():
    shape = BatchShape(q=[1, 1, 1, 300], ctx=[900, 40, 3000, 0], num_sampled=4)
    rt, (acc, pim) = _graphs(False, shape)
    layers = rt.spec.num_layers
    assert acc.rank == 0 and pim.rank == 1
    pim_nodes = [i for i, n in enumerate(pim.names) if n.endswith(".pim_attention.0")]
    assert len(pim_nodes) == layers
    want = rt.pim.model.schedule([901, 41, 3001]).duration_ns
    assert all(pim.durations_ns[i] == want for i in pim_nodes)
    # q + new k, v of 3 decode tokens and the KV of the 300 prefill tokens go to the PIM device, outputs come back
    hd, heads, kvh = 128, 32, 8
    sends = [acc.attrs[i]["comm_size"] for i, t in enumerate(acc.types) if t == SEND]
    assert sends == [3 * (heads + 2 * kvh) * hd * 2 + 300 * 2 * kvh * hd * 2] * layers
    recvs = [acc.attrs[i]["comm_size"] for i, t in enumerate(acc.types) if t == RECV]
    assert recvs == [3 * heads * hd * 2] * layers
    # the prefill chunk's attention stays on the accelerator
    assert sum(1 for n in acc.names if n.endswith(".attention")) == layers
    assert not any(".kv_fetch" in n for n in acc.names)  # no cached context: nothing to read back
    # a later chunk (cached context 512) reads that context's KV back before its attention
    shape = BatchShape(q=[1, 256], ctx=[900, 512], num_sampled=1)
    acc, pim = rt.pim.graphs(shape)
    fetch = [i for i, n in enumerate(acc.names) if ".kv_fetch" in n]
    assert len(fetch) == layers and all(acc.attrs[i]["comm_size"] == 512 * 2 * kvh * hd * 2 for i in fetch)
    attn = acc.names.index("L0.attention")
    assert fetch[0] in acc.deps[attn]
    assert sum(1 for n in pim.names if ".kv_fetch_send" in n) == layers


def test_interleaving_bounds():
    """Interleaving two sub-batches is never faster than the slower resource (the accelerator's or the PIM
    device's total work) and never slower than running its two halves one after the other."""
    rng = random.Random(5)
    n = 48
    shape = BatchShape(q=[1] * n, ctx=[rng.randint(200, 4000) for _ in range(n)], num_sampled=n)
    rt, inter = _graphs(True, shape)
    be = EmbeddedBackend(cache=False)
    t_int = be.run(rt.system, inter).duration_ns
    busy_acc = sum(max(1, d) for t, d in zip(inter[0].types, inter[0].durations_ns, strict=True) if t == COMP)
    busy_pim = sum(d for t, d in zip(inter[1].types, inter[1].durations_ns, strict=True) if t == COMP)
    assert t_int >= max(busy_acc, busy_pim)
    halves = []
    for dec, _ in rt.pim._split(shape):
        sub = BatchShape(q=[1] * len(dec), ctx=[shape.ctx[i] for i in dec], num_sampled=len(dec))
        rt.pim.cfg.interleave = False
        halves.append(be.run(rt.system, rt.pim.graphs(sub)).duration_ns)
        rt.pim.cfg.interleave = True
    assert len(halves) == 2
    assert t_int <= sum(halves)
    # the whole batch without interleaving, for the record: interleaving overlaps, so it is not slower here
    rt.pim.cfg.interleave = False
    t_serial = be.run(rt.system, rt.pim.graphs(shape)).duration_ns
    assert t_int < t_serial


def test_pim_run_energy_components_sum():
    res, extra = simulate(_pim_run(True))
    s = summarize(res, extra)
    e = s["energy"]
    assert e["breakdown_j"]["pim_j"] > 0
    assert e["total_j"] == pytest.approx(sum(e["breakdown_j"].values()), rel=1e-6)
    p = res.instances[0].power.energy
    assert p.total_j == pytest.approx(sum(p.components().values()), rel=1e-12)
    assert res.request_log.finished == 40


def test_pim_energy_is_the_work_at_the_devices_per_bit_and_per_mac_figures():
    """A PIM step's device energy: bits its units read at the banks x 0.55 pJ, bits over its interface x 3.59 pJ
    and MACs x 0.32 pJ (configs/pim: O'Connor et al. MICRO 2017 HBM2 energies, AttAcc's MAC energy), with no static
    power in the shipped entries; the offload reports that work per step."""
    run = _pim_run(False)
    res, _ = simulate(run)
    rt = res.instances[0]
    shape = BatchShape(q=[1] * 6, ctx=[300, 900, 1500, 2100, 2700, 3300], num_sampled=6)
    rt.pim.graphs(shape)
    s = rt.pim.shape
    L = rt.pim.num_layers
    kv_read = sum(c + 1 for c in shape.ctx) * s.kv_heads * 2 * s.head_dim * s.kv_bytes
    macs = sum(2 * rt.pim.heads * (c + 1) * s.head_dim for c in shape.ctx)
    assert rt.pim.read_bytes == L * kv_read
    assert rt.pim.macs == L * macs
    io = L * (6 * (rt.pim.heads + 2 * s.kv_heads) * s.head_dim * rt.pim.act_b + 6 * rt.pim.heads * s.head_dim
              * rt.pim.act_b)
    assert rt.pim.io_bytes == io
    pw = rt.power
    before = pw.energy.pim_j
    j = pw.pim(0, 1_000_000, 500_000, (rt.pim.read_bytes, rt.pim.io_bytes, rt.pim.macs))
    expect = (8 * L * kv_read * 0.55 + 8 * io * 3.59 + L * macs * 0.32) * 1e-12
    assert j == pytest.approx(expect, rel=1e-12)
    assert pw.energy.pim_j - before == pytest.approx(expect, rel=1e-12)  # no static power: nothing in the gap
