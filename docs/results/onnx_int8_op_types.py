"""Which op types onnxruntime's static int8 may quantize before a model collapses.

Quantizes a built folder's fp32 ONNX file again with the settings of the onnx-int8 family (QDQ,
per-channel int8 weights, uint8 activations, MinMax on 128 train images), once per choice of
``op_types_to_quantize``, and scores each on seeded test images against the fp32 file. Inputs are
prepared from the manifest's own preprocessing (exact resize with PIL bilinear, mean/std).

    python docs/results/onnx_int8_op_types.py artifacts/vit-224px-best/timm-vit_tiny_r_s16_p8_224 400 \
        all compute compute+Add all-data-movement all-Softmax,LayerNormalization,Gelu,Add

A choice is ``all`` (every op type the quantizer knows: what the family builds), ``compute`` (Conv,
MatMul, Gemm), ``compute+A,B`` (those and A, B) or ``all-A,B`` (every op type present but A, B;
``data-movement`` stands for Transpose, Slice, Squeeze, Reshape, Concat, Expand, Gather, Pad, MaxPool).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

COMPUTE = ["Conv", "MatMul", "Gemm"]
DATA_MOVEMENT = ["Transpose", "Slice", "Squeeze", "Reshape", "Concat", "Expand", "Gather", "Pad", "MaxPool"]


def prepare(images: np.ndarray, preprocessing: dict) -> np.ndarray:
    """NCHW float inputs as the manifest describes them (exact resize only)."""
    size = preprocessing["resize"]
    mean = np.array(preprocessing["mean"], np.float32)[:, None, None]
    std = np.array(preprocessing["std"], np.float32)[:, None, None]
    return np.stack([(np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR), np.float32)
                      .transpose(2, 0, 1) / 255 - mean) / std for im in images])


def names(text: str) -> list[str]:
    """Op types from a comma-separated list, ``data-movement`` standing for its group."""
    return [op for name in text.split(",") for op in (DATA_MOVEMENT if name == "data-movement" else [name])]


def op_types(choice: str, present: list[str]) -> list[str] | None:
    """The op types a choice quantizes; None lets the quantizer take every one it knows."""
    if choice == "all":
        return None
    if choice == "compute":
        return COMPUTE
    if choice.startswith("compute+"):
        return COMPUTE + names(choice[len("compute+"):])
    if choice.startswith("all-"):
        return [op for op in present if op not in names(choice[len("all-"):])]
    raise SystemExit(f"Unknown choice {choice!r}: use all, compute, compute+A,B or all-A,B.")


def main(stem: str, samples: int, choices: list[str]) -> None:
    with open(stem + ".int8.onnx.manifest.json", encoding="utf-8") as manifest:
        preprocessing = json.load(manifest)["input"]["preprocessing"]
    data = np.load(os.path.join(os.environ.get("QEXPORT_DATA_DIR", "../shared/datasets/cifar10"), "cifar10.npz"))
    rng = np.random.default_rng(0)
    calibration = prepare(data["x_train"][rng.choice(len(data["x_train"]), 128, replace=False)], preprocessing)
    picked = rng.choice(len(data["x_test"]), samples, replace=False)
    inputs, labels = prepare(data["x_test"][picked], preprocessing), data["y_test"][picked]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1

    def predictions(path: str) -> np.ndarray:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: inputs[i:i + 20]})[0].argmax(1)
                               for i in range(0, len(inputs), 20)])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i:i + 16] for i in range(0, len(calibration), 16))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    reference = predictions(stem + ".fp32.onnx")
    print(f"fp32: top-1 {(reference == labels).mean() * 100:.2f} % on {samples} test images")
    folder = tempfile.mkdtemp(prefix="qexport-optypes-")
    pre = os.path.join(folder, "pre.onnx")
    quant_pre_process(stem + ".fp32.onnx", pre, skip_symbolic_shape=False)
    present = sorted({node.op_type for node in onnx.load(pre).graph.node})
    for choice in choices:
        out = os.path.join(folder, "int8.onnx")
        quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=op_types(choice, present))
        found = predictions(out)
        print(f"int8 {choice}: top-1 {(found == labels).mean() * 100:.2f} %, "
              f"agrees with fp32 on {(found == reference).mean() * 100:.1f} %", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
