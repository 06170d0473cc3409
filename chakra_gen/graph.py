"""A light columnar graph the embedded backend executes without protobuf.

Columns (parallel lists) instead of one object per node: an iteration graph has
hundreds of nodes and the engine builds thousands of graphs per run, so node
objects would dominate the simulation's cost. Durations are held in integer
nanoseconds; the `.et` writer rounds them to Chakra's microseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any


class NodeType(IntEnum):
    """Chakra `NodeType` values (wire numbers)."""

    INVALID_NODE = 0
    METADATA_NODE = 1
    MEM_LOAD_NODE = 2
    MEM_STORE_NODE = 3
    COMP_NODE = 4
    COMM_SEND_NODE = 5
    COMM_RECV_NODE = 6
    COMM_COLL_NODE = 7


class CollectiveType(IntEnum):
    """Chakra `CollectiveCommType` values (wire numbers)."""

    ALL_REDUCE = 0
    REDUCE = 1
    ALL_GATHER = 2
    GATHER = 3
    SCATTER = 4
    BROADCAST = 5
    ALL_TO_ALL = 6
    REDUCE_SCATTER = 7
    REDUCE_SCATTER_BLOCK = 8
    BARRIER = 9


COMP = int(NodeType.COMP_NODE)
COLL = int(NodeType.COMM_COLL_NODE)
SEND = int(NodeType.COMM_SEND_NODE)
RECV = int(NodeType.COMM_RECV_NODE)
MEM_LOAD = int(NodeType.MEM_LOAD_NODE)
MEM_STORE = int(NodeType.MEM_STORE_NODE)

EMPTY: tuple[int, ...] = ()


@dataclass
class Graph:
    """One NPU's execution graph for one iteration.

    Node ids are list positions (0..n-1). `deps` holds data dependencies (ids of
    earlier nodes); `ctrl_deps` is kept separately because Chakra does.
    `attrs` is None for nodes without attributes other than the compute ones,
    which live in `num_ops` / `tensor_bytes` columns.
    """

    rank: int = 0
    names: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    durations_ns: list[int] = field(default_factory=list)
    deps: list[tuple[int, ...]] = field(default_factory=list)
    ctrl_deps: list[tuple[int, ...]] = field(default_factory=list)
    num_ops: list[int] = field(default_factory=list)
    tensor_bytes: list[int] = field(default_factory=list)
    attrs: list[dict[str, Any] | None] = field(default_factory=list)
    _digest: str | None = field(default=None, repr=False, compare=False)
    chain_hint: bool | None = field(default=None, repr=False, compare=False)
    # (main chain ids, load ids, store ids) when the builder knows the graph has that shape
    mem_shape_hint: tuple | None = field(default=None, repr=False, compare=False)
    # a small tuple that determines the graph entirely (set by builders that know its structure)
    compact_key: tuple | None = field(default=None, repr=False, compare=False)
    total_tensor_bytes: int | None = field(default=None, repr=False, compare=False)  # set by builders

    def tensor_bytes_total(self) -> int:
        return self.total_tensor_bytes if self.total_tensor_bytes is not None else sum(self.tensor_bytes)
    shared_columns: bool = field(default=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.types)

    def has_memory_nodes(self) -> bool:
        return MEM_LOAD in self.types or MEM_STORE in self.types

    def add(
        self,
        name: str,
        node_type: int,
        *,
        duration_ns: int = 0,
        deps: tuple[int, ...] = EMPTY,
        ctrl_deps: tuple[int, ...] = EMPTY,
        num_ops: int = 0,
        tensor_bytes: int = 0,
        attrs: dict[str, Any] | None = None,
    ) -> int:
        if self.shared_columns:  # columns may be shared with other graphs: copy before writing
            self._unshare()
        node_id = len(self.types)
        self.chain_hint = None
        self.mem_shape_hint = None
        self.compact_key = None
        self.total_tensor_bytes = None
        self.names.append(name)
        self.types.append(int(node_type))
        self.durations_ns.append(int(duration_ns))
        self.deps.append(tuple(deps))
        self.ctrl_deps.append(tuple(ctrl_deps))
        self.num_ops.append(int(num_ops))
        self.tensor_bytes.append(int(tensor_bytes))
        self.attrs.append(attrs)
        self._digest = None
        return node_id

    def extend_columns(
        self,
        names: list[str],
        types: list[int],
        durations_ns: list[int],
        deps: list[tuple[int, ...]],
        num_ops: list[int],
        tensor_bytes: list[int],
        attrs: list[dict[str, Any] | None],
    ) -> None:
        """Append many nodes at once (the builder's fast path)."""
        if self.shared_columns:
            self._unshare()
        self.chain_hint = None
        n = len(names)
        if not (len(types) == len(durations_ns) == len(deps) == len(num_ops) == len(tensor_bytes) == len(attrs) == n):
            raise ValueError("column lengths differ")
        self.names.extend(names)
        self.types.extend(types)
        self.durations_ns.extend(durations_ns)
        self.deps.extend(deps)
        self.ctrl_deps.extend([EMPTY] * n)
        self.num_ops.extend(num_ops)
        self.tensor_bytes.extend(tensor_bytes)
        self.attrs.extend(attrs)
        self._digest = None

    def _unshare(self) -> None:
        self.names = list(self.names)
        self.types = list(self.types)
        self.durations_ns = list(self.durations_ns)
        self.deps = list(self.deps)
        self.ctrl_deps = list(self.ctrl_deps)
        self.num_ops = list(self.num_ops)
        self.tensor_bytes = list(self.tensor_bytes)
        self.attrs = list(self.attrs)
        self.shared_columns = False

    def all_deps(self, node_id: int) -> tuple[int, ...]:
        cd = self.ctrl_deps[node_id]
        return self.deps[node_id] + cd if cd else self.deps[node_id]

    def attr(self, node_id: int, key: str, default: Any = None) -> Any:
        a = self.attrs[node_id]
        return default if a is None else a.get(key, default)

    def validate(self) -> None:
        """Reject graphs ASTRA-sim would abort on (dangling or forward deps, empty)."""
        if not self.types:
            raise ValueError(f"rank {self.rank}: graph has no nodes (ASTRA-sim aborts on empty traces)")
        for i in range(len(self.types)):
            for d in self.all_deps(i):
                if d < 0 or d >= i:
                    raise ValueError(f"rank {self.rank}: node {i} ({self.names[i]}) depends on {d}, not an earlier node")
            t = self.types[i]
            if t in (NodeType.INVALID_NODE, NodeType.METADATA_NODE):
                raise ValueError(f"rank {self.rank}: node {i} has type {t}, which ASTRA-sim does not execute")

    def digest(self) -> str:
        """Canonical content digest (names excluded: they do not change timing)."""
        if self._digest is None:
            key = repr(
                (
                    self.types,
                    self.durations_ns,
                    self.deps,
                    self.ctrl_deps,
                    self.num_ops,
                    self.tensor_bytes,
                    [sorted(a.items()) if a else None for a in self.attrs],
                )
            ).encode()
            self._digest = hashlib.blake2b(key, digest_size=16).hexdigest()
        return self._digest

    def is_chain(self) -> bool:
        """True when every node depends exactly on its predecessor (no concurrency possible)."""
        if self.chain_hint is not None:
            return self.chain_hint
        deps = self.deps
        ok = not (deps and deps[0])
        if ok:
            for i in range(1, len(deps)):
                d = deps[i]
                if len(d) != 1 or d[0] != i - 1 or self.ctrl_deps[i]:
                    ok = False
                    break
        self.chain_hint = ok
        return ok


@lru_cache(maxsize=64)
def chain_deps(n: int) -> list[tuple[int, ...]]:
    """Shared (read-only) dependency column of an n-node chain."""
    return [EMPTY] + [(i - 1,) for i in range(1, n)] if n else []


@lru_cache(maxsize=64)
def no_deps(n: int) -> list[tuple[int, ...]]:
    """Shared (read-only) column of n nodes without dependencies."""
    return [EMPTY] * n


@lru_cache(maxsize=256)
def _layer_names(template: tuple[str, ...], n_layers: int) -> tuple[str, ...]:
    return tuple(f"L{li}.{nm}" for li in range(n_layers) for nm in template)


_COLUMNS = frozenset(("names", "types", "durations_ns", "deps", "ctrl_deps", "num_ops", "tensor_bytes", "attrs"))


@dataclass(eq=False)
class ChainTemplate:
    """A chain of nodes: prologue, a per-layer template repeated num_layers times, epilogue.

    This is what a pipeline stage without memory traffic executes each
    iteration. Executing it needs only the template (the chain's time is a sum),
    so columns are built only when something reads them (a dump, the event loop).
    Per-node values are (name, type, duration_ns, num_ops, tensor_bytes, attrs);
    layer nodes are named L<layer>.<name>.
    """

    prologue: list[tuple[str, int, int, int, int, dict | None]]
    layer: list[tuple[str, int, int, int, int, dict | None]]
    num_layers: int
    epilogue: list[tuple[str, int, int, int, int, dict | None]]
    _columns: dict | None = field(default=None, repr=False)
    _types: frozenset[int] | None = field(default=None, repr=False)
    _bytes: int | None = field(default=None, repr=False)
    _key: tuple | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.prologue) + self.num_layers * len(self.layer) + len(self.epilogue)

    def key(self) -> tuple:
        """A tuple that determines the chain entirely (for result caches; one object for all ranks)."""
        if self._key is not None:
            return self._key

        def attrs(a: dict | None) -> tuple | None:
            return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in a.items())) if a else None

        self._key = ("chain", tuple(n[:5] + (attrs(n[5]),) for n in self.layer), self.num_layers,
                     tuple(n[:5] + (attrs(n[5]),) for n in self.prologue + self.epilogue), len(self.prologue))
        return self._key

    def node_types(self) -> frozenset[int]:
        if self._types is None:
            self._types = frozenset(n[1] for n in self.prologue + self.layer + self.epilogue)
        return self._types

    def total_tensor_bytes(self) -> int:
        if self._bytes is None:
            self._bytes = self.num_layers * sum(n[4] for n in self.layer) + \
                sum(n[4] for n in self.prologue + self.epilogue)
        return self._bytes

    def columns(self) -> dict[str, list]:
        """The graph's columns (built once, shared by every rank holding this chain: read-only)."""
        if self._columns is None:
            edge_pro, lay, edge_epi, nl = self.prologue, self.layer, self.epilogue, self.num_layers
            cols: dict[str, list] = {}
            for k, name in enumerate(("names", "types", "durations_ns", "num_ops", "tensor_bytes", "attrs")):
                if k == 0:
                    col = [n[0] for n in edge_pro]
                    col.extend(_layer_names(tuple(n[0] for n in lay), nl))
                    col.extend(n[0] for n in edge_epi)
                else:
                    col = [n[k] for n in edge_pro] + [n[k] for n in lay] * nl + [n[k] for n in edge_epi]
                cols[name] = col
            n = len(cols["types"])
            cols["deps"] = chain_deps(n)
            cols["ctrl_deps"] = no_deps(n)
            self._columns = cols
        return self._columns


