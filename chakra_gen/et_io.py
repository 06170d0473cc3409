"""Write and read Chakra `.et` files (varint-delimited protobuf stream).

Layout per CHAKRA_ET.md: varint32 length + GlobalMetadata, then repeated
varint32 length + Node. Durations are written as whole microseconds (what
ASTRA-sim reads) and, exactly, as an `duration_ns` attribute so a round trip
through our reader is lossless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf.internal.decoder import _DecodeVarint32
from google.protobuf.internal.encoder import _VarintBytes

from chakra_gen import et_def_pb2 as pb
from chakra_gen.graph import COMP, Graph

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


def round_micros(duration_ns: int) -> int:
    """Chakra durations are whole microseconds; round half to even, never below 0."""
    return max(0, round(duration_ns / 1000))


def graph_to_nodes(graph: Graph) -> list[pb.Node]:
    nodes = []
    for i in range(len(graph)):
        n = pb.Node(id=i, name=graph.names[i], type=graph.types[i])
        n.data_deps.extend(graph.deps[i])
        n.ctrl_deps.extend(graph.ctrl_deps[i])
        n.duration_micros = round_micros(graph.durations_ns[i]) if graph.types[i] == COMP else 0
        attrs: dict[str, Any] = {}
        if graph.types[i] == COMP:
            attrs["num_ops"] = graph.num_ops[i]
            attrs["tensor_size"] = graph.tensor_bytes[i]
            attrs["duration_ns"] = graph.durations_ns[i]
        elif graph.tensor_bytes[i]:
            attrs["tensor_size"] = graph.tensor_bytes[i]
        if graph.attrs[i]:
            attrs.update(graph.attrs[i])
        attrs["is_cpu_op"] = False
        for k, v in attrs.items():
            _set_attr(n.attr.add(), k, v)
        nodes.append(n)
    return nodes


def write_et(graph: Graph, path: Path, metadata: dict[str, Any] | None = None) -> None:
    graph.validate()
    meta = pb.GlobalMetadata(version=ET_VERSION)
    for k, v in (metadata or {}).items():
        _set_attr(meta.attr.add(), k, v)
    out = bytearray()
    body = meta.SerializeToString()
    out += _VarintBytes(len(body)) + body
    for n in graph_to_nodes(graph):
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


def with_micro_durations(graph: Graph) -> Graph:
    """The graph as ASTRA-sim sees it: compute durations rounded to whole µs (0 → 1 ns)."""
    g = Graph(rank=graph.rank, names=list(graph.names), types=list(graph.types),
              durations_ns=[(max(1, round_micros(d) * 1000) if t == COMP else d)
                            for t, d in zip(graph.types, graph.durations_ns, strict=True)],
              deps=list(graph.deps), ctrl_deps=list(graph.ctrl_deps), num_ops=list(graph.num_ops),
              tensor_bytes=list(graph.tensor_bytes), attrs=list(graph.attrs))
    return g
