"""Ratchet tree nodes as they travel on the wire (RFC 9420 §7.1, §12.4.3.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ..codec import U32, Codec, Opaque, Optional, Reader, Struct, Vec
from ..errors import DecodeError
from .common import NodeType
from .leaf_node import LeafNode


@dataclass(frozen=True)
class ParentNode(Struct):
    """A parent node: HPKE key, parent hash and unmerged leaves (§7.1)."""

    encryption_key: Annotated[bytes, Opaque]
    parent_hash: Annotated[bytes, Opaque]
    unmerged_leaves: Annotated[tuple[int, ...], Vec(U32)] = ()


Node = LeafNode | ParentNode


class NodeCodec(Codec[Node]):
    """``Node``: a node_type byte, then a LeafNode or a ParentNode."""

    def write(self, w: bytearray, value: Node) -> None:
        if isinstance(value, LeafNode):
            w.append(NodeType.LEAF)
        else:
            w.append(NodeType.PARENT)
        value.write(w)

    def read(self, r: Reader) -> Node:
        t = r.uint(1)
        if t == NodeType.LEAF:
            return LeafNode.read(r)
        if t == NodeType.PARENT:
            return ParentNode.read(r)
        raise DecodeError(f"unknown node type {t}")


NODE = NodeCodec()

#: ``optional<Node> ratchet_tree<V>`` -- the ratchet_tree extension's data (§12.4.3.3).
RATCHET_TREE: Codec[tuple[Node | None, ...]] = Vec(Optional(NODE))
