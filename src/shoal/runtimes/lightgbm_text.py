"""Checking a LightGBM text model before LightGBM reads it.

LightGBM's reader trusts the file: on many truncated files it kills the process (SIGSEGV, or
std::terminate from a parse error inside its parallel tree parser) instead of raising, and a
tree whose child links form a loop makes every prediction spin forever. The layout is simple
to check first: a header, the trees at the offsets ``tree_sizes`` gives, ``end of trees``, the
parameters up to ``end of parameters``; and each tree's ``left_child`` / ``right_child`` must
link its nodes into a tree, every leaf reached exactly once. Milliseconds for a 100-tree model.
"""

from __future__ import annotations

import re

from ..errors import LoadError

TREE_FIELDS = re.compile(rb"^(Tree|num_leaves|left_child|right_child)=(.*)$", re.MULTILINE)


class _Corrupt(Exception):
    pass


def check_model_text(text: bytes, name: str) -> str:
    """Raise LoadError unless ``text`` is a complete LightGBM model; return its objective."""
    try:
        end = _check_layout(text)
        _check_trees(text, end)
    except _Corrupt as exc:
        raise LoadError(f"{name} is not a complete LightGBM model: {exc}") from None
    objective = re.search(rb"^objective=(\S+)", text[:end], re.MULTILINE)
    return objective.group(1).decode("ascii", "replace") if objective else "custom"


def _check_layout(text: bytes) -> int:
    if not text.startswith(b"tree\n"):
        raise _Corrupt("it does not start with LightGBM's 'tree' header")
    end = text.find(b"\nend of trees\n")
    if end < 0:
        raise _Corrupt("no 'end of trees' line (truncated?)")
    parameters = text.find(b"\nparameters:\n", end)
    if parameters >= 0 and text.find(b"\nend of parameters\n", parameters) < 0:
        raise _Corrupt("no 'end of parameters' line (truncated?)")
    sizes = re.search(rb"^tree_sizes=(.*)$", text[:end], re.MULTILINE)
    if sizes is None:
        return end
    try:
        lengths = [int(size) for size in sizes.group(1).split()]
    except ValueError:
        raise _Corrupt("its tree_sizes line is damaged") from None
    position = text.find(b"\nTree=0\n") + 1
    for index, length in enumerate(lengths):
        if position <= 0 or not text.startswith(b"Tree=%d\n" % index, position):
            raise _Corrupt(f"tree {index} is not where tree_sizes says it is")
        position += length
    if position != end + 1:
        raise _Corrupt("the trees do not end where tree_sizes says they do")
    return end


def _check_trees(text: bytes, end: int) -> None:
    trees: list[dict[bytes, bytes]] = []
    for key, value in TREE_FIELDS.findall(text, 0, end):
        if key == b"Tree":
            trees.append({})
        elif trees:
            trees[-1][key] = value
    for index, tree in enumerate(trees):
        try:
            leaves = int(tree.get(b"num_leaves", b""))
            left = [int(v) for v in tree.get(b"left_child", b"").split()]
            right = [int(v) for v in tree.get(b"right_child", b"").split()]
        except ValueError:
            raise _Corrupt(f"tree {index} has a damaged num_leaves or child line") from None
        if leaves > 1 and not _is_tree(left, right, leaves):
            raise _Corrupt(f"the nodes of tree {index} do not form a tree")


def _is_tree(left: list[int], right: list[int], leaves: int) -> bool:
    """Internal nodes are 0..leaves-2 (root 0); a negative child ``c`` is leaf ``~c``."""
    if len(left) != leaves - 1 or len(right) != leaves - 1:
        return False
    seen_nodes, seen_leaves = {0}, set()
    stack = [0]
    while stack:
        node = stack.pop()
        for child in (left[node], right[node]):
            if child >= 0:
                if child >= leaves - 1 or child in seen_nodes:
                    return False
                seen_nodes.add(child)
                stack.append(child)
            else:
                if ~child >= leaves or ~child in seen_leaves:
                    return False
                seen_leaves.add(~child)
    return len(seen_nodes) == leaves - 1 and len(seen_leaves) == leaves
