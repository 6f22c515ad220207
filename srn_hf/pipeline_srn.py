"""The multi-label image classification pipeline: every label above its threshold, with attention maps on request.

Registered by `import srn_hf` under the task name `"multi-label-image-classification"`:

```python
>>> import srn_hf
>>> from transformers import pipeline
>>> tagger = pipeline("multi-label-image-classification", model="path/to/srn-model")
>>> tagger("street.jpg")                                # labels whose sigmoid score > threshold, best first
[{'label': 'person', 'score': 0.97}, {'label': 'car', 'score': 0.81}, {'label': 'traffic light', 'score': 0.64}]
>>> tagger("street.jpg", threshold=0.3, label_thresholds={"car": 0.9}, top_k=2)
>>> tagger(["a.jpg", "b.png"], batch_size=8)           # one list of labels per image, in order
>>> tagger("photos/", batch_size=8)                     # a folder: {file path: labels}, sorted by path
>>> tagger("street.jpg", return_attention_maps=True)    # adds each label's attention map at image resolution
```

It is transformers' `ImageClassificationPipeline` (same image processor, batching, `device`, `dtype`) with three
changes: scores are always sigmoid probabilities, the output keeps every label above a threshold instead of a
fixed top 5, and images are opened with [`srn_hf.images.open_image`] (grayscale, RGBA, CMYK, 16-bit, EXIF
rotation, decompression-bomb guard). It works for any multi-label `AutoModelForImageClassification`; attention
maps need an SRN.
"""

import itertools
import os

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from transformers.image_utils import get_image_size, load_image, to_numpy_array
from transformers.pipelines import ImageClassificationPipeline
from transformers.utils import logging

from .configuration_srn import PIPELINE_TASK, config_label_names
from .fast import autocast_context, use_channels_last
from .images import ImageError, list_image_files, open_image

logger = logging.get_logger(__name__)

TASK = PIPELINE_TASK  # the task name, also in every saved config's custom_pipelines


