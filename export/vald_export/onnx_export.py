"""Tracing each wrapper module to ONNX, FP16 conversion, and the ONNX checker.

Uses the TorchScript exporter (``dynamo=False``): the brief measured it 25× faster to
export and faster on CPU than the dynamo exporter for a small UNet.  Graphs with over
:data:`EXTERNAL_DATA_THRESHOLD` bytes of weights are saved with them in one external-data
file beside the graph; sizes are computed from the tensors' shapes, never with
``ModelProto.ByteSize()`` (which itself fails over 2 GiB).
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from vald.spec import ComponentSpec

# Bytes of weights above which they go to an external-data file: protobuf cannot serialise a message over
# 2 GiB, and an SD-size UNet (3.4 GB FP32, 1.7 GB FP16) is kept external in both precisions.
EXTERNAL_DATA_THRESHOLD = 1_000_000_000
# Ops kept in FP32 by the FP16 conversion: onnxruntime has no float16 kernel for Resize's scales/roi
# inputs (an SD-size UNet converted without shape inference was rejected: "tensor(float16) ... Resize"),
# and Upsample/Range are shape arithmetic.
FP16_KEEP_FP32_OPS = ("Resize", "Upsample", "Range")


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers and Constant tensors, from their shapes (never ``ByteSize()``).

    ``ModelProto.ByteSize()`` itself fails on a model over 2 GiB, which is what must be detected.
    """
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.HasField("t")]
    return sum(math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize for t in tensors)


def _save(model: onnx.ModelProto, path: Path, threshold: int) -> list[Path]:
    """Save ``model`` at ``path``; over ``threshold`` bytes of weights, they go to one ``<name>.onnx.data``.

    The checker runs on the path, which is how it handles graphs over 2 GiB. Returns the files written.
    """
    if weight_bytes(model) > threshold or _has_external(model):
        data = path.with_suffix(".onnx.data")
        data.unlink(missing_ok=True)
        onnx.save_model(
            model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=0
        )
        onnx.checker.check_model(str(path))
        _readable_like_neighbours(data)
        return [path, data]
    onnx.save_model(model, path)
    onnx.checker.check_model(str(path))
    return [path]


def _readable_like_neighbours(path: Path) -> None:
    """Onnx writes external data as 0600; give it the mode any other new file gets (0666 less the umask).

    Otherwise a service account other than the exporter's can read the graph but not its weights.
    """
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def export_fp32(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    spec: ComponentSpec,
    path: Path,
    opset: int,
    threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> list[Path]:
    """Trace ``module`` on ``example`` inputs into ``path`` with the spec's names and dynamic axes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        traced = Path(tmp) / path.name
        torch.onnx.export(
            module,
            example,
            str(traced),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        model = onnx.load(str(traced), load_external_data=True)
        files = _save(model, path, threshold)
        del model  # the proto holds every weight (3.4 GB for an SD-size UNet)
    return files


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows its producers (the FP16 converter appends its casts last)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input no node produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def convert_fp16(fp32_path: Path, path: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[Path]:
    """FP16 weights and compute, FP32 inputs/outputs (so every precision has the same bindings).

    Ops in :data:`FP16_KEEP_FP32_OPS` stay FP32 behind casts.  Types come from ONNX shape inference
    run on the file (``infer_shapes_path`` takes graphs over 2 GiB, the in-memory pass the converter
    would run does not); without them the converter cannot place the casts a kept-FP32 op needs.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    inferred = fp32_path.with_name(f".{fp32_path.stem}.inferred.onnx")  # beside it: external data resolves
    try:
        onnx.shape_inference.infer_shapes_path(str(fp32_path), str(inferred))
        model = onnx.load(str(inferred), load_external_data=True)
    finally:
        inferred.unlink(missing_ok=True)
    # keep_io_types: casts at the graph boundary; the runtime feeds float32 whatever the precision
    half = convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32_OPS],
    )
    del model
    toposort(half.graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(half, path, threshold)
