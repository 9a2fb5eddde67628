"""A structural check of UBJSON files (XGBoost's ``model.ubj`` / ``model.bst``).

XGBoost's UBJSON reader trusts the lengths written in the file: a truncated file, or one whose
length byte was damaged, makes it read past its buffer, which crashes the process or not
depending on what lies in memory there. Walking the structure here first, with every length
checked against the bytes that are really there, turns that into a clear error, always.
The walk skips typed arrays (the bulk of a model) in one step, so it costs milliseconds.
"""

from __future__ import annotations

import struct

#: Fixed-size value types and their payload sizes (draft 12 of the UBJSON spec).
FIXED = {"Z": 0, "N": 0, "T": 0, "F": 0, "i": 1, "U": 1, "I": 2, "l": 4, "L": 8, "d": 4, "D": 8,
         "C": 1}
INTEGERS = {"i": ">b", "U": ">B", "I": ">h", "l": ">i", "L": ">q"}
MAX_DEPTH = 64


class UBJSONError(ValueError):
    pass


def check_ubjson(data: bytes) -> None:
    """Raise UBJSONError unless ``data`` is exactly one complete, well-formed UBJSON value."""
    walker = _Walker(data)
    walker.value(walker.marker(), 0)
    if walker.pos != len(data):
        raise UBJSONError(f"{len(data) - walker.pos} unexpected bytes after the end of the data")


class _Walker:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def skip(self, count: int) -> None:
        if count < 0 or self.pos + count > len(self.data):
            raise UBJSONError(
                f"needs {count} bytes at byte {self.pos} but the data ends at {len(self.data)} "
                "(truncated or corrupt)"
            )
        self.pos += count

    def marker(self) -> str:
        self.skip(1)
        return chr(self.data[self.pos - 1])

    def length(self) -> int:
        marker = self.marker()
        if marker not in INTEGERS:
            raise UBJSONError(f"expected a length at byte {self.pos - 1}, found {marker!r}")
        start = self.pos
        self.skip(FIXED[marker])
        (value,) = struct.unpack_from(INTEGERS[marker], self.data, start)
        if value < 0:
            raise UBJSONError(f"negative length {value} at byte {start}")
        return value

    def value(self, marker: str, depth: int) -> None:
        if marker in FIXED:
            self.skip(FIXED[marker])
        elif marker in ("S", "H"):
            self.skip(self.length())
        elif marker in ("[", "{"):
            if depth >= MAX_DEPTH:
                raise UBJSONError(f"containers nested deeper than {MAX_DEPTH} at byte {self.pos}")
            self.container(marker == "{", depth + 1)
        else:
            raise UBJSONError(f"unknown type marker {marker!r} at byte {self.pos - 1}")

    def container(self, keyed: bool, depth: int) -> None:
        item_type, count = None, None
        marker = self.marker()
        if marker == "$":
            item_type = self.marker()
            if item_type not in FIXED and item_type not in "SH[{":
                raise UBJSONError(f"unknown element type {item_type!r} at byte {self.pos - 1}")
            marker = self.marker()
            if marker != "#":
                raise UBJSONError(f"a typed container needs a count at byte {self.pos - 1}")
        if marker == "#":
            count = self.length()
        else:
            self.pos -= 1
        if count is not None:
            if item_type in FIXED and not keyed:
                self.skip(count * FIXED[item_type])  # a typed array: one step
                return
            for _ in range(count):
                if keyed:
                    self.skip(self.length())
                self.value(item_type or self.marker(), depth)
            return
        end = "}" if keyed else "]"
        while (marker := self.marker()) != end:
            if marker == "N":
                continue
            if keyed:
                self.pos -= 1
                self.skip(self.length())
                marker = self.marker()
            self.value(marker, depth)
