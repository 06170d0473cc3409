"""Write and read Chakra `.et` files (varint-delimited protobuf stream).

Layout per CHAKRA_ET.md: varint32 length + GlobalMetadata, then repeated
varint32 length + Node. Durations are written as whole microseconds (Chakra's
`duration_micros`) and, exactly, as a `duration_ns` attribute so a round trip
through our reader is lossless.

Exact compute time for ASTRA-sim (compute_time="exact", the default): Chakra
durations are whole microseconds, and ASTRA-sim's replay charges
duration_micros * 1000 ns, so sub-µs compute would be rounded. With
`roofline-enabled` ASTRA-sim times a compute node instead as
trunc(num_ops / perf * 1e9) ns with perf = min(local_mem_bw * num_ops /
tensor_size, peak_perf) (Workload::issue_comp, Roofline::get_perf). Writing
num_ops = 2*d + 1, tensor_size = 0 (operational intensity +inf, so perf =
peak) and peak-perf = 0.002 TFLOP/s (2e9 FLOP/s) gives trunc(d + 0.5) = d ns
for every d (the floating-point error, ~1e-16 * d, never reaches the 0.5
margin); d = max(1, duration) because a 0-ns compute node takes 1 ns in
ASTRA-sim's replay. The node's model FLOPs and bytes are kept in the
`model_num_ops` / `model_tensor_size` attributes (our reader restores them).
compute_time="micros" writes the plain replay form (whole µs, as before).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf.internal.decoder import _DecodeVarint32
from google.protobuf.internal.encoder import _VarintBytes

from chakra_gen import et_def_pb2 as pb
from chakra_gen.graph import COLL, COMP, Graph

ET_VERSION = "0.0.4"


# The oneof member each integer attribute is written in: the one older ASTRA-sim
# feeders read it from (newer feeders accept any integer member).
INT_MEMBER = {"tensor_size": "uint64_val", "comm_src": "int32_val", "comm_dst": "int32_val",
              "comm_tag": "int32_val", "comm_priority": "int32_val"}


def _set_attr(msg: pb.AttributeProto, name: str, value: Any) -> None:
    msg.name = name
    if isinstance(value, int) and not isinstance(value, bool) and name in INT_MEMBER:
        setattr(msg, INT_MEMBER[name], value)
        return
    if isinstance(value, bool):
        msg.bool_val = value
    elif isinstance(value, int):
        # int64_val: every ASTRA-sim release reads integers from it (older
        # feeders read only int64_val; newer ones accept any integer member)
        msg.int64_val = value
    elif isinstance(value, float):
        msg.double_val = value
    elif isinstance(value, str):
        msg.string_val = value
    elif isinstance(value, (list, tuple)):
        if all(isinstance(v, bool) for v in value):
            msg.bool_list.values.extend(value)
        elif all(isinstance(v, int) for v in value):
            msg.int64_list.values.extend(value)
        else:
            raise TypeError(f"attr {name}: unsupported list {value!r}")
    else:
        raise TypeError(f"attr {name}: unsupported value {value!r}")


def _get_attr(msg: pb.AttributeProto) -> Any:
    kind = msg.WhichOneof("value")
    if kind is None:
        return None
    v = getattr(msg, kind)
    if kind.endswith("_list"):
        return list(v.values)
    return v


COMPUTE_TIMES = ("exact", "micros")
DEFAULT_COMPUTE_TIME = "exact"
EXACT_PEAK_TFLOPS = 0.002  # 2e9 FLOP/s: num_ops = 2*d + 1 runs trunc(d + 0.5) = d ns


def exact_num_ops(duration_ns: int) -> int:
    """num_ops that ASTRA-sim's roofline (peak EXACT_PEAK_TFLOPS, tensor_size 0) times as duration_ns."""
    return 2 * max(1, int(duration_ns)) + 1


def round_micros(duration_ns: int) -> int:
    """Chakra durations are whole microseconds; round half to even, never below 0."""
    return max(0, round(duration_ns / 1000))


