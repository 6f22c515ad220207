"""INT8 models for CPU serving: static quantization of an SRN's ONNX export with ONNX Runtime.

```bash
srn-hf export MODEL int8/ --format onnx --quantize int8 --calibration-images photos/        # a folder or a file list
srn-hf export MODEL int8/ --format onnx --quantize int8 --data stamp_scenes \\
    --data-option path=data/stamp_scenes --split validation   # calibrated and thresholds tuned on that split
```

The float32 graph of [`srn_hf.export.export_onnx`] is prepared (`quant_pre_process`: shape inference and ONNX
Runtime's graph optimisations) and quantized by `onnxruntime.quantization.quantize_static` in the QDQ format:
weights int8 per output channel, activations uint8 per tensor (the settings ONNX Runtime gives for x86 CPUs with
VNNI, no reduced range), their ranges measured by running the float graph on real images (a
`CalibrationDataReader` over the image processor's `pixel_values`; by default the 99.999th percentile of each
activation, [`DEFAULT_CALIBRATION_METHOD`]). The operators of [`FLOAT_OPERATORS`] (the attention softmax) stay
float32; the backbone is quantized whole (keeping its first stage float32, [`first_stage_weights`], cost the speed
goal and did not lower the mAP lost: docs/deploy.md "INT8"). Then bias correction ([`correct_biases`]): each layer's
bias is moved by the mean error its own quantization causes on the calibration images.

The folder is a complete export folder (`model.onnx` is the INT8 graph, so [`srn_hf.export.ExportedTagger`] and
everything built on it load it as they load a float32 one), and it records what was done: `config.json` has
`export_format` and `quantization` (type, format, calibration method and image count, the operators and layers kept
float32 with the error each fixed, the bias correction's method, images and layers, ONNX Runtime's version);
`thresholds.json` has `thresholds_from`: `"int8 scores"` when a labelled split was given (the thresholds are tuned
again on the quantized model's scores, [`srn_hf.scoring.calibrate_model_folder`]), else `"float32 model"` (copied
from the float model's config, though the quantized scores may have drifted from its).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export import EXPORT_FORMATS, INPUT_NAME, update_export_record

QUANTIZE_TYPES = ("int8",)
# Percentile (99.999 % of each activation's values) is the default: on the demo model it lowers the largest
# validation score error from 0.50 (MinMax) to 0.32 at the same speed (docs/deploy.md "INT8").
CALIBRATION_METHODS = ("percentile", "minmax")
DEFAULT_CALIBRATION_METHOD = "percentile"
# Not offered: ONNX Runtime's quantize_static builds its entropy calibrator with 128 histogram bins for 128 quantized
# bins (it passes no bin count on), so the KL search has one candidate, the whole range: MinMax's ranges, measured
# identical for every one of the demo graph's 135 tensors. With 2,048 bins (its calibrator called directly) the ranges
# shrink to 0.70 of MinMax's (median) and the validation mAP drops 3.9 points.
REFUSED_METHODS = {
    "entropy": "ONNX Runtime's quantize_static calibrates 'entropy' with 128 histogram bins for 128 quantized bins, "
    "which gives MinMax's ranges exactly (see docs/deploy.md, INT8)",
}
# Fewer images than this give ranges of a few extreme activations (the ONNX Runtime examples use hundreds).
MIN_CALIBRATION_IMAGES = 16
DEFAULT_CALIBRATION_IMAGES = 256
# Kept float32: the attention softmax over the h x w positions (probabilities near 1 / (h w), which a per-tensor
# uint8 scale rounds to a few levels): the one operator type whose float32 version paid on the demo's final model
# (benchmarks/benchmark_int8.py, docs/deploy.md "INT8").
FLOAT_OPERATORS = ("Softmax",)
# The backbone's first feature stage (timm's feature_info[0] and every layer before it: the stem and, in EfficientNets,
# blocks.0) may stay float32 ([`first_stage_weights`]), and the first block of each of the next FLOAT_FIRST_BLOCKS
# stages ([`float_layer_weights`]). Neither by default: on the demo model the first stage lowered the validation score
# error by a tenth but not the test mAP lost (-0.58 against -0.60) and cost the speed goal (1.36 to 1.68x ONNX Runtime
# float32 at batch 16 against 2.12x); blocks.1.0 lowered the score error most of any block but lost more mAP (test
# -0.83). Bias correction ([`BIAS_CORRECTION`]) at no cost in speed is the default instead (docs/deploy.md "INT8").
FLOAT_FIRST_STAGE = False
FLOAT_FIRST_BLOCKS = 0
# What each float32 choice fixed, measured on the demo model's validation split (benchmarks/benchmark_int8.py), as
# written in an INT8 folder's config.json.
FLOAT32_MEASUREMENTS = {
    "Softmax": "the attention softmax over positions: validation mAP change -0.27 with it quantized, -0.12 float32 "
    "(demo model, percentile, 400 images; MinMax, 200 images: -0.31, -0.08)",
    "backbone first stage": "the stem and first blocks: mean validation score error 0.00887 -> 0.00795 with Softmax "
    "float32 (percentile; with MinMax, from every operator quantized: 0.0104 -> 0.0083, largest 0.50 -> 0.19), demo "
    "model, 400 images",
}
# Bias correction ([`correct_biases`]) on the calibration images: on the demo model it lowers the mean score error
# against the float32 graph by a fifth on images it did not see (docs/deploy.md "INT8").
BIAS_CORRECTION = True
BIAS_CORRECTION_METHOD = (
    "per output channel of each Conv and Gemm: the mean error of its own quantization (weights and input) on the "
    "calibration images, given the float32 graph's inputs, added to its int32 bias"
)
BACKBONE_WEIGHTS = "model.srn.backbone."  # the backbone's weights' names in the exported graph
CALIBRATION_BATCH = 16


class QuantizationError(ValueError):
    """Calibration images that cannot calibrate a quantization: none readable, or fewer than the minimum."""


@dataclass
class CalibrationImages:
    """The preprocessed calibration images (N x 3 x H x W float32) and the problems of those left out."""

    pixel_values: np.ndarray
    source: str
    unreadable: list[str]


def check_quantize_options(quantize: str, method: str, count: int, split: str | None = None) -> None:
    """Refuses (ValueError naming the parameter) an unknown `quantize` type or calibration method, a `count` of
    calibration images under [`MIN_CALIBRATION_IMAGES`], or the test `split` of a dataset to calibrate on."""
    if split == "test":
        raise ValueError("split='test': quantization is calibrated and thresholds are tuned on a validation split")
    if quantize not in QUANTIZE_TYPES:
        raise ValueError(f"quantize={quantize!r} is not one of {', '.join(QUANTIZE_TYPES)}")
    if method in REFUSED_METHODS:
        raise ValueError(f"calibration_method={method!r} is not offered: {REFUSED_METHODS[method]}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration_method={method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if count < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"calibration_count={count} is below the minimum of {MIN_CALIBRATION_IMAGES} images")


def calibration_images(
    sources, image_processor, count: int = DEFAULT_CALIBRATION_IMAGES, name: str | None = None
) -> CalibrationImages:
    """Up to `count` images of `sources` (a `srn_hf.bulk.Sources`: files or a dataset split), evenly spaced over
    them, opened and preprocessed; unreadable ones are left out (and named). `name` says in errors and in the
    record where they come from (e.g. `"calibration_images=photos/"`).

    Raises:
        QuantizationError: no image can be read, or fewer than [`MIN_CALIBRATION_IMAGES`] can.
    """
    from .bulk import ImageRows

    source = describe_sources(sources) if name is None else f"{name} ({describe_sources(sources)})"
    if not sources.keys:
        raise QuantizationError(f"calibration images {source}: no image files")
    picked = np.unique(np.linspace(0, len(sources.keys) - 1, min(count, len(sources.keys))).round().astype(int))
    rows = ImageRows(sources, picked.tolist(), image_processor)
    items = [rows[index] for index in range(len(rows))]
    unreadable = [item["error"] for item in items if item["error"] is not None]
    readable = [item["pixel_values"].numpy() for item in items if item["error"] is None]
    if not readable:
        raise QuantizationError(
            f"calibration images {source}: none of the {len(items)} images can be read (the first: {unreadable[0]})"
        )
    if len(readable) < MIN_CALIBRATION_IMAGES:
        raise QuantizationError(
            f"calibration images {source}: {len(readable)} readable images, fewer than the minimum of "
            f"{MIN_CALIBRATION_IMAGES} ({len(unreadable)} unreadable)"
        )
    return CalibrationImages(np.stack(readable).astype(np.float32), source, unreadable)


def describe_sources(sources) -> str:
    """The calibration source in a record: the dataset split's size, or the number of files."""
    if sources.dataset is not None:
        return f"{len(sources.keys)} dataset images"
    return f"{len(sources.keys)} image files"


