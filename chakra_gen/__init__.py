"""Chakra execution traces: schema, in-memory graphs, builder and .et I/O."""

from chakra_gen.graph import CollectiveType, Graph, NodeType

__all__ = ["CollectiveType", "Graph", "NodeType"]