class _TemplateGraph(Graph):
    """A Graph held as a template: columns are built on first access; editing drops the template."""

    _tmpl: Any

    def _init_from(self, rank: int, template: Any, chain: bool) -> None:  # no dataclass init: columns unset
        self.rank = rank
        self._tmpl = template
        self._digest = None
        self.chain_hint = chain
        self.total_tensor_bytes = template.total_tensor_bytes()
        self.shared_columns = True

    def _template_columns(self) -> dict[str, list]:
        raise NotImplementedError

    def _template_has_memory(self) -> bool:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        if name in _COLUMNS:
            cols = self._template_columns()
            for k in _COLUMNS:
                setattr(self, k, cols[k])
            return cols[name]
        raise AttributeError(name)

    def _unshare(self) -> None:
        super()._unshare()
        self._tmpl = None
        self.total_tensor_bytes = None

    def __len__(self) -> int:
        return len(self._tmpl) if self._tmpl is not None else len(self.types)

    def has_memory_nodes(self) -> bool:
        return super().has_memory_nodes() if self._tmpl is None else self._template_has_memory()


class ChainGraph(_TemplateGraph):
    """A Graph stored as its ChainTemplate; the columns appear on first access."""

    def __init__(self, rank: int, template: ChainTemplate) -> None:
        self._init_from(rank, template, True)
        self._key_valid = True

    @property
    def template(self) -> ChainTemplate | None:
        return self._tmpl

    @property  # type: ignore[override]
    def compact_key(self) -> tuple | None:
        """Built only when a result cache asks; None once the graph was edited."""
        return self._tmpl.key() if self._key_valid and self._tmpl is not None else None

    @compact_key.setter
    def compact_key(self, value: tuple | None) -> None:
        if value is not None:
            raise ValueError("a chain graph's key comes from its template")
        self._key_valid = False

    def _template_columns(self) -> dict[str, list]:
        return self._tmpl.columns()

    def _template_has_memory(self) -> bool:
        return bool(self._tmpl.node_types() & {MEM_LOAD, MEM_STORE})