class MultiLabelImageClassificationPipeline(ImageClassificationPipeline):
    r"""
    Multi-label image classification: each image gets every label whose sigmoid score exceeds its threshold.

    Thresholds: label `c` is predicted when `sigmoid(y_c) > threshold_c`, where `threshold_c` is, in order of
    precedence, `label_thresholds[c]` of the call, `threshold` of the call (one value for every label), the model
    config's `label_thresholds[c]`, the config's `threshold` (0.5 by default). See [`thresholds`].

    Call arguments (also accepted by `pipeline(...)` as defaults for every call):
        threshold (`float`, *optional*): one threshold for every label, replacing the config's.
        label_thresholds (`dict[str, float]`, *optional*): per-label thresholds, by label name.
        top_k (`int`, *optional*): keep at most the `top_k` best labels above the thresholds (the paper's top-3).
        return_attention_maps (`bool`, defaults to `False`): add to each predicted label its attention map A, upsampled
            (bilinear) to the image's height x width, as a float32 numpy array summing to 1 (an SRN model only).
        fast (`bool`, defaults to `False`): bf16 autocast and channels-last weights ([`srn_hf.fast`]), the fast path on
            CPUs with bf16 units and on GPUs; scores differ from fp32 in the second or third decimal.
        batch_size (`int`, *optional*): images per forward pass when the input is a list, a folder or a dataset.
        max_pixels (`int`, *optional*): the decompression-bomb guard of [`srn_hf.images.open_image`].
        timeout (`float`, *optional*): timeout to fetch an image given by URL.

    Inputs: an image (path, URL, PIL image, numpy array), a list of images, a folder (its images, recursively), or a
    dataset / generator (results are then streamed). Outputs per image: a list of `{"label", "score"}` dicts, best
    first (plus `"attention_map"`). A folder gives a dict `{file path: labels}`.

    Bad images: a single image that cannot be opened raises [`srn_hf.images.ImageError`], naming the file. In a list,
    folder or dataset, its result is that `ImageError` instead of a list of labels (a warning names it too), and the
    other images are predicted.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.thresholds()  # a config threshold of 1.5 or "0.3" fails here, before any image, naming the field
        check_finite_weights(self.model)  # NaN or inf weights fail here too, before any image

    def _sanitize_parameters(
        self,
        threshold: float | None = None,
        label_thresholds: dict[str, float] | None = None,
        top_k: int | None = None,
        return_attention_maps: bool | None = None,
        fast: bool | None = None,
        max_pixels: int | None = None,
        timeout: float | None = None,
    ):
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if max_pixels is not None:
            preprocess_params["max_pixels"] = max_pixels
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if fast is not None:
            forward_params["fast"] = fast
        if return_attention_maps is not None:
            forward_params["return_attention_maps"] = return_attention_maps
            postprocess_params["return_attention_maps"] = return_attention_maps
        if threshold is not None or label_thresholds is not None:
            self.thresholds(threshold, label_thresholds)  # fail now, naming the bad value, not after the forward pass
            postprocess_params["threshold"] = threshold
            postprocess_params["label_thresholds"] = label_thresholds
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k={top_k!r} must be a positive integer")
            postprocess_params["top_k"] = top_k
        return preprocess_params, forward_params, postprocess_params

    def thresholds(
        self, threshold: float | None = None, label_thresholds: dict[str, float] | None = None
    ) -> np.ndarray:
        """The threshold of each label (array of `num_labels`, in label id order) for these call arguments.

        Raises a `ValueError` naming the value and where it comes from (the call, or the model config's `threshold`
        / `label_thresholds`) when a threshold is not a number in [0, 1] or names a label the model does not have.
        """
        return config_thresholds(self.model.config, threshold, label_thresholds)

    def __call__(self, inputs=None, **kwargs):
        """Labels for one image, a list of images, a folder or a dataset; see the class docstring."""
        if "images" in kwargs:
            inputs = kwargs.pop("images")
        if inputs is None:
            raise ValueError(f"the {TASK} pipeline needs images: a path, a URL, a PIL image, a list or a folder")
        if isinstance(inputs, os.PathLike):
            inputs = os.fspath(inputs)
        if isinstance(inputs, str) and os.path.isdir(inputs):
            files = [os.fspath(path) for path in list_image_files(inputs)]
            if not files:
                logger.warning(f"{inputs}: no image files in this folder")
                return {}
            return dict(zip(files, super().__call__(files, **kwargs)))
        if isinstance(inputs, (list, tuple)):
            inputs = [os.fspath(item) if isinstance(item, os.PathLike) else item for item in inputs]
            folders = [item for item in inputs if isinstance(item, str) and os.path.isdir(item)]
            if folders:
                raise ValueError(
                    f"{folders[0]} is a folder: pass a folder on its own, or its files "
                    "(srn_hf.images.list_image_files) in a list"
                )
            return super().__call__(inputs, **kwargs) if inputs else []
        result = super().__call__(inputs, **kwargs)
        if isinstance(result, ImageError):
            raise result
        return result

    def preprocess(self, image, timeout: float | None = None, max_pixels: int | None = None):
        """Opens the image robustly (see `srn_hf.images`) and applies the model's image processor.

        A bad image becomes a blank input carrying its `ImageError`, so that the rest of its batch still runs.
        """
        error = None
        try:
            if isinstance(image, (np.ndarray, torch.Tensor)):  # pixels already decoded: as the stock pipeline
                size = get_image_size(to_numpy_array(image))
            else:
                if isinstance(image, str) and image.startswith(("http://", "https://", "data:image/")):
                    image = load_image(image, timeout=timeout)
                image = open_image(image, max_pixels=max_pixels)
                size = (image.height, image.width)
        except ImageError as bad_image:
            error, image, size = bad_image, Image.new("RGB", (1, 1)), (1, 1)
        model_inputs = self.image_processor(images=image, return_tensors="pt").to(self.dtype)
        model_inputs["image_size"] = torch.tensor([size])
        model_inputs["error"] = error
        return model_inputs

    def _forward(self, model_inputs, fast: bool = False, return_attention_maps: bool = False):
        """The model on a batch; `fast` runs it under bf16 autocast in channels-last memory format."""
        if fast and not getattr(self, "_channels_last", False):
            use_channels_last(self.model)
            self._channels_last = True
        with autocast_context(enabled=fast, device_type=self.device.type):
            outputs = self.model(pixel_values=model_inputs["pixel_values"])
        model_outputs = {"logits": outputs.logits.float()}
        if return_attention_maps:
            if getattr(outputs, "attention_maps", None) is None:
                raise ValueError(
                    f"return_attention_maps=True needs a model that returns attention maps (an SRN); "
                    f"{type(self.model).__name__} does not"
                )
            model_outputs["attention_maps"] = outputs.attention_maps.float()
        model_outputs["image_size"] = model_inputs["image_size"]
        model_outputs["error"] = model_inputs["error"]
        return model_outputs

    def postprocess(
        self,
        model_outputs,
        threshold: float | None = None,
        label_thresholds: dict[str, float] | None = None,
        top_k: int | None = None,
        return_attention_maps: bool = False,
    ):
        """Every label above its threshold, best first, at most `top_k`; or the image's `ImageError`."""
        error = model_outputs["error"]
        if isinstance(error, list):  # a batch of one, not unbatched by the pipeline
            error = error[0]
        if error is not None:
            logger.warning(f"not predicted: {error}")
            return error
        check_finite_logits(model_outputs["logits"], self.model)
        scores = torch.sigmoid(model_outputs["logits"][0]).numpy()
        thresholds = self.thresholds(threshold, label_thresholds)
        predicted = labels_above_thresholds(scores, thresholds, top_k)
        id2label = self.model.config.id2label
        predictions = [{"label": id2label[int(index)], "score": float(scores[index])} for index in predicted]
        if return_attention_maps:
            height, width = (int(side) for side in model_outputs["image_size"].reshape(-1))
            for prediction, index in zip(predictions, predicted):
                attention_map = model_outputs["attention_maps"][0, int(index)]
                prediction["attention_map"] = upsample_attention_map(attention_map, height, width)
        return predictions


