"""Multi-label classification metrics (mAP, CP, CR, CF1, OP, OR, OF1, top-k) as an `evaluate` module.

Load it offline from the installed package:

    import evaluate
    from srn_hf.metrics import EVALUATE_MODULE_PATH
    metric = evaluate.load(EVALUATE_MODULE_PATH)
    metric.compute(predictions=probabilities, references=multi_hot_labels, threshold=0.5, convention="paper")

The computation is `srn_hf.metrics.multilabel_metrics`; see its docstring for the two conventions.
"""

import datasets
import evaluate
import numpy as np

from srn_hf.metrics import multilabel_metrics

_CITATION = """\
@inproceedings{zhu2017learning,
  title={Learning Spatial Regularization with Image-level Supervisions for Multi-label Image Classification},
  author={Zhu, Feng and Li, Hongsheng and Ouyang, Wanli and Yu, Nenghai and Wang, Xiaogang},
  booktitle={CVPR},
  year={2017}
}
"""

_DESCRIPTION = """\
Multi-label image classification metrics in percent: mAP (mean over classes of average precision), the
per-class averages CP, CR, CF1 and the overall (micro) OP, OR, OF1 at a probability threshold, optionally
restricted to each image's top-k scores. Two conventions: "standard" (ML-GCN / ASL code) and "paper" (the
official SRN evaluation script). Classes without positives are left out of the class means and listed.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per image, the C class probabilities (sequence of floats).
    references: per image, the C multi-hot labels (sequence of 0/1 integers).
    threshold: probability threshold for a positive prediction (default 0.5).
    convention: "standard" (default) or "paper".
    top_k: if set, each image predicts at most its k highest-scoring classes.
    label_names: the C class names: the warning about classes without positives names them.
Returns:
    mAP, CP, CR, CF1, OP, OR, OF1 (percent), per_class_AP (list, None for a class without positives),
    classes_without_positives (class indices).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultilabelMetric(evaluate.Metric):
    """mAP, CP, CR, CF1, OP, OR, OF1 of multi-label predictions, computed by `srn_hf.metrics`."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            ),
        )

    def _compute(self, predictions, references, threshold=0.5, convention="standard", top_k=None, label_names=None):
        return multilabel_metrics(
            np.asarray(predictions),
            np.asarray(references),
            threshold=threshold,
            convention=convention,
            top_k=top_k,
            label_names=label_names,
        )