class PixelBatches:
    """ONNX Runtime's `CalibrationDataReader`: `{"pixel_values": batch}` of the calibration images, then None; with
    `__len__` (the number of batches) and `set_range` (batches start to end), which its strided calibration calls."""

    def __init__(self, pixel_values: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self.batches = [pixel_values[start : start + batch_size] for start in range(0, len(pixel_values), batch_size)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict | None:
        batch = next(self.pending, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_graph(
    float_graph: str | os.PathLike,
    out_graph: str | os.PathLike,
    pixel_values: np.ndarray,
    method: str = DEFAULT_CALIBRATION_METHOD,
    float_operators: tuple[str, ...] = FLOAT_OPERATORS,
    float_weights: tuple[str, ...] = (),
    calibration_cache: str | os.PathLike | None = None,
    bias_correction: bool = BIAS_CORRECTION,
) -> dict:
    """Static INT8 quantization (QDQ) of an ONNX graph, calibrated on `pixel_values`; returns its record.

    Args:
        float_graph, out_graph: the float32 graph, and where to write the quantized one.
        pixel_values: N x 3 x H x W float32 calibration inputs.
        method: `"percentile"` (99.999 % of each activation's values) or `"minmax"` (each activation's whole range).
        float_operators: operator types to keep float32.
        float_weights: prefixes of weight names: the nodes reading such a weight stay float32 as well (e.g.
            [`first_stage_weights`]).
        calibration_cache: a JSON file of the activations' ranges: written by the first call, read by the next
            (quantizing one graph several ways calibrates once; the first call must quantize every operator type,
            so that every range is in it). ONNX Runtime's `calibration_cache_path` (1.27 and later).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="srn-int8-") as scratch:
        prepared = prepared_graph(float_graph, Path(scratch) / "prepared.onnx")
        float_nodes = nodes_reading(prepared, float_weights)
        quantize_static(
            os.fspath(prepared),
            os.fspath(out_graph),
            PixelBatches(pixel_values),
            quant_format=QuantFormat.QDQ,
            # quantize_static's own default (every operator it can quantize), less those kept float32
            op_types_to_quantize=sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(float_operators)),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=float_nodes,
            calibrate_method=methods[method],
            # One batch at a time: the percentile calibrator keeps every activation of the images it is given (13 GB
            # for 256 images of the demo model at once); its histograms, and MinMax's ranges, merge batch by batch.
            # (Not CalibMaxIntermediateOutputs: ONNX Runtime 1.32's MinMax calibrator drops the batches of each full
            # chunk without taking their ranges.)
            extra_options={"CalibStridedMinMax": 1},
            **({} if calibration_cache is None else {"calibration_cache_path": os.fspath(calibration_cache)}),
        )
        corrected = correct_biases(prepared, out_graph, pixel_values) if bias_correction else None
    return quantization_record(method, len(pixel_values), float_operators, float_weights, float_nodes, corrected)


@dataclass
class BiasLayer:
    """A convolution or Gemm of the INT8 graph whose bias bias correction moves: its node in the INT8 graph and in
    the float32 one (the prepared graph's), the quantization of its input, its dequantized weights, and its int32
    bias's name (None: the layer has no bias yet) and scales (the input's scale times the weights')."""

    node: object  # onnx.NodeProto of the INT8 graph
    float_node: object  # onnx.NodeProto of the float32 graph
    input_scale: float
    input_zero: np.ndarray
    weight: np.ndarray  # dequantized (the INT8 graph's weights as float)
    bias: str | None
    bias_scale: np.ndarray


def bias_layers(float_model, quantized_model) -> list[BiasLayer]:
    """The nodes of the INT8 graph (Conv, Gemm) whose input and weights (and bias, if any) are each read from a
    `DequantizeLinear`, matched by weight name to their float32 node."""
    from onnx import numpy_helper

    made = {output: node for node in quantized_model.graph.node for output in node.output}
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in quantized_model.graph.initializer}
    float_nodes = {node.input[1]: node for node in float_model.graph.node if node.op_type in ("Conv", "Gemm")}
    layers = []
    for node in (node for node in quantized_model.graph.node if node.op_type in ("Conv", "Gemm")):
        readers = [made.get(name) for name in node.input[:3]]
        if any(reader is None or reader.op_type != "DequantizeLinear" for reader in readers):
            continue
        source, weight = readers[:2]
        float_node = float_nodes.get(weight.input[0].removesuffix("_quantized"))
        if float_node is None:
            continue
        axis = next((attribute.i for attribute in weight.attribute if attribute.name == "axis"), 1)
        transposed = node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)
        channels = values[weight.input[0]].shape[1 if transposed else 0]
        scale = float(values[source.input[1]])
        layers.append(
            BiasLayer(
                node,
                float_node,
                scale,
                values[source.input[2]],
                dequantized(*(values[name] for name in weight.input), axis),
                readers[2].input[0] if len(readers) == 3 else None,
                np.broadcast_to(scale * values[weight.input[1]], (channels,)).astype(np.float32),
            )
        )
    return layers


def dequantized(values: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int = 0) -> np.ndarray:
    """`DequantizeLinear` in float64: per tensor, or per slice along `axis` when `scale` is a vector."""
    shape = [1] * values.ndim
    if np.ndim(scale):
        shape[axis] = -1
    return (values.astype(np.float64) - np.reshape(zero, shape)) * np.reshape(scale, shape)


def fake_quantized(values: np.ndarray, scale: float, zero: np.ndarray) -> np.ndarray:
    """Float values quantized per tensor to `zero`'s integer type and back (`QuantizeLinear`, `DequantizeLinear`)."""
    limits = np.iinfo(zero.dtype)
    return (np.clip(np.round(values / scale) + zero, limits.min, limits.max) - zero) * scale


def mean_inputs(float_model, layers: list[BiasLayer], pixel_values: np.ndarray) -> dict[str, tuple]:
    """For each layer's input tensor: its mean over the images in the float32 graph (C x H x W, or C), and the mean
    of the same values quantized as the INT8 graph quantizes them."""
    import onnx
    import onnxruntime

    quantization = {layer.float_node.input[0]: (layer.input_scale, layer.input_zero) for layer in layers}
    names = sorted(quantization)
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sums = dict.fromkeys(names, (0.0, 0.0))
    for batch in PixelBatches(pixel_values).batches:
        for name, values in zip(names, session.run(names, {INPUT_NAME: batch})):
            values = values.astype(np.float64)
            float_sum, quantized_sum = sums[name]
            sums[name] = (float_sum + values.sum(0), quantized_sum + fake_quantized(values, *quantization[name]).sum(0))
    return {
        name: (float_sum / len(pixel_values), quantized_sum / len(pixel_values))
        for name, (float_sum, quantized_sum) in sums.items()
    }


def mean_output(node, weight: np.ndarray, bias: np.ndarray, mean_input: np.ndarray) -> np.ndarray:
    """A Conv's or Gemm's mean output per channel (over positions) given its input's mean over the images: the
    operator is linear, so this is the mean of its outputs (zero padding included)."""
    import onnx
    import torch

    options = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
    if node.op_type == "Gemm":
        return mean_input @ (weight.T if options.get("transB", 0) else weight) + bias
    top, left, bottom, right = options.get("pads", [0, 0, 0, 0])
    padded = torch.nn.functional.pad(torch.from_numpy(mean_input)[None], (left, right, top, bottom))
    output = torch.nn.functional.conv2d(
        padded,
        torch.from_numpy(weight),
        torch.from_numpy(bias),
        stride=options.get("strides", 1),
        dilation=options.get("dilations", 1),
        groups=options.get("group", 1),
    )
    return output[0].mean(dim=(1, 2)).numpy()


def correct_biases(float_graph: str | os.PathLike, quantized_graph: str | os.PathLike, pixel_values) -> dict:
    """Bias correction (Nagel et al. 2019, "Data-Free Quantization", its empirical form), in place on the INT8 graph:
    each convolution's (and Gemm's) own quantization error shifts the mean of its output channels; the shift, measured
    on `pixel_values` with the float32 graph's inputs to the layer (its weights and input quantized as the INT8 graph
    quantizes them, against float32), is added to its int32 bias (a layer without a bias is given one). Each layer is
    corrected for its own error only, so the corrections add up along the network instead of being counted twice
    (correcting every layer by the whole mean error at its output, measured in the INT8 graph, diverges: measured on
    the demo model).

    `float_graph` is the graph quantized (`prepared_graph`: its node and weight names are the INT8 graph's).
    Returns `{"layers": count, "mean_shift": mean absolute shift over the channels and layers}`."""
    import onnx
    from onnx import numpy_helper

    float_model, quantized_model = onnx.load(os.fspath(float_graph)), onnx.load(os.fspath(quantized_graph))
    layers = bias_layers(float_model, quantized_model)
    means = mean_inputs(float_model, layers, pixel_values)
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in float_model.graph.initializer}
    biases = {tensor.name: tensor for tensor in quantized_model.graph.initializer}
    shifts = []
    for layer in layers:
        float_mean, quantized_mean = means[layer.float_node.input[0]]
        weight = weights[layer.float_node.input[1]].astype(np.float64)
        bias = weights[layer.float_node.input[2]] if len(layer.float_node.input) > 2 else 0 * layer.bias_scale
        stored = numpy_helper.to_array(biases[layer.bias]) if layer.bias else np.zeros(len(layer.bias_scale), np.int32)
        shift = mean_output(layer.float_node, weight, bias.astype(np.float64), float_mean) - mean_output(
            layer.float_node, layer.weight, stored * layer.bias_scale.astype(np.float64), quantized_mean
        )
        corrected = (stored + np.round(shift / layer.bias_scale)).astype(np.int32)
        if layer.bias is None:
            add_bias(quantized_model.graph, layer, corrected)
        else:
            biases[layer.bias].CopyFrom(numpy_helper.from_array(corrected, layer.bias))
        shifts.append(np.abs(shift).mean())
    onnx.save(quantized_model, os.fspath(quantized_graph))
    return {"layers": len(layers), "mean_shift": float(np.mean(shifts)) if shifts else 0.0}


def add_bias(graph, layer: BiasLayer, values: np.ndarray) -> None:
    """Gives a layer of the INT8 graph without a bias one: int32 `values` at `layer.bias_scale`, read through a
    `DequantizeLinear` as ONNX Runtime's quantizer writes biases (so that it still fuses the layer into an integer
    one)."""
    import onnx
    from onnx import numpy_helper

    name = f"{layer.node.input[1].removesuffix('_DequantizeLinear_Output')}_bias_correction"
    graph.initializer.extend(
        [
            numpy_helper.from_array(values, f"{name}_quantized"),
            numpy_helper.from_array(layer.bias_scale, f"{name}_quantized_scale"),
            numpy_helper.from_array(np.zeros_like(values), f"{name}_quantized_zero_point"),
        ]
    )
    reader = onnx.helper.make_node(
        "DequantizeLinear",
        [f"{name}_quantized", f"{name}_quantized_scale", f"{name}_quantized_zero_point"],
        [name],
        name=f"{name}_DequantizeLinear",
        axis=0,
    )
    index = next(index for index, node in enumerate(graph.node) if node.output[0] == layer.node.output[0])
    graph.node[index].input.append(name)
    graph.node.insert(index, reader)


def prepared_graph(float_graph: str | os.PathLike, path: Path) -> Path:
    """The graph ready for quantization (`quant_pre_process`: shapes inferred, ONNX Runtime's basic optimisations)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(os.fspath(float_graph), os.fspath(path), skip_symbolic_shape=True)
    return path


def nodes_reading(graph: str | os.PathLike, weight_prefixes: tuple[str, ...]) -> list[str]:
    """The names of the nodes of an ONNX graph that read a weight whose name starts with one of `weight_prefixes`."""
    import onnx

    if not weight_prefixes:
        return []
    return [
        node.name
        for node in onnx.load(os.fspath(graph), load_external_data=False).graph.node
        if any(name.startswith(tuple(weight_prefixes)) for name in node.input)
    ]


def feature_stage_weights(config) -> list[tuple[str, ...]]:
    """The backbone's feature stages in an exported graph, shallowest first: for each of timm's `feature_info` levels,
    the prefixes of the weights' names of its layers (those after the previous level's module, up to and including
    its own). EfficientNet-Lite0: `conv_stem`, `bn1`, `blocks.0`; then `blocks.1`; `blocks.2`; `blocks.3` and
    `blocks.4`; `blocks.5` and `blocks.6`. ResNet: the stem up to `act1`; then `layer1` ... Stops at a level whose
    module is not found among the backbone's modules."""
    import torch

    from .modeling_srn import create_backbone

    with torch.device("meta"):
        backbone = create_backbone(config)
    # timm's FeatureListNet joins nested module names with "_"
    ends = [(name, name.replace(".", "_")) for name in backbone.feature_info.module_name()]
    stages, layers, current = [], [], None
    for name, module in backbone.named_modules():
        if current is not None and not name.startswith(current + "."):
            stages, layers, current = [*stages, tuple(layers)], [], None
        if len(stages) == len(ends):
            break
        current = name if current is None and name in ends[len(stages)] else current
        if name and any(True for _ in module.parameters(recurse=False)):
            layers.append(f"{BACKBONE_WEIGHTS}{name}.")
    return stages + [tuple(layers)] if current is not None else stages


