"""Multi-label metrics in both conventions: against sklearn, against hand-computed cases, and as an evaluate module."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import bootstrap
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from srn_hf import metrics
from srn_hf.metrics import (
    EVALUATE_MODULE_PATH,
    average_precision_voc,
    map_difference,
    multilabel_metrics,
    resampled_map_difference,
)


@pytest.fixture
def random_case():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 6)) < 0.3).astype(int)
    scores = np.clip(0.35 * labels + 0.65 * rng.random((200, 6)), 0, 1)
    return scores, labels


def test_standard_convention_matches_sklearn(random_case):
    scores, labels = random_case
    result = multilabel_metrics(scores, labels)
    predicted = (scores >= 0.5).astype(int)
    cp = precision_score(labels, predicted, average="macro", zero_division=0)
    cr = recall_score(labels, predicted, average="macro", zero_division=0)
    assert result["mAP"] == pytest.approx(100 * average_precision_score(labels, scores, average="macro"))
    assert result["per_class_AP"] == pytest.approx(list(100 * average_precision_score(labels, scores, average=None)))
    assert result["CP"] == pytest.approx(100 * cp)
    assert result["CR"] == pytest.approx(100 * cr)
    assert result["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert result["OP"] == pytest.approx(100 * precision_score(labels, predicted, average="micro"))
    assert result["OR"] == pytest.approx(100 * recall_score(labels, predicted, average="micro"))
    assert result["OF1"] == pytest.approx(100 * f1_score(labels, predicted, average="micro"))
    assert result["classes_without_positives"] == []


def test_paper_convention_per_class_f1_matches_sklearn(random_case):
    scores, labels = random_case
    result = multilabel_metrics(scores, labels, convention="paper")
    predicted = (scores > 0.5).astype(int)
    assert result["CF1"] == pytest.approx(100 * f1_score(labels, predicted, average="macro", zero_division=0))
    assert result["OF1"] == pytest.approx(100 * f1_score(labels, predicted, average="micro"))


# Hand-computed case, 4 images x 3 classes.
#   class 0: scores .9 .8 .7 .6, labels 1 0 1 0 -> predicted (>=.5) all four: P 2/4, R 1
#   class 1: scores .9 .8 .7 .5, labels 0 1 1 0 -> standard predicts all four (.5 >= .5): P 2/4; paper: P 2/3
#   class 2: scores .1 .2 .3 .4, labels 0 0 1 0 -> never predicted: P 0 (standard) / 1 (paper), R 0
HAND_SCORES = np.array([[0.9, 0.9, 0.1], [0.8, 0.8, 0.2], [0.7, 0.7, 0.3], [0.6, 0.5, 0.4]])
HAND_LABELS = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 0]])


def test_hand_computed_standard():
    result = multilabel_metrics(HAND_SCORES, HAND_LABELS)
    # sklearn AP: class 0 ranks 1 0 1 0 -> (1 + 2/3) / 2; class 1 ranks 0 1 1 0 -> (1/2 + 2/3) / 2; class 2: 1/2
    aps = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2, 1 / 2]
    assert result["per_class_AP"] == pytest.approx([100 * ap for ap in aps])
    assert result["mAP"] == pytest.approx(100 * np.mean(aps))
    cp, cr = (0.5 + 0.5 + 0) / 3, (1 + 1 + 0) / 3
    assert result["CP"] == pytest.approx(100 * cp)
    assert result["CR"] == pytest.approx(100 * cr)
    assert result["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    op, orr = 4 / 8, 4 / 5
    assert result["OP"] == pytest.approx(100 * op)
    assert result["OR"] == pytest.approx(100 * orr)
    assert result["OF1"] == pytest.approx(100 * 2 * op * orr / (op + orr))


def test_hand_computed_paper():
    result = multilabel_metrics(HAND_SCORES, HAND_LABELS, convention="paper")
    # VOC envelope AP: class 1 precisions at the hits 1/2 and 2/3, envelope 2/3 at both recall steps
    aps = [(1 + 2 / 3) / 2, 2 / 3, 1 / 2]
    assert result["per_class_AP"] == pytest.approx([100 * ap for ap in aps])
    precision = [2 / 4, 2 / 3, 1.0]  # class 1: the 0.5 score is not > 0.5; class 2 never predicted
    recall = [1, 1, 0]
    f1 = [2 * p * r / (p + r) if p + r else 0 for p, r in zip(precision, recall)]
    assert result["CP"] == pytest.approx(100 * np.mean(precision))
    assert result["CR"] == pytest.approx(100 * np.mean(recall))
    assert result["CF1"] == pytest.approx(100 * np.mean(f1))
    assert result["OP"] == pytest.approx(100 * 4 / 7)
    assert result["OR"] == pytest.approx(100 * 4 / 5)


def test_voc_ap_envelope_and_ties_in_given_order():
    assert average_precision_voc(np.array([0.9, 0.8, 0.7]), np.array([False, True, True])) == pytest.approx(2 / 3)
    assert average_precision_score([0, 1, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    tie = np.array([0.5, 0.5])
    assert average_precision_voc(tie, np.array([False, True])) == pytest.approx(0.5)
    assert average_precision_voc(tie, np.array([True, False])) == pytest.approx(1.0)
    assert average_precision_score([1, 0], tie) == pytest.approx(0.5)  # sklearn groups ties


def test_top_k_predicts_the_k_best_scores_above_threshold():
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.1, 0.2, 0.3]])
    labels = np.array([[0, 1, 1, 1], [1, 0, 0, 1]])
    result = multilabel_metrics(scores, labels, top_k=3)
    # image 0 predicts classes 0, 1, 2 (class 3 is 4th); image 1 predicts only class 0 (others below 0.5)
    assert result["OP"] == pytest.approx(100 * 3 / 4)
    assert result["OR"] == pytest.approx(100 * 3 / 5)
    assert result["CR"] == pytest.approx(100 * np.mean([1, 1, 1, 0]))
    without_top_k = multilabel_metrics(scores, labels)
    assert without_top_k["OR"] == pytest.approx(100 * 4 / 5)  # class 3 of image 0 counts again
    assert result["mAP"] == without_top_k["mAP"]  # ranking figures ignore top_k


def test_class_without_positives_is_reported_and_left_out():
    scores = np.array([[0.9, 0.8], [0.2, 0.7]])
    labels = np.array([[1, 0], [0, 0]])
    with pytest.warns(UserWarning, match=r"1 class\(es\) without any positive image .*\[1\]"):
        result = multilabel_metrics(scores, labels)
    assert result["classes_without_positives"] == [1]
    assert result["per_class_AP"] == [100.0, None]
    assert result["mAP"] == 100.0 and result["CP"] == 100.0 and result["CR"] == 100.0
    assert result["OP"] == pytest.approx(100 / 3)  # its two false positives still count overall
    values = [v for v in result.values() if isinstance(v, float)]
    assert not any(np.isnan(values))


def test_no_positive_at_all_gives_none_not_nan():
    with pytest.warns(UserWarning):
        result = multilabel_metrics(np.full((3, 2), 0.2), np.zeros((3, 2)), convention="paper")
    assert result["mAP"] is None and result["CF1"] is None and result["OR"] is None
    assert result["OP"] == 100.0  # paper convention: nothing predicted, precision 1


def test_torch_inputs_and_shape_errors(random_case):
    scores, labels = random_case
    expected = multilabel_metrics(scores, labels, convention="paper", top_k=3)
    tensors = multilabel_metrics(torch.tensor(scores), torch.tensor(labels, dtype=torch.bool), 0.5, "paper", 3)
    assert tensors["mAP"] == pytest.approx(expected["mAP"])
    assert tensors["OF1"] == pytest.approx(expected["OF1"])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        multilabel_metrics(scores[:, 0], labels[:, 0])
    with pytest.raises(ValueError, match="convention"):
        multilabel_metrics(scores, labels, convention="coco")


def test_evaluate_module_loads_offline(random_case, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    metric = evaluate.load(EVALUATE_MODULE_PATH, cache_dir=str(tmp_path))
    scores, labels = random_case
    for start in range(0, 200, 50):
        metric.add_batch(predictions=scores[start : start + 50].tolist(), references=labels[start : start + 50])
    result = metric.compute(convention="paper", top_k=3)
    expected = multilabel_metrics(scores.astype(np.float32), labels, convention="paper", top_k=3)
    assert result["mAP"] == pytest.approx(expected["mAP"])
    assert result["CF1"] == pytest.approx(expected["CF1"])
    assert result["per_class_AP"] == pytest.approx(expected["per_class_AP"])


@pytest.mark.parametrize("convention", ["standard", "paper"])
def test_map_difference_is_the_mAP_gain_with_a_paired_bootstrap_interval(convention):
    rng = np.random.default_rng(0)
    labels = rng.random((400, 5)) < 0.3
    weaker = labels + rng.normal(0, 0.9, labels.shape)
    stronger = labels + rng.normal(0, 0.5, labels.shape)
    gain = map_difference(weaker, stronger, labels, convention=convention, n_resamples=200)
    expected = (
        multilabel_metrics(stronger, labels, convention=convention)["mAP"]
        - multilabel_metrics(weaker, labels, convention=convention)["mAP"]
    )
    assert gain["difference"] == pytest.approx(expected)
    assert 0 < gain["low"] < gain["difference"] < gain["high"]  # a clear gain: the interval excludes 0
    assert gain["images"] == 400 and gain["n_resamples"] == 200

    same = map_difference(weaker, weaker, labels, n_resamples=50)
    assert same["difference"] == same["low"] == same["high"] == 0
    noise = map_difference(weaker, weaker + rng.normal(0, 0.05, labels.shape), labels, n_resamples=200)
    assert noise["low"] < 0 < noise["high"]  # near-equal predictions: the interval straddles 0
    with pytest.raises(ValueError, match="one shape"):
        map_difference(weaker, stronger[:, :4], labels)


def test_map_difference_standard_equals_sklearn_on_every_resample(monkeypatch):
    """The vectorised interval is the one of sklearn's AP computed on each resample's rows, one resample at a time."""
    rng = np.random.default_rng(1)
    images, n_resamples = 300, 300
    labels = rng.random((images, 6)) < np.array([0.3, 0.2, 0.5, 0.1, 0.02, 0.0])
    labels[[10, 200], 5] = True  # the last class has 2 positives
    scores_a = np.round(np.clip(0.3 * labels + 0.7 * rng.random(labels.shape), 0, 1), 2)  # rounded: many ties
    scores_b = np.round(np.clip(0.4 * labels + 0.6 * rng.random(labels.shape), 0, 1), 2)
    draws = np.random.default_rng(0).integers(0, images, (n_resamples, images))  # scipy's draws for rng seed 0
    assert not labels[draws, 5].any(axis=1).all()  # some resamples have no positive of the last class

    one_at_a_time = partial(resampled_map_difference, scores_a, scores_b, labels, convention="standard")
    reference = bootstrap(
        (np.arange(images),),
        one_at_a_time,
        vectorized=False,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    expected = [one_at_a_time(np.arange(images)), reference.low, reference.high]
    monkeypatch.setattr(metrics, "BOOTSTRAP_BATCH_ELEMENTS", 7 * images)  # batches of 7 resamples: same draws
    for _ in range(2):  # deterministic for a seed
        gain = map_difference(scores_a, scores_b, labels, n_resamples=n_resamples, seed=0)
        assert [gain["difference"], gain["low"], gain["high"]] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    other_seed = map_difference(scores_a, scores_b, labels, n_resamples=n_resamples, seed=1)
    assert other_seed["difference"] == gain["difference"] and other_seed["low"] != gain["low"]
    with pytest.raises(ValueError, match="convention"):
        map_difference(scores_a, scores_b, labels, convention="voc")
    scores_b[3, 2] = np.nan
    with pytest.raises(ValueError, match="scores_b holds 1 NaN"):
        map_difference(scores_a, scores_b, labels)


def test_quick_metrics_benchmark_writes_its_results(tmp_path):
    benchmark = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark_metrics.py"
    command = [sys.executable, str(benchmark), "--quick", "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "metrics.json").read_text())
    for case in (report["small"], report["large"]):
        assert set(case["seconds"]) == {"map_difference", "per-resample loop"}
        assert case["largest gap (mAP points)"] < 1e-9  # the same resamples give the same interval
    assert report["large_full"]["map_difference peak MiB"] > 0
    assert "| per-resample loop (s) |" in (tmp_path / "metrics.md").read_text()
