"""Ship an ONNX graph at half its size, byte for byte: its fp16-exact fp32 weights stored as fp16.

The demo model is trained and stored in fp16 and exported to fp32 graphs, so nearly every fp32 weight in them
is an fp16 value widened: its low 13 mantissa bits are zero.  ``pack`` writes ``X.onnx.f16pack``: the graph's
bytes with each such weight's span replaced by its fp16 bytes, and an index of the spans.  ``unpack`` widens
the spans again and writes ``X.onnx`` only if its SHA-256 is the original's: the same file, so the engine
folder's manifest (which hashes ``X.onnx``) verifies it as before.

Unpacking needs the Python standard library alone (``make setup`` runs it with any ``python3``, before any
virtual environment exists); packing needs ``onnx`` to find the weights.

    python export/vald_export/f16pack.py pack engines/demo/fp32/unet.onnx     # writes unet.onnx.f16pack
    python export/vald_export/f16pack.py unpack engines/demo/fp32/*.f16pack   # writes the .onnx beside each
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

MAGIC = b"VALD-F16PACK-1\n"
SUFFIX = ".f16pack"
MIN_BYTES = 1024  # smaller weights stay as they are (their spans cost more index than they save)


class PackError(Exception):
    """A pack file that is not one, is damaged, or does not give back its original."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_byte_order() -> None:
    if sys.byteorder != "little":  # ONNX raw data is little-endian; array's floats are native
        raise PackError("f16pack needs a little-endian machine")


def fp16_spans(graph: bytes) -> list[tuple[int, int]]:
    """``(offset, length)`` of each fp32 weight in ``graph`` (ONNX bytes) that fp16 holds exactly, in file order."""
    import numpy as np
    import onnx

    model = onnx.load_model_from_string(graph)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise PackError("the graph keeps its weights in external data files: pack works on single-file graphs")
    spans: list[tuple[int, int]] = []
    for tensor in model.graph.initializer:
        raw = tensor.raw_data
        if tensor.data_type != onnx.TensorProto.FLOAT or len(raw) < MIN_BYTES:
            continue
        values = np.frombuffer(raw, dtype="<f4")
        if not np.array_equal(values.astype(np.float16).astype("<f4").view("<u4"), values.view("<u4")):
            continue
        at = graph.find(raw)
        while at >= 0 and any(at < start + length and start < at + len(raw) for start, length in spans):
            at = graph.find(raw, at + 1)
        if at < 0:
            raise PackError(f"weight {tensor.name!r} not found in the serialised graph")
        spans.append((at, len(raw)))
    return sorted(spans)


def pack(graph: bytes) -> bytes:
    """The pack of ``graph``: header, index, then the bytes with each fp16-exact span stored as fp16."""
    _check_byte_order()
    import numpy as np

    spans = fp16_spans(graph)
    body, cursor = bytearray(), 0
    for offset, length in spans:
        body += graph[cursor:offset]
        body += np.frombuffer(graph, dtype="<f4", count=length // 4, offset=offset).astype("<f2").tobytes()
        cursor = offset + length
    body += graph[cursor:]
    index = json.dumps({"sha256": _sha256(graph), "size": len(graph), "spans": spans}).encode()
    packed = MAGIC + struct.pack("<Q", len(index)) + index + bytes(body)
    if unpack(packed) != graph:  # never ship a pack that does not give the graph back
        raise PackError("the pack does not reproduce the graph")
    return packed


def unpack(packed: bytes) -> bytes:
    """The original graph of ``packed``; PackError if it is not a pack or does not hash to the original."""
    _check_byte_order()
    if not packed.startswith(MAGIC) or len(packed) < len(MAGIC) + 8:
        raise PackError("not an f16pack file")
    (index_len,) = struct.unpack_from("<Q", packed, len(MAGIC))
    start = len(MAGIC) + 8
    try:
        index = json.loads(packed[start : start + index_len])
        spans = [(int(o), int(n)) for o, n in index["spans"]]
        expected, size = str(index["sha256"]), int(index["size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PackError(f"damaged f16pack index ({type(exc).__name__})") from None
    body = memoryview(packed)[start + index_len :]
    out, read, written = bytearray(), 0, 0
    for offset, length in spans:
        plain = offset - written
        if plain < 0 or length % 4 or read + plain + length // 2 > len(body):
            raise PackError("damaged f16pack index (spans out of order or past the end)")
        out += body[read : read + plain]
        halves = struct.unpack_from(f"<{length // 4}e", body, read + plain)
        out += array.array("f", halves).tobytes()
        read, written = read + plain + length // 2, offset + length
    out += body[read:]
    if len(out) != size or _sha256(bytes(out)) != expected:
        raise PackError("the unpacked graph does not match the SHA-256 recorded in the pack (a damaged file)")
    return bytes(out)


def unpack_file(path: Path) -> Path:
    """Write ``path`` without its ``.f16pack`` suffix (atomically), and return it."""
    if path.suffix != SUFFIX:
        raise PackError(f"{path.name}: expected a {SUFFIX} file")
    target = path.with_suffix("")
    data = unpack(path.read_bytes())
    tmp = target.with_name(target.name + ".part")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def pack_file(path: Path) -> Path:
    """Write ``path`` + ``.f16pack`` beside the graph ``path``, and return it."""
    target = path.with_name(path.name + SUFFIX)
    target.write_bytes(pack(path.read_bytes()))
    return target


def main(argv: list[str]) -> int:
    """``pack GRAPH...`` or ``unpack PACK...``; one line per file; exit 2 on the first bad one."""
    if len(argv) < 2 or argv[0] not in ("pack", "unpack"):
        print("usage: f16pack.py pack GRAPH.onnx... | unpack GRAPH.onnx.f16pack...", file=sys.stderr)
        return 2
    action = pack_file if argv[0] == "pack" else unpack_file
    for name in argv[1:]:
        path = Path(name)
        try:
            done = action(path)
        except (OSError, PackError) as exc:
            print(f"f16pack: {path.name}: {exc}", file=sys.stderr)
            return 2
        print(f"f16pack: {done} ({done.stat().st_size:,} bytes, from {path.stat().st_size:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