def first_stage_weights(config) -> tuple[str, ...]:
    """The prefixes of the weights' names of the backbone's first feature stage ([`feature_stage_weights`]), empty
    when it is not found."""
    stages = feature_stage_weights(config)
    return stages[0] if stages else ()


def float_layer_weights(config, blocks: int = FLOAT_FIRST_BLOCKS) -> tuple[str, ...]:
    """The prefixes of the weights' names kept float32 in the backbone: its first feature stage and the first block of
    each of the next `blocks` stages ([`feature_stage_weights`]; a stage's first block is the module
    holding its first layer: EfficientNet `blocks.1.0`, ResNet `layer1.0`). Whole blocks, not single convolutions:
    ONNX Runtime (1.32) quantizes at load time the float32 weights of a convolution read from a DequantizeLinear and
    written to a QuantizeLinear (its `WeightBiasQuantization`, per tensor, which costs more than int8 per channel)."""
    stages = feature_stage_weights(config)
    if not stages:
        return ()
    starts = [first_block(stage) for stage in stages[1 : 1 + blocks]]
    return stages[0] + tuple(
        prefix for stage, start in zip(stages[1:], starts) for prefix in stage if prefix.startswith(start)
    )


def first_block(stage: tuple[str, ...]) -> str:
    """The prefix of a stage's first block: its first layer's prefix less the layer's own name."""
    return stage[0].rstrip(".").rsplit(".", 1)[0] + "."


