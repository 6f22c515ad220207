"""`srn_hf.thresholds`: per-label and global thresholds tuned on validation scores."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_with_processor, small_srn
from sklearn.metrics import precision_recall_curve
from transformers import pipeline

import srn_hf
from srn_hf.metrics import multilabel_metrics
from srn_hf.thresholds import calibrate_thresholds, thresholded_metrics

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def noisy_scores(images=120, labels=5, seed=0, decimals=2):
    """Scores higher for positives, rounded so that many images share a score (ties)."""
    rng = np.random.default_rng(seed)
    truth = rng.random((images, labels)) < np.linspace(0.4, 0.1, labels)
    scores = np.clip(0.55 * rng.random((images, labels)) + 0.35 * truth, 0, 1)
    return np.round(scores, decimals), truth.astype(np.int64)


def exhaustive_threshold(scores, positives, precision_target=None):
    """Every candidate threshold tried one by one, highest first: a midpoint between two distinct scores, or half
    the lowest score. F1: the best F1, the first (highest) threshold among equals. Precision P: among thresholds
    with precision >= P, the highest recall, then the fewest predictions."""
    distinct = np.unique(scores)[::-1]
    candidates = [(high + low) / 2 for high, low in zip(distinct[:-1], distinct[1:])] + [distinct[-1] / 2]
    best, best_key = None, None
    for threshold in candidates:
        predicted = scores > threshold
        true_positives, count = int((predicted & positives).sum()), int(predicted.sum())
        if precision_target is None:
            key = (2 * true_positives / (count + positives.sum()),)
        elif true_positives >= precision_target * count - 1e-9:
            key = (true_positives, -count)
        else:
            continue
        if best_key is None or key > best_key:
            best, best_key = threshold, key
    return best


def test_thresholds_equal_an_exhaustive_search():
    scores, labels = noisy_scores()
    calibration = calibrate_thresholds(scores, labels, min_positives=1)
    positives = labels.astype(bool)
    for label in range(scores.shape[1]):
        assert calibration.thresholds[label] == exhaustive_threshold(scores[:, label], positives[:, label])
    assert calibration.threshold == exhaustive_threshold(scores.ravel(), positives.ravel())  # the OF1 optimum
    # The reported F1 is the label's F1 at its threshold, and the best sklearn's precision-recall curve finds.
    for label in range(scores.shape[1]):
        precision, recall, _ = precision_recall_curve(labels[:, label], scores[:, label])
        assert calibration.f1[label] == pytest.approx(
            np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
        )


def test_precision_criterion_equals_an_exhaustive_search():
    scores, labels = noisy_scores(seed=1)
    calibration = calibrate_thresholds(scores, labels, criterion="precision:0.8", min_positives=1)
    positives = labels.astype(bool)
    for label in range(scores.shape[1]):
        assert calibration.thresholds[label] == exhaustive_threshold(scores[:, label], positives[:, label], 0.8)
        assert calibration.precision[label] >= 0.8
    assert calibration.threshold == exhaustive_threshold(scores.ravel(), positives.ravel(), 0.8)


def test_labels_without_enough_positives_fall_back_to_the_global_threshold_and_are_named():
    scores, labels = noisy_scores(labels=4)
    labels[:, 2] = 0  # no validation positive
    labels[:, 3] = 0
    labels[:3, 3] = 1  # three positives, fewer than min_positives=5
    calibration = calibrate_thresholds(scores, labels, ["cat", "dog", "car", "cow"], min_positives=5)
    assert sorted(calibration.fallback_labels) == ["car", "cow"]
    assert "0 positive image(s) in validation" in calibration.fallback_labels["car"]
    assert "3 positive image(s)" in calibration.fallback_labels["cow"]
    assert calibration.thresholds[2] == calibration.thresholds[3] == calibration.threshold
    assert set(calibration.label_thresholds) == {"cat", "dog"}  # the others use `threshold`
    table = calibration.table()
    assert "car *" in table and "* car: global threshold" in table and "* cow: global threshold" in table
    assert calibration.provenance()["fallback_labels"] == ["car", "cow"]


def test_a_precision_never_reached_is_named():
    scores, labels = noisy_scores(labels=2)
    labels[:, 1] = 0
    labels[np.argsort(scores[:, 1])[:10], 1] = 1  # the positives of label 1 have its lowest scores
    calibration = calibrate_thresholds(scores, labels, ["a", "b"], criterion="precision:0.9")
    assert calibration.fallback_labels == {"b": "precision 0.9 is never reached"}


def test_same_predictions_with_either_comparison_and_deterministic():
    scores, labels = noisy_scores(images=200, decimals=3)
    calibration = calibrate_thresholds(scores, labels)
    # Midpoints between scores: `score > t` (pipeline) and `score >= t` (srn_hf.metrics) agree on this data.
    assert np.array_equal(scores > calibration.thresholds, scores >= calibration.thresholds)
    again = calibrate_thresholds(scores.copy(), labels.copy())
    assert np.array_equal(again.thresholds, calibration.thresholds) and again.threshold == calibration.threshold
    # The image order does not matter (scores with ties included).
    order = np.random.default_rng(3).permutation(len(scores))
    shuffled = calibrate_thresholds(scores[order], labels[order])
    assert np.array_equal(shuffled.thresholds, calibration.thresholds)
    # Torch tensors (a model's float32 output) give what their numpy values give.
    float32 = scores.astype(np.float32)
    from_torch = calibrate_thresholds(torch.from_numpy(float32), torch.from_numpy(labels))
    assert np.array_equal(from_torch.thresholds, calibrate_thresholds(float32, labels).thresholds)


def test_calibrated_thresholds_beat_one_global_value_on_the_data_they_were_tuned_on():
    scores, labels = noisy_scores(images=400)
    calibration = calibrate_thresholds(scores, labels)
    at_half = multilabel_metrics(scores, labels, threshold=0.5)
    figures = thresholded_metrics(scores, labels, calibration)
    assert figures["default"]["OF1"] == pytest.approx(at_half["OF1"])
    # Per label, the tuned F1 is the best: at least the F1 at 0.5 of each label.
    predicted = scores >= 0.5
    tp = (predicted & (labels == 1)).sum(axis=0)
    f1_at_half = 2 * tp / (predicted.sum(axis=0) + labels.sum(axis=0))
    assert np.all(calibration.f1 >= f1_at_half - 1e-12) and np.any(calibration.f1 > f1_at_half)
    # The global threshold maximises OF1: no other single threshold does better.
    best_of1 = multilabel_metrics(scores, labels, threshold=calibration.threshold)["OF1"]
    for threshold in np.linspace(0.05, 0.95, 37):
        assert multilabel_metrics(scores, labels, threshold=float(threshold))["OF1"] <= best_of1 + 1e-9


@pytest.mark.parametrize(
    ("scores", "labels", "kwargs", "message"),
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), {}, "(4, 3) and (4, 2)"),
        (np.zeros((4, 2)), np.array([[0, 1], [1, 0], [0.5, 1], [0, 0]]), {}, "found 0.5 at image 2, label 0"),
        (np.zeros((4, 2)), np.array([[0, 2], [1, 0], [0, 1], [0, 0]]), {}, "found 2.0 at image 0, label 1"),
        (np.array([[0.1, 3.2], [0.5, 0.2]]), np.eye(2), {}, "found 3.2 at image 0, label 1: pass torch.sigmoid"),
        (np.array([[0.1, np.nan], [0.5, 0.2]]), np.eye(2), {}, "found nan at image 0, label 1"),
        (np.full((2, 2), 0.5), np.eye(2), {"label_names": ["a"]}, "1 label names for 2 score columns"),
        (np.full((2, 2), 0.5), np.eye(2), {"criterion": "precision:1.5"}, "'precision:1.5' is neither"),
        (np.full((2, 2), 0.5), np.eye(2), {"criterion": "recall"}, "'recall' is neither"),
        (np.full((2, 2), 0.5), np.eye(2), {"split": "test"}, "never on the test split"),
        (np.full((2, 2), 0.5), np.zeros((2, 2)), {}, "hold no positive"),
    ],
)
def test_bad_input_is_refused_naming_the_value(scores, labels, kwargs, message):
    with pytest.raises(ValueError) as error:
        calibrate_thresholds(scores, labels, **kwargs)
    assert message in str(error.value)


def test_apply_to_a_config_round_trips_through_save_and_the_pipeline(tmp_path):
    labels = {0: "cat", 1: "dog", 2: "car"}
    model = small_srn(labels, image_size=64)
    scores, truth = noisy_scores(labels=3)
    truth[:, 2] = 0
    calibration = calibrate_thresholds(scores, truth, ["cat", "dog", "car"])
    calibration.apply_to(model.config)
    folder = save_with_processor(model, tmp_path / "model")
    loaded = srn_hf.SRNForImageClassification.from_pretrained(folder)
    assert loaded.config.label_thresholds == calibration.label_thresholds
    assert loaded.config.threshold == calibration.threshold
    assert loaded.config.threshold_calibration["fallback_labels"] == ["car"]
    tagger = pipeline(srn_hf.PIPELINE_TASK, model=folder)
    assert np.array_equal(tagger.thresholds(), calibration.thresholds)  # the pipeline's default thresholds

    other = small_srn({0: "cat", 1: "dog", 2: "cow"})
    with pytest.raises(ValueError, match=r"only in the calibration: \['car'\]; only in the config: \['cow'\]"):
        calibration.apply_to(other.config)


def test_quick_benchmark_writes_its_results(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "benchmark_thresholds.py"), "--quick", "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "thresholds.json").read_text())
    assert set(report["seconds"]) == {"calibrate_thresholds", "precision_recall_curve loop", "0.01 grid"}
    assert all(value > 0 for value in report["seconds"].values())
    # The baselines that search exactly find the same optimum; the grid can only lose F1.
    assert report["checks"]["max |F1 - precision_recall_curve F1| over labels"] < 1e-9
    assert report["exhaustive"]["max |F1 - exhaustive F1| over labels"] < 1e-9
    assert report["checks"]["mean F1 lost by the 0.01 grid (points)"] >= 0
    assert "| calibrate_thresholds |" in (tmp_path / "thresholds.md").read_text()


def test_to_dict_and_back():
    scores, labels = noisy_scores(labels=3)
    labels[:, 1] = 0
    calibration = calibrate_thresholds(scores, labels, ["a", "b", "c"], dataset="toy")
    restored = type(calibration).from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert restored.config_fields() == calibration.config_fields() and restored.table() == calibration.table()
    assert (
        np.array_equal(restored.thresholds, calibration.thresholds)
        and restored.fallback_labels == calibration.fallback_labels
    )


def test_stage_records_report_both_thresholds_and_the_gain_over_stage_1():
    from srn_hf.report import calibrated_gain, threshold_table
    from srn_hf.thresholds import calibrate_stage

    validation, validation_labels = noisy_scores(images=200, labels=4, seed=5)
    test, test_labels = noisy_scores(images=200, labels=4, seed=6)
    names = ["a", "b", "c", "d"]
    records = []
    for stage, prediction, scale in ((1, "cls_logits", 0.6), (4, "logits", 1.0)):
        calibration, entries = calibrate_stage(validation * scale, validation_labels, test * scale, test_labels, names)
        # Tuned on validation only: the same thresholds whatever the test split holds.
        assert np.array_equal(
            calibration.thresholds, calibrate_thresholds(validation * scale, validation_labels, names).thresholds
        )
        assert entries["test_calibrated"] == {
            key: multilabel_metrics(test * scale, test_labels, threshold=calibration.thresholds)[key]
            for key in entries["test_calibrated"]
        }
        records.append(
            {"stage": stage, "prediction": prediction, "test": multilabel_metrics(test * scale, test_labels), **entries}
        )
    gain = calibrated_gain(records)
    assert gain["calibrated"]["OF1"] == pytest.approx(
        records[1]["test_calibrated"]["OF1"] - records[0]["test_calibrated"]["OF1"]
    )
    assert gain["at_0.5"]["CF1"] == pytest.approx(records[1]["test"]["CF1"] - records[0]["test"]["CF1"])
    # Scores scaled down sit mostly below 0.5: at 0.5 stage 1 looks far worse than it ranks; tuned, it recovers.
    assert records[0]["test_calibrated"]["OF1"] > records[0]["test"]["OF1"] + 10
    table = threshold_table(records).splitlines()
    assert len(table) == 3 + 4 and table[3].startswith("1     y_cls") and table[4].endswith("tuned")


# --- a checkpoint loaded for another label set -------------------------------------------------------------------

TUNED = {
    "threshold": 0.253,
    "label_thresholds": {"cat": 0.61, "dog": 0.12},
    "threshold_calibration": {
        "criterion": "f1",
        "split": "validation",
        "dataset": None,
        "images": 40,
        "min_positives": 3,
        "fallback_labels": [],
    },
}


@pytest.mark.parametrize("new_labels", [{"id2label": {0: "car", 1: "bus", 2: "tram"}}, {"num_labels": 3}])
def test_a_new_label_set_starts_from_untuned_thresholds(tmp_path, new_labels, hub_calls):
    """`from_pretrained(..., id2label=new or num_labels=N, ignore_mismatched_sizes=True)` drops the tuned thresholds
    of the old labels (config, card, pipeline), and the model saves and pushes afterwards."""
    from srn_hf.hub import thresholds_description

    folder = save_with_processor(small_srn({0: "cat", 1: "dog"}, **TUNED), tmp_path / "tuned")
    model = srn_hf.SRNForImageClassification.from_pretrained(folder, ignore_mismatched_sizes=True, **new_labels)
    config = model.config
    assert (config.threshold, config.label_thresholds) == (0.5, None)
    assert "the label set changed (2 labels: cat, dog" in config.threshold_calibration["reset"]
    assert thresholds_description(config).startswith("The decision threshold is the default, 0.5 for every label")
    saved = save_with_processor(model, tmp_path / "new")
    reloaded = json.loads((tmp_path / "new" / "config.json").read_text())
    assert reloaded["threshold"] == 0.5 and reloaded["label_thresholds"] is None
    tagger = pipeline("multi-label-image-classification", model=saved)
    np.testing.assert_array_equal(tagger.thresholds(), [0.5, 0.5, 0.5])
    model.push_to_hub("org/srn-new-labels", token="hf_test")
    (commit,) = [call for call in hub_calls if call[0] == "create_commit"]
    assert json.loads(commit[3]["config.json"])["threshold_calibration"] == config.threshold_calibration
    assert {"model.safetensors", "pipeline_srn.py"} <= set(commit[3])
    unchanged = srn_hf.SRNForImageClassification.from_pretrained(folder)  # the same labels keep their thresholds
    assert (unchanged.config.threshold, unchanged.config.label_thresholds) == (0.253, TUNED["label_thresholds"])