def labels_above_thresholds(scores: np.ndarray, thresholds: np.ndarray, top_k: int | None = None) -> np.ndarray:
    """The decision rule of a multi-label model: the indices of the labels whose score exceeds their threshold
    (`score > threshold`), best first (equal scores in label order), at most `top_k`; for one image's C scores.

    The one rule of the pipeline, of `srn-hf predict` ([`srn_hf.bulk`]), of an exported model
    ([`srn_hf.export.ExportedTagger`]) and of the demo page ([`srn_hf.app`]). It lives here, in the pipeline's module,
    because pipeline_srn.py and the files it imports are what a saved model folder carries as remote code. The
    figures of [`srn_hf.metrics`] keep their own rule, the definitions of the papers they reproduce: `score >=
    threshold` in its `"standard"` convention, and with `top_k` the labels among the image's k best scores that also
    pass their threshold (the same labels as here under one threshold for all, not under per-label ones).
    """
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] > np.asarray(thresholds)[order]][:top_k]


def model_name(model) -> str:
    """How an error names a model: its `name_or_path` (the folder or Hub id it was loaded from), else its class."""
    return getattr(model, "name_or_path", "") or type(model).__name__


def check_finite_weights(model) -> None:
    """Refuses, with a `ValueError` naming the model and a tensor, weights that hold NaN or inf (a training run that
    diverged saves such weights). Their scores would be NaN, which is above no threshold: every image would get no
    label, without a word. Tensors on the meta device (offloaded by `device_map`) are not read."""
    broken = [
        name
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all()
    ]
    if broken:
        others = f" and {len(broken) - 1} other tensors" if len(broken) > 1 else ""
        raise ValueError(
            f"model {model_name(model)} has non-finite weights (NaN or inf) in {broken[0]}{others}: its scores would "
            "be NaN (a training run that diverged?)"
        )


def check_finite_logits(logits: torch.Tensor, model) -> None:
    """Refuses, with a `ValueError` naming the model, logits that hold NaN or inf (finite weights can still overflow,
    or an input array hold NaN): no label can be read from them. The check of the pipeline and of `srn-hf predict`."""
    finite = torch.isfinite(logits)
    if not finite.all():
        raise ValueError(
            f"model {model_name(model)} gave non-finite scores ({int((~finite).sum())} of {finite.numel()} logits are "
            "NaN or inf): its weights overflow, or the input holds NaN or inf"
        )


def config_thresholds(
    config, threshold: float | None = None, label_thresholds: dict[str, float] | None = None
) -> np.ndarray:
    """The threshold of each label of `config` (in label id order): `label_thresholds`, else `threshold`, else the
    config's own `label_thresholds` and `threshold` (the rule of [`MultiLabelImageClassificationPipeline.thresholds`],
    also of a folder written by `srn-hf export`, whose config.json it reads). Raises a `ValueError` as that method."""
    names = config_label_names(config)
    if label_thresholds is not None and not isinstance(label_thresholds, dict):
        raise ValueError(f"label_thresholds must be a dict of label name to threshold, got {label_thresholds!r}")
    unknown = sorted(set(label_thresholds or {}) - set(names))
    if unknown:
        raise ValueError(f"label_thresholds names labels the model does not have: {unknown}; its labels: {names}")
    sources = {name: (f"label_thresholds[{name!r}]", value) for name, value in (label_thresholds or {}).items()}
    if threshold is None:
        saved = getattr(config, "label_thresholds", None) or {}
        sources = {
            **{name: (f"config.label_thresholds[{name!r}]", v) for name, v in saved.items()},
            **sources,
        }
        default = ("config.threshold", getattr(config, "threshold", 0.5))
    else:
        default = ("threshold", threshold)
    for where, value in [default, *sources.values()]:
        check_threshold(value, where)
    return np.array([sources.get(name, default)[1] for name in names], dtype=np.float64)


def check_threshold(value, where: str) -> None:
    """Refuses a threshold that is not a number in [0, 1] (a string, a bool, 1.5), naming `where` it comes from."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{where}={value!r} must be a number in [0, 1], not a {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where}={value!r}: thresholds must lie in [0, 1] (they apply to sigmoid scores)")


def upsample_attention_map(attention_map: torch.Tensor, height: int, width: int) -> np.ndarray:
    """One h x w attention map A brought to the image's height x width (bilinear), as a distribution summing to 1.

    The image processor warps the whole image to the square input, so the map's grid spans the whole image: cell
    (i, j) of an h x w map covers rows i * height / h ... (i + 1) * height / h of the image, and likewise columns.
    """
    upsampled = nnf.interpolate(attention_map[None, None].float(), size=(height, width), mode="bilinear")[0, 0]
    upsampled = upsampled.clamp_min(0)
    return (upsampled / upsampled.sum().clamp_min(torch.finfo(upsampled.dtype).tiny)).numpy()


__all__ = [
    "MultiLabelImageClassificationPipeline",
    "TASK",
    "check_finite_logits",
    "check_finite_weights",
    "labels_above_thresholds",
    "upsample_attention_map",
]