def graph_to_nodes(graph: Graph, compute_time: str = DEFAULT_COMPUTE_TIME, coll_dims: int = 0) -> list[pb.Node]:
    """Chakra nodes of a graph. coll_dims > 0: every collective without a comm group gets an
    `involved_dim` list of that length (all dimensions unless it names them); ASTRA-sim otherwise
    assumes a 1-element list and reads past it on a multi-dimensional network."""
    if compute_time not in COMPUTE_TIMES:
        raise ValueError(f"compute_time {compute_time!r}: expected one of {COMPUTE_TIMES}")
    exact = compute_time == "exact"
    nodes = []
    for i in range(len(graph)):
        n = pb.Node(id=i, name=graph.names[i], type=graph.types[i])
        n.data_deps.extend(graph.deps[i])
        n.ctrl_deps.extend(graph.ctrl_deps[i])
        n.duration_micros = round_micros(graph.durations_ns[i]) if graph.types[i] == COMP else 0
        attrs: dict[str, Any] = {}
        if graph.types[i] == COMP:
            if exact:
                attrs["num_ops"] = exact_num_ops(graph.durations_ns[i])
                attrs["tensor_size"] = 0
                attrs["model_num_ops"] = graph.num_ops[i]
                attrs["model_tensor_size"] = graph.tensor_bytes[i]
            else:
                attrs["num_ops"] = graph.num_ops[i]
                attrs["tensor_size"] = graph.tensor_bytes[i]
            attrs["duration_ns"] = graph.durations_ns[i]
        elif graph.tensor_bytes[i]:
            attrs["tensor_size"] = graph.tensor_bytes[i]
        if graph.attrs[i]:
            attrs.update(graph.attrs[i])
        if coll_dims and graph.types[i] == COLL and not attrs.get("pg_name"):
            inv = [bool(x) for x in attrs.get("involved_dim", ())]
            attrs["involved_dim"] = inv + [True] * (coll_dims - len(inv))
        attrs["is_cpu_op"] = False
        for k, v in attrs.items():
            _set_attr(n.attr.add(), k, v)
        nodes.append(n)
    return nodes


def write_et(graph: Graph, path: Path, metadata: dict[str, Any] | None = None,
             compute_time: str = DEFAULT_COMPUTE_TIME, coll_dims: int = 0) -> None:
    graph.validate()
    meta = pb.GlobalMetadata(version=ET_VERSION)
    for k, v in (metadata or {}).items():
        _set_attr(meta.attr.add(), k, v)
    out = bytearray()
    body = meta.SerializeToString()
    out += _VarintBytes(len(body)) + body
    for n in graph_to_nodes(graph, compute_time, coll_dims):
        body = n.SerializeToString()
        out += _VarintBytes(len(body)) + body
    Path(path).write_bytes(bytes(out))


def read_et(path: Path, rank: int = 0) -> tuple[Graph, dict[str, Any]]:
    """Read an .et file back into a Graph. Node ids are remapped to positions."""
    data = Path(path).read_bytes()
    pos = 0
    size, pos = _DecodeVarint32(data, pos)
    meta = pb.GlobalMetadata()
    meta.ParseFromString(data[pos : pos + size])
    pos += size
    metadata = {"version": meta.version, **{a.name: _get_attr(a) for a in meta.attr}}
    raw: list[pb.Node] = []
    while pos < len(data):
        size, pos = _DecodeVarint32(data, pos)
        n = pb.Node()
        n.ParseFromString(data[pos : pos + size])
        pos += size
        raw.append(n)
    index = {n.id: i for i, n in enumerate(raw)}
    g = Graph(rank=rank)
    for n in raw:
        attrs = {a.name: _get_attr(a) for a in n.attr}
        attrs.pop("is_cpu_op", None)
        t = int(n.type)
        if t == COMP:
            duration_ns = int(attrs.pop("duration_ns", n.duration_micros * 1000))
            num_ops = int(attrs.pop("num_ops", 0))
            tensor = int(attrs.pop("tensor_size", 0))
            if "model_num_ops" in attrs:  # written for exact compute time: the model's figures
                num_ops = int(attrs.pop("model_num_ops"))
                tensor = int(attrs.pop("model_tensor_size", 0))
        else:
            duration_ns = 0
            num_ops = 0
            tensor = int(attrs.pop("tensor_size", 0))
        try:
            deps = tuple(index[d] for d in n.data_deps)
            ctrl = tuple(index[d] for d in n.ctrl_deps)
        except KeyError as e:
            raise ValueError(f"{path}: node {n.id} depends on missing node {e.args[0]}") from None
        g.add(n.name, t, duration_ns=duration_ns, deps=deps, ctrl_deps=ctrl, num_ops=num_ops,
              tensor_bytes=tensor, attrs=attrs or None)
    return g, metadata


def with_micro_durations(graph: Graph, compute_time: str = DEFAULT_COMPUTE_TIME) -> Graph:
    """The graph as ASTRA-sim times it from the files write_et writes with this compute_time: exact
    durations (0 → 1 ns) for "exact", whole µs (0 → 1 ns) for "micros"."""
    exact = compute_time == "exact"
    g = Graph(rank=graph.rank, names=list(graph.names), types=list(graph.types),
              durations_ns=[((max(1, d) if exact else max(1, round_micros(d) * 1000)) if t == COMP else d)
                            for t, d in zip(graph.types, graph.durations_ns, strict=True)],
              deps=list(graph.deps), ctrl_deps=list(graph.ctrl_deps), num_ops=list(graph.num_ops),
              tensor_bytes=list(graph.tensor_bytes), attrs=list(graph.attrs))
    return g