@dataclass(eq=False)
class MemChainTemplate:
    """A compute chain with layer-wise KV transfers, held as its parts.

    Per layer, `loads` (tier, bytes) run chained on the NPU's memory resource
    and the layer's attention (node `attention_k` of the layer template) waits
    for that layer's last load; `stores` run chained after every load. `build`
    writes the explicit graph, used only when something reads the columns.
    """

    chain: ChainTemplate
    loads: tuple[tuple[str, int], ...]
    stores: tuple[tuple[str, int], ...]
    attention_k: int | None
    build: Callable[[], Graph]
    _graph: Graph | None = field(default=None, repr=False)

    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = self.build()
        return self._graph

    def __len__(self) -> int:
        return len(self.chain) + self.chain.num_layers * (len(self.loads) + len(self.stores))

    def total_tensor_bytes(self) -> int:
        return self.chain.total_tensor_bytes() + self.chain.num_layers * (
            sum(b for _, b in self.loads) + sum(b for _, b in self.stores))


class MemChainGraph(_TemplateGraph):
    """A Graph stored as its MemChainTemplate; the columns appear on first access."""

    def __init__(self, rank: int, template: MemChainTemplate) -> None:
        self._init_from(rank, template, False)  # a load chain beside the compute chain: not one chain
        self.compact_key = None
        self._hint_override: tuple | None = None
        self._hint_set = False

    @property
    def mtemplate(self) -> MemChainTemplate | None:
        return self._tmpl

    @property  # type: ignore[override]
    def mem_shape_hint(self) -> tuple | None:
        if self._hint_set or self._tmpl is None:
            return self._hint_override
        return self._tmpl.graph().mem_shape_hint

    @mem_shape_hint.setter
    def mem_shape_hint(self, value: tuple | None) -> None:
        self._hint_override = value
        self._hint_set = True

    def _template_columns(self) -> dict[str, list]:
        g = self._tmpl.graph()
        return {k: getattr(g, k) for k in _COLUMNS}

    def _template_has_memory(self) -> bool:
        return bool(self._tmpl.loads or self._tmpl.stores)


