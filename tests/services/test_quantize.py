"""`srn_hf.quantize`: static INT8 quantization (QDQ, per-channel weights) of an SRN's ONNX export, calibrated on real
image files, with its thresholds tuned again on the quantized scores."""

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime
import pytest
from helpers import random_images, save_with_processor, small_srn, write_imagefolder
from onnx import numpy_helper

from srn_hf import SRNConfig
from srn_hf.bulk import dataset_sources, file_sources
from srn_hf.data import label_names, load_multilabel_dataset
from srn_hf.export import ExportedTagger, export_image_processor, export_model
from srn_hf.model_folder import check_model_folder
from srn_hf.quantize import (
    CALIBRATION_METHODS,
    FLOAT_OPERATORS,
    MIN_CALIBRATION_IMAGES,
    QuantizationError,
    calibration_images,
    check_quantize_options,
    export_quantized,
    first_stage_weights,
    float_layer_weights,
    quantize_graph,
)
from srn_hf.scoring import score_split_exported
from srn_hf.thresholds import calibrate_thresholds

LABELS = {0: "cat", 1: "dog", 2: "car"}
VALIDATION = [["cat"] if i % 3 == 0 else ["dog"] if i % 3 == 1 else ["cat", "car"] for i in range(24)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_with_processor(small_srn(LABELS, image_size=64), tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_imagefolder(
        tmp_path_factory.mktemp("data"), {"train": [["cat"], ["dog"], ["car"]], "validation": VALIDATION}
    )


@pytest.fixture(scope="module")
def float_folder(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("float") / "onnx"
    export_model(model_dir, out)
    return out


@pytest.fixture(scope="module")
def calibration(model_dir, data_dir):
    sources = dataset_sources("imagefolder", {"data_dir": data_dir}, "validation")
    return calibration_images(sources, export_image_processor(model_dir, None))


@pytest.fixture(scope="module")
def int8_graph(float_folder, calibration, tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "model.onnx"
    record = quantize_graph(float_folder / "model.onnx", path, calibration.pixel_values)
    return path, record


def test_weights_are_int8_per_channel_and_the_float_operators_stay_float(float_folder, int8_graph):
    path, record = int8_graph
    graph = onnx.load(str(path)).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    dequantized = {node.input[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    # Every convolution reads its weight from an int8 initializer with one scale per output channel.
    for node in convolutions:
        weight = graph_input_of(graph, node.input[1])
        assert weight.op_type == "DequantizeLinear" and initializers[weight.input[0]].dtype == np.int8
        assert initializers[weight.input[1]].shape == (initializers[weight.input[0]].shape[0],)
    assert len(convolutions) > 10 and dequantized
    # The operators kept float32 read and write float tensors: no quantization right after them.
    consumers = {name: node.op_type for node in graph.node for name in node.input}
    for node in (node for node in graph.node if node.op_type in FLOAT_OPERATORS):
        assert consumers.get(node.output[0]) != "QuantizeLinear", node.name
    assert path.stat().st_size < 0.4 * (float_folder / "model.onnx").stat().st_size
    assert record["calibration_images"] == len(VALIDATION) and record["calibration_method"] == "percentile"
    assert record["float_operators"] == list(FLOAT_OPERATORS) and record["format"] == "QDQ"


def graph_input_of(graph, name):
    return next(node for node in graph.node if name in node.output)


def test_int8_scores_stay_near_the_float_scores(float_folder, int8_graph, calibration, tmp_path):
    folder = tmp_path / "int8"
    folder.mkdir()
    for path in float_folder.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "model.onnx").write_bytes(int8_graph[0].read_bytes())
    pixels = calibration.pixel_values
    float_scores = 1 / (1 + np.exp(-ExportedTagger(float_folder).logits(pixels)))
    int8_scores = 1 / (1 + np.exp(-ExportedTagger(folder).logits(pixels)))
    assert float_scores.shape == int8_scores.shape == (len(VALIDATION), len(LABELS))
    assert 0 < np.abs(int8_scores - float_scores).max() < 0.02  # quantized (not equal), and close


def test_export_quantized_tunes_the_thresholds_on_the_int8_scores(model_dir, data_dir, tmp_path):
    options = {"data_dir": data_dir}
    result = export_quantized(
        model_dir,
        tmp_path / "int8",
        dataset_sources("imagefolder", options, "validation"),
        thresholds_data=("imagefolder", options, "validation"),
    )
    folder = tmp_path / "int8"
    assert sorted(path.name for path in folder.iterdir()) == [
        "config.json",
        "model.onnx",
        "preprocessor_config.json",
        "thresholds.json",
    ]
    record = json.loads((folder / "thresholds.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert record["thresholds_from"] == "int8 scores"
    assert record["threshold_calibration"]["split"] == "validation"
    assert (
        config["quantization"]["calibration_images"] == len(VALIDATION) == result["quantization"]["calibration_images"]
    )
    assert config["export_format"] == "onnx" and "auto_map" not in config
    # By default nothing of the backbone stays float32 (only FLOAT_OPERATORS), and the biases are corrected.
    quantization = config["quantization"]
    assert quantization["float_weights"] == [] and quantization["float_nodes"] == []
    assert set(quantization["float32_measured"]) == set(FLOAT_OPERATORS)
    assert quantization["bias_correction"]["images"] == len(VALIDATION) and quantization["bias_correction"]["layers"]
    # The thresholds are those the threshold search gives on the INT8 graph's own validation scores.
    tagger = ExportedTagger(folder)
    validation = load_multilabel_dataset("imagefolder", **options)["validation"]
    scores, labels = score_split_exported(tagger, validation)
    labels = labels[:, [label_names(validation).index(name) for name in tagger.labels]]  # the model's label order
    expected = calibrate_thresholds(scores, labels, tagger.labels)
    assert np.allclose(tagger.thresholds, expected.thresholds) and record["thresholds"] != [0.5] * len(LABELS)
    assert config["label_thresholds"] == pytest.approx(expected.label_thresholds)


def test_float_layers_stay_float32_in_onnx_runtime(model_dir, float_folder, calibration, tmp_path):
    """The backbone's first stage (resnet10t's deep stem, up to act1) kept float32 when asked: its convolutions read
    float32 weights, in the graph and in ONNX Runtime's optimized graph."""
    path = tmp_path / "model.onnx"
    kept = first_stage_weights(check_model_folder(model_dir))
    quantization = quantize_graph(float_folder / "model.onnx", path, calibration.pixel_values, float_weights=kept)
    assert quantization["float_weights"][0] == "conv1.0." and quantization["float_weights"][-1] == "bn1."
    assert set(quantization["float32_measured"]) == {*FLOAT_OPERATORS, "backbone first stage"}
    assert "score error" in quantization["float32_measured"]["backbone first stage"]
    graph = onnx.load(str(path)).graph
    weights = {tensor.name for tensor in graph.initializer}
    convolutions = {node.name: node for node in graph.node if node.op_type == "Conv"}
    float_convolutions = [node for node in convolutions.values() if node.input[1].startswith(kept)]
    assert len(float_convolutions) == 3  # the stem's
    assert sorted(node.name for node in float_convolutions) == sorted(quantization["float_nodes"])
    assert all(node.input[1] in weights for node in float_convolutions)  # a float32 weight, read directly
    later = [node for node in convolutions.values() if node not in float_convolutions]
    assert later and all(node.input[1] not in weights for node in later)  # through DequantizeLinear
    # ONNX Runtime runs them in float32 too: its optimizer quantizes (per tensor) the float32 weights of a convolution
    # between a DequantizeLinear and a QuantizeLinear, never those of the graph's float32 start.
    graph = optimized_graph(path, tmp_path / "optimized.onnx", onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    float32_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    names = set(quantization["float_nodes"])
    readers = [node for node in graph.node if node.name in names]
    assert len(readers) == 3 and all(node.input[1] in float32_weights for node in readers)


def optimized_graph(path, optimized, level):
    """The graph as ONNX Runtime runs it on the CPU at the optimization `level`."""
    session_options = onnxruntime.SessionOptions()
    session_options.optimized_model_filepath = str(optimized)
    session_options.graph_optimization_level = level
    onnxruntime.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
    return onnx.load(str(optimized)).graph


def test_the_first_stage_ends_at_the_first_feature_level(model_dir):
    """timm's feature_info[0]: resnet10t's deep stem up to act1; an EfficientNet's stem and blocks.0."""
    layers = ("conv1.0", "conv1.1", "conv1.3", "conv1.4", "conv1.6", "bn1")
    assert first_stage_weights(check_model_folder(model_dir)) == tuple(f"model.srn.backbone.{x}." for x in layers)
    lite = SRNConfig(backbone="tf_efficientnet_lite0", id2label=LABELS)
    layers = ("conv_stem", "bn1", "blocks.0.0.conv_dw", "blocks.0.0.bn1", "blocks.0.0.conv_pw", "blocks.0.0.bn2")
    assert first_stage_weights(lite) == tuple(f"model.srn.backbone.{x}." for x in layers)


def test_the_float_layers_are_the_first_stage_and_the_first_blocks_asked_for(model_dir):
    """The first stage (the default), then the module holding the first layer of each of the next `blocks` stages."""
    stem = ("conv1.0", "conv1.1", "conv1.3", "conv1.4", "conv1.6", "bn1")
    block = ("layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2")
    config = check_model_folder(model_dir)
    assert float_layer_weights(config) == first_stage_weights(config)
    assert float_layer_weights(config, blocks=1) == tuple(f"model.srn.backbone.{x}." for x in stem + block)
    lite = SRNConfig(backbone="tf_efficientnet_lite0", id2label=LABELS)
    blocks = [f"blocks.{b}.0.{x}" for b in (1, 2) for x in ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3")]
    expected = first_stage_weights(lite) + tuple(f"model.srn.backbone.{x}." for x in blocks)
    assert float_layer_weights(lite, blocks=2) == expected


def test_calibration_images_that_cannot_calibrate_are_refused(model_dir, tmp_path):
    processor = export_image_processor(model_dir, None)
    broken = tmp_path / "broken"
    broken.mkdir()
    for index in range(20):
        (broken / f"{index}.png").write_bytes(b"not a png")
    with pytest.raises(QuantizationError, match=r"none of the 20 images can be read \(the first: .*0.png"):
        calibration_images(file_sources([str(broken)]), processor)
    few = write_imagefolder(tmp_path / "few", {"validation": [["cat"]] * (MIN_CALIBRATION_IMAGES - 1)})
    with pytest.raises(QuantizationError, match=f"{MIN_CALIBRATION_IMAGES - 1} readable images, fewer than the min"):
        calibration_images(dataset_sources("imagefolder", {"data_dir": few}, "validation"), processor)


def test_every_calibration_image_counts_in_the_ranges(float_folder, calibration, tmp_path):
    """The input's quantization range covers every calibration image, those of the first batches too (64 images: 4
    batches; the largest values are in the first)."""
    pixels = np.concatenate([calibration.pixel_values] * 3)[:64].copy()
    pixels[0] *= 3.0
    quantize_graph(float_folder / "model.onnx", tmp_path / "model.onnx", pixels, "minmax")
    scale, zero_point = input_quantization(tmp_path / "model.onnx")
    low, high = (0 - zero_point) * scale, (255 - zero_point) * scale
    assert low <= pixels.min() + scale and high >= pixels.max() - scale


def input_quantization(graph_path) -> tuple[float, int]:
    """The scale and zero point of the graph's input `pixel_values`."""
    graph = onnx.load(str(graph_path)).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    quantize = next(node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] == "pixel_values")
    return float(initializers[quantize.input[1]]), int(initializers[quantize.input[2]])


def test_each_calibration_method_reaches_onnx_runtime(float_folder, calibration, tmp_path):
    """Each offered method gives its own ranges (a few extreme pixels widen MinMax's input range, not the
    percentile's), and `entropy`, which ONNX Runtime's quantize_static turns into MinMax, is refused."""
    pixels = np.concatenate([calibration.pixel_values] * 2).copy()
    pixels[0, 0, 0, :2] = 40.0  # 2 extreme values among 600,000
    scales = {}
    for method in CALIBRATION_METHODS:
        quantize_graph(float_folder / "model.onnx", tmp_path / f"{method}.onnx", pixels, method)
        scales[method] = input_quantization(tmp_path / f"{method}.onnx")[0]
    assert scales["minmax"] * 255 > pixels.max() - pixels.min() - scales["minmax"]
    assert scales["percentile"] < 0.5 * scales["minmax"]
    with pytest.raises(ValueError, match="calibration_method='entropy' is not offered: .* MinMax's ranges exactly"):
        check_quantize_options("int8", "entropy", MIN_CALIBRATION_IMAGES)


def test_bias_correction_brings_the_int8_scores_nearer_the_float_scores_on_other_images(
    model_dir, float_folder, calibration, tmp_path
):
    """Each layer's bias moved by the mean error its quantization causes on the calibration images: the INT8 logits
    come nearer the float32 graph's on images it did not calibrate on, and the record says what was done."""
    processor = export_image_processor(model_dir, None)
    unseen = np.stack([processor(image)["pixel_values"][0] for image in random_images(16, seed=5)]).astype(np.float32)
    cache = tmp_path / "ranges.json"  # both graphs from the same ranges: only the bias correction differs
    records, errors = {}, {}
    float_logits = ExportedTagger(float_folder).logits(unseen)
    for corrected in (False, True):
        folder = tmp_path / f"corrected-{corrected}"
        folder.mkdir()
        for path in float_folder.iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        records[corrected] = quantize_graph(
            float_folder / "model.onnx",
            folder / "model.onnx",
            calibration.pixel_values,
            float_operators=(),
            calibration_cache=cache,
            bias_correction=corrected,
        )
        errors[corrected] = np.abs(ExportedTagger(folder).logits(unseen) - float_logits).mean()
    assert errors[True] < 0.8 * errors[False], errors
    assert records[False]["bias_correction"] is None
    assert records[True]["bias_correction"]["images"] == len(calibration.pixel_values)
    assert records[True]["bias_correction"]["layers"] == 22  # every Conv and Gemm (this model's have no bias: added)
    # ONNX Runtime still runs every convolution in integers (the added biases are int32, as its quantizer writes them)
    graph = optimized_graph(
        tmp_path / "corrected-True" / "model.onnx",
        tmp_path / "optimized.onnx",
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
    )
    assert Counter(node.op_type for node in graph.node)["QLinearConv"] == 20
