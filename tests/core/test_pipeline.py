"""The image processor saved beside a model, the stock image-classification pipeline on an SRN folder, and the
multi-label pipeline: thresholds (global, per label, from the config, per call), top_k, batches, folders, attention
maps at image resolution, the fast path."""

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from helpers import save_with_processor, save_with_weight_value, small_srn
from PIL import Image
from transformers import AutoImageProcessor, pipeline
from transformers.pipelines.pt_utils import KeyDataset

import srn_hf
from srn_hf.images import ImageError
from srn_hf.pipeline_srn import MultiLabelImageClassificationPipeline
from srn_hf.processing import backbone_data_config

LABELS = {0: "cat", 1: "dog", 2: "car", 3: "boat"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A small random SRN whose fused logits are spread out by hand (biases), saved with its image processor."""
    model = small_srn(LABELS, threshold=0.4, label_thresholds={"cat": 0.99})
    with torch.no_grad():
        model.srn.classifier.bias.copy_(torch.tensor([6.0, 2.0, -0.5, -6.0]))
    return Path(save_with_processor(model, tmp_path_factory.mktemp("srn")))


@pytest.fixture(scope="module")
def tagger(model_folder):
    return pipeline("multi-label-image-classification", model=str(model_folder))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48 + 8 * index, 64, 3), dtype=np.uint8)) for index in range(3)]


def reference_scores(tagger, image):
    """Sigmoid of the fused logits y, computed by hand from the processor and the model."""
    pixel_values = tagger.image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = tagger.model(pixel_values=pixel_values)
    return torch.sigmoid(outputs.logits[0]).numpy(), outputs.attention_maps[0]


def test_image_processor_loads_through_auto_class(model_folder):
    processor = AutoImageProcessor.from_pretrained(model_folder)
    expected = backbone_data_config(srn_hf.SRNConfig(backbone="resnet10t"))
    assert processor.size == {"height": 224, "width": 224}
    assert tuple(processor.image_mean) == pytest.approx(expected["mean"])
    assert tuple(processor.image_std) == pytest.approx(expected["std"])
    wide = Image.new("RGB", (300, 90))
    assert processor(images=wide, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)  # warped, not cropped


def test_stock_pipeline_gives_sigmoid_scores(model_folder, tagger, images):
    classifier = pipeline("image-classification", model=str(model_folder))
    results = classifier(images[0], top_k=4)
    scores, _ = reference_scores(tagger, images[0])
    by_label = {item["label"]: item["score"] for item in results}
    assert by_label == pytest.approx({LABELS[index]: float(score) for index, score in enumerate(scores)}, abs=1e-5)
    assert sum(by_label.values()) > 1.2  # independent probabilities, not a softmax


def test_registered_task(tagger):
    assert isinstance(tagger, MultiLabelImageClassificationPipeline)


def test_config_thresholds_and_call_overrides(tagger, images):
    scores, _ = reference_scores(tagger, images[0])

    def expected(thresholds):
        return [LABELS[index] for index in np.argsort(-scores) if scores[index] > thresholds[index]]

    def labels(**kwargs):
        return [item["label"] for item in tagger(images[0], **kwargs)]

    assert 0.4 < scores[0] < 0.99 and scores[1] > 0.4 and scores[3] < 0.4  # what the fixture's biases aim for
    config_thresholds = np.array([0.99, 0.4, 0.4, 0.4])  # cat from label_thresholds, the rest from threshold
    assert tagger.thresholds().tolist() == config_thresholds.tolist()
    assert labels() == expected(config_thresholds)
    assert "cat" not in labels() and "dog" in labels()  # cat is above the global threshold, not above its own
    assert labels(threshold=0.2) == expected(np.full(4, 0.2))  # one value for every label, config's per-label gone
    assert labels(label_thresholds={"dog": 0.99}) == expected(np.array([0.99, 0.99, 0.4, 0.4]))
    assert labels(threshold=0.0, label_thresholds={"boat": 1.0}) == expected(np.array([0.0, 0.0, 0.0, 1.0]))
    assert len(labels(threshold=0.0)) == 4
    assert labels(threshold=0.0, top_k=2) == expected(np.zeros(4))[:2]
    results = tagger(images[0], threshold=0.0)
    assert [item["score"] for item in results] == sorted((item["score"] for item in results), reverse=True)


def test_bad_arguments_fail_before_running(tagger, images):
    with pytest.raises(ValueError, match=r"labels the model does not have: \['cow'\]"):
        tagger(images[0], label_thresholds={"cow": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tagger(images[0], threshold=1.5)
    with pytest.raises(ValueError, match="top_k=0"):
        tagger(images[0], top_k=0)


def test_list_is_batched_in_order(tagger, images):
    one_by_one = [tagger(image, threshold=0.0) for image in images]
    batched = tagger(images, batch_size=2, threshold=0.0)
    assert len(batched) == len(images)
    for single, batch in zip(one_by_one, batched):
        assert [item["label"] for item in single] == [item["label"] for item in batch]
        assert [item["score"] for item in single] == pytest.approx([item["score"] for item in batch], abs=1e-5)
    assert tagger([], threshold=0.0) == []


def test_folder_gives_results_by_path(tagger, images, tmp_path):
    (tmp_path / "nested").mkdir()
    paths = [tmp_path / "b.png", tmp_path / "nested" / "a.jpg", tmp_path / "c.png"]
    for image, path in zip(images, paths):
        image.save(path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    results = tagger(tmp_path, batch_size=2, threshold=0.0)
    assert list(results) == sorted(str(path) for path in [*paths, tmp_path / "broken.png"])
    assert isinstance(results[str(tmp_path / "broken.png")], ImageError)
    for path in paths:
        expected, _ = reference_scores(tagger, Image.open(path).convert("RGB"))
        assert max(item["score"] for item in results[str(path)]) == pytest.approx(float(expected.max()), abs=1e-5)
    with pytest.raises(ValueError, match="is a folder"):
        tagger([str(paths[0]), str(tmp_path / "nested")])


def test_attention_maps_at_image_resolution_per_label(tagger, images):
    image = images[2].resize((90, 40))  # non-square: a transposed map would not fit
    scores, attention_maps = reference_scores(tagger, image)
    results = tagger(image, threshold=0.0, return_attention_maps=True)
    for item in results:
        index = tagger.model.config.label2id[item["label"]]
        attention_map = item["attention_map"]
        assert attention_map.shape == (40, 90) and attention_map.dtype == np.float32
        assert attention_map.sum() == pytest.approx(1.0, abs=1e-4)
        expected = nnf.interpolate(attention_maps[index][None, None], size=(40, 90), mode="bilinear")[0, 0].numpy()
        np.testing.assert_allclose(attention_map, expected / expected.sum(), rtol=1e-4, atol=1e-8)
    assert "attention_map" not in tagger(image, threshold=0.0)[0]


def test_fast_path_is_close_to_float32(model_folder, images):
    tagger = pipeline("multi-label-image-classification", model=str(model_folder))
    exact = tagger(images, threshold=0.0, batch_size=3)
    fast = tagger(images, threshold=0.0, batch_size=3, fast=True)
    for exact_labels, fast_labels in zip(exact, fast):
        exact_scores = {item["label"]: item["score"] for item in exact_labels}
        assert {item["label"]: item["score"] for item in fast_labels} == pytest.approx(exact_scores, abs=0.03)
    assert next(tagger.model.parameters()).dtype == torch.float32


def test_dataset_is_streamed_in_order(tagger, images):
    dataset = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    streamed = tagger(KeyDataset(dataset, "image"), batch_size=2, threshold=0.0)
    assert not isinstance(streamed, list)  # an iterator: a large dataset is never held in memory
    for image, labels in zip(images, streamed, strict=True):
        expected, _ = reference_scores(tagger, image)
        assert max(item["score"] for item in labels) == pytest.approx(float(expected.max()), abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Non-finite weights or scores: an error naming the model, never NaN scores and no labels


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_construction_naming_the_model(tmp_path, value):
    folder = save_with_weight_value(small_srn(LABELS), tmp_path, "srn.confidence.conv.weight", value)
    with pytest.raises(ValueError) as refused:
        pipeline("multi-label-image-classification", model=folder)
    assert str(refused.value) == (
        f"model {folder} has non-finite weights (NaN or inf) in srn.confidence.conv.weight: its scores would be NaN "
        "(a training run that diverged?)"
    )


def test_non_finite_scores_are_refused_naming_the_model(tmp_path, tagger, images):
    nan_pixels = np.full((32, 32, 3), np.nan, np.float32)  # decoded pixels holding NaN, with finite weights
    with pytest.raises(ValueError, match=rf"^model {tagger.model.name_or_path} gave non-finite scores \(4 of 4 logits"):
        tagger(nan_pixels)
    assert len(tagger(images[0], threshold=0.0)) == len(LABELS)  # the same pipeline still predicts a good image
    # Finite weights whose logits overflow to inf (f_cls's weights near float32's largest value).
    folder = save_with_weight_value(small_srn(LABELS), tmp_path, "srn.classifier.weight", 3e38)
    overflowing = pipeline("multi-label-image-classification", model=folder)
    with pytest.raises(ValueError, match=rf"^model {folder} gave non-finite scores \(4 of 4 logits are NaN or inf\)"):
        overflowing(images[0])


# ---------------------------------------------------------------------------------------------------------------
# The base model in the zoo's image-feature-extraction pipeline: the backbone's features, as any vision model's


def test_image_feature_extraction_gives_the_backbone_features_pooled_or_not(model_folder, images):
    extractor = pipeline("image-feature-extraction", model=str(model_folder))
    srn = extractor.model
    assert type(srn) is srn_hf.SRNModel  # AutoModel: the base model
    features = extractor(images[0], return_tensors=True)
    pooled = extractor(images[0], pool=True, return_tensors=True)
    pixel_values = extractor.image_processor(images=images[0], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        _, classifier_features = srn.forward_backbone(pixel_values)  # F, the map f_cls pools
        outputs = srn(pixel_values)
    channels = srn.backbone.feature_info.channels()[-1]
    assert features.shape == (1, channels, 7, 7) and pooled.shape == (1, channels)  # resnet10t's last stage at 224
    torch.testing.assert_close(features, classifier_features)
    torch.testing.assert_close(pooled, classifier_features.mean(dim=(2, 3)))
    torch.testing.assert_close(srn.classifier(pooled), outputs.cls_logits)  # the embedding f_cls reads
    as_lists = extractor(images, pool=True)  # the pipeline's default output: lists, one per image
    assert len(as_lists) == len(images) and [len(row[0]) for row in as_lists] == [channels] * len(images)