@dataclass(eq=False)
class PipeTemplate:
    """A pipeline-parallel iteration held as its parts: stages[s][m] is the compute/collective chain
    stage s runs for micro-batch m (a ChainTemplate); between stages each micro-batch's activations
    (act_bytes[m]) go by SEND/RECV. `build(rank)` writes a rank's explicit graph, used only when
    something reads its columns (a dump, the event loop)."""

    tp: int
    stages: list[list[ChainTemplate]]
    act_bytes: list[int]
    build: Callable[[int], Graph]
    _graphs: dict[int, Graph] = field(default_factory=dict, repr=False)

    def graph(self, rank: int) -> Graph:
        g = self._graphs.get(rank)
        if g is None:
            g = self._graphs[rank] = self.build(rank)
        return g

    def stage_len(self, stage: int) -> int:
        p2p = (stage > 0) + (stage < len(self.stages) - 1)
        return sum(len(c) + p2p for c in self.stages[stage])

    def stage_tensor_bytes(self, stage: int) -> int:
        return sum(c.total_tensor_bytes() for c in self.stages[stage])

    def total_tensor_bytes(self) -> int:
        return self.stage_tensor_bytes(0)

    def __len__(self) -> int:
        return self.stage_len(0)


class PipeGraph(_TemplateGraph):
    """One rank of a PipeTemplate; the columns appear on first access."""

    def __init__(self, rank: int, template: PipeTemplate) -> None:
        self._init_from(rank, template, False)
        self.stage = rank // template.tp
        self.total_tensor_bytes = template.stage_tensor_bytes(self.stage)

    @property
    def ptemplate(self) -> PipeTemplate | None:
        return self._tmpl

    def _template_columns(self) -> dict[str, list]:
        g = self._tmpl.graph(self.rank)
        return {k: getattr(g, k) for k in _COLUMNS}

    def _template_has_memory(self) -> bool:
        return False

    def __len__(self) -> int:
        return self._tmpl.stage_len(self.stage) if self._tmpl is not None else len(self.types)