def quantization_record(
    method: str, images: int, float_operators, float_weights, float_nodes, bias_correction: dict | None = None
) -> dict:
    """The `quantization` field of an INT8 folder's config.json: how it was quantized, what stayed float32 with
    the error each choice was measured to fix ([`FLOAT32_MEASUREMENTS`]), and the bias correction (None: off)."""
    import onnxruntime

    kept = {operator: FLOAT32_MEASUREMENTS.get(operator, "") for operator in float_operators}
    if float_weights:
        kept["backbone first stage"] = FLOAT32_MEASUREMENTS["backbone first stage"]
    return {
        "type": "int8",
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, asymmetric, per tensor",
        "calibration_method": method,
        "calibration_images": images,
        "float_operators": list(float_operators),
        "float_weights": [prefix.removeprefix(BACKBONE_WEIGHTS) for prefix in float_weights],
        "float_nodes": list(float_nodes),
        "float32_measured": kept,
        "bias_correction": None
        if bias_correction is None
        else {"method": BIAS_CORRECTION_METHOD, "images": images, **bias_correction},
        "onnxruntime": onnxruntime.__version__,
    }


def export_quantized(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    sources,
    quantize: str = "int8",
    format: str = "onnx",
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
    image_size: int | None = None,
    attention_maps: bool = False,
    thresholds_data: tuple[str, dict, str] | None = None,
    calibration_name: str | None = None,
) -> dict:
    """An INT8 export folder of the SRN model in `model_dir`: the float32 ONNX export, quantized.

    Args:
        model_dir, out_dir, image_size, attention_maps: as in [`srn_hf.export.export_model`].
        sources: the calibration images, a `srn_hf.bulk.Sources` (files, or a dataset split's rows).
        quantize: the type, `"int8"`.
        format: `"onnx"`, the only format quantized (ONNX Runtime runs the INT8 graph).
        calibration_method, calibration_count: see [`quantize_graph`]; at most `calibration_count` images are used
            (evenly spaced over `sources`), at least [`MIN_CALIBRATION_IMAGES`] must be readable.
        thresholds_data: `(kind, options, split)` of a labelled `srn_hf.data` split to tune the thresholds on again
            with the quantized model's scores (never `"test"`); None copies the float model's.
        calibration_name: where `sources` come from, in errors and the record (see [`calibration_images`]).

    Returns:
        `{"graph": path, "quantization": {...}, "unreadable": [...], "calibration": ThresholdCalibration or None}`.
    """
    from .export import check_export_target, export_image_processor, export_model, write_export_thresholds
    from .model_folder import check_model_folder
    from .scoring import calibrate_model_folder
    from .storage import atomic_folder

    check_quantize_options(quantize, calibration_method, calibration_count, thresholds_data and thresholds_data[2])
    if format != "onnx":
        raise ValueError(
            f"quantize={quantize!r} makes an ONNX Runtime graph: format={format!r} is not quantized "
            "(pass format='onnx')"
        )
    check_export_target(out_dir, "onnx", image_size)
    config = check_model_folder(model_dir)
    processor = export_image_processor(model_dir, image_size, config)
    images = calibration_images(sources, processor, calibration_count, calibration_name)
    with tempfile.TemporaryDirectory(prefix="srn-float-") as scratch:
        float_folder = Path(scratch) / "float"
        export_model(model_dir, float_folder, "onnx", image_size, attention_maps)
        with atomic_folder(out_dir) as folder:
            for path in float_folder.iterdir():
                if path.name != EXPORT_FORMATS["onnx"]:
                    (folder / path.name).write_bytes(path.read_bytes())
            record = quantize_graph(
                float_folder / "model.onnx",
                folder / "model.onnx",
                images.pixel_values,
                calibration_method,
                float_weights=float_layer_weights(config, FLOAT_FIRST_BLOCKS) if FLOAT_FIRST_STAGE else (),
            )
            record["calibration_source"] = images.source
            update_export_record(folder, quantization=record)
            calibration = None
            if thresholds_data is not None:
                kind, options, split = thresholds_data
                calibration, _ = calibrate_model_folder(folder, kind, options, split)
                write_export_thresholds(folder, calibration)
    return {
        "graph": Path(out_dir) / EXPORT_FORMATS["onnx"],
        "quantization": record,
        "unreadable": images.unreadable,
        "calibration": calibration,
    }


__all__ = [
    "BIAS_CORRECTION",
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_METHOD",
    "FLOAT_FIRST_BLOCKS",
    "FLOAT_FIRST_STAGE",
    "FLOAT_OPERATORS",
    "MIN_CALIBRATION_IMAGES",
    "QUANTIZE_TYPES",
    "QuantizationError",
    "correct_biases",
    "calibration_images",
    "export_quantized",
    "feature_stage_weights",
    "first_stage_weights",
    "float_layer_weights",
    "nodes_reading",
    "quantize_graph",
]
