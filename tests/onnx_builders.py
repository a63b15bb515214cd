"""Small real ONNX models for the tests, built with ``onnx.helper`` (opset 17).

Each model takes ``images`` [1, 3, H, W] and returns a fixed tensor: the output is
``Constant + 0 * ReduceMax(images)`` so the input is used (ONNX Runtime accepts it and
checks the fed shape) while the values stay exactly the ones given. ReduceMax rather
than ReduceSum: a float16 sum over a whole image would overflow to inf, and 0 * inf is NaN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the lowest IR that carries opset 17: loads in any recent onnxruntime

_ELEM_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


def constant_output_model(path: str | Path, output: np.ndarray, *, input_hw: tuple[int, int] | None = (320, 320),
                          input_dtype: type = np.float32, metadata: Mapping[str, str] | None = None,
                          input_name: str = "images", output_name: str = "output0") -> Path:
    """Save a model whose single output is ``output`` whatever the image.

    ``input_hw`` None makes H and W dynamic (``dim_param`` ``height``/``width``). The output
    has the input's dtype. ``metadata`` goes into ``metadata_props`` (e.g. Ultralytics'
    ``names`` ``"{0: 'a', 1: 'b'}"`` and ``imgsz`` ``"[640, 640]"``).
    """
    dtype = np.dtype(input_dtype)
    elem = _ELEM_TYPES[dtype]
    value = np.asarray(output, dtype=dtype)
    hw: list[int | str] = list(input_hw) if input_hw is not None else ["height", "width"]
    nodes = [
        helper.make_node("Constant", [], ["value"], value=numpy_helper.from_array(value, "value")),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros((), dtype), "zero")),
        helper.make_node("ReduceMax", [input_name], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
        helper.make_node("Add", ["value", "nothing"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes, "constant_output",
        [helper.make_tensor_value_info(input_name, elem, [1, 3, *hw])],
        [helper.make_tensor_value_info(output_name, elem, list(value.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edged-tests")
    model.ir_version = IR_VERSION
    for key, text in (metadata or {}).items():
        model.metadata_props.add(key=key, value=text)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def constant_output_model_fp16(path: str | Path, output: np.ndarray, *, input_hw: tuple[int, int] | None = (320, 320),
                               metadata: Mapping[str, str] | None = None) -> Path:
    """The float16 variant (as a half-precision export): float16 ``images`` in, float16 output out."""
    return constant_output_model(path, output, input_hw=input_hw, input_dtype=np.float16, metadata=metadata)


def names_metadata(labels: list[str]) -> str:
    """Ultralytics' ``names`` metadata for ``labels``: ``"{0: 'a', 1: 'b'}"``."""
    return repr(dict(enumerate(labels)))
