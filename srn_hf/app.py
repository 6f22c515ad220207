"""A demo page for an SRN model: a Gradio app where one drops an image and sees the labels and where the model looked.

```python
>>> from srn_hf.app import build_app
>>> build_app("path/to/srn-model").launch()            # a folder written by save_pretrained, or a Hub id
```
or from a shell: `srn-hf demo MODEL [--host 127.0.0.1] [--port 7860] [--share]`.

The page holds:

- the image: uploaded, dropped, or picked from the examples: images of the model's own data with their true labels,
  the first test images its training run kept ([`srn_hf.showcase`]: beside a model folder's metrics.json, or in a
  published repository's examples.json), each file the bytes the data holds; or the images passed as `examples`.
  A model without either has no examples: never an unrelated stock photo;
- every label whose sigmoid score exceeds its threshold, best first, a bar per label ([`gradio.Label`]);
- one threshold slider. It starts at the model config's `threshold`, where every label has the model's own
  (calibrated) threshold: the config's `label_thresholds[c]`, else `threshold`. Moving it by d moves every
  label's threshold by d (clipped to [0, 1]): without calibrated thresholds it is simply the threshold of all labels;
- the attention map A of a predicted label over the image ([`srn_hf.visualize.heatmap_rgba`]): the best label's at
  first, another label's when one clicks it in the list;
- how long the prediction took.

The model runs once per image, through the `multi-label-image-classification` pipeline with every label's score
and attention map; the slider and the label clicks only redraw. Everything runs on CPU and offline: the page's
scripts, styles and fonts are served by the app itself (Gradio's default theme bundles its fonts), and Gradio's
telemetry and version check are off. A file that is not an image is refused with a message naming it. The page
opens only the files uploaded to it and its own examples, whatever path a client sends (`DemoModel.page_file`), and
runs no code a model folder brings unless `trust_remote_code=True` (docs/app.md).

Needs the `app` extra: `pip install srn_hf[app]`. `import srn_hf` never imports Gradio; this module does.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .configuration_srn import config_label_names
from .images import ImageError, open_image
from .pipeline_srn import labels_above_thresholds
from .visualize import DISPLAY_SIDE, heatmap_rgba

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry, no version check
import gradio as gr  # noqa: E402

logger = logging.getLogger(__name__)

SLIDER_STEP = 0.01
OVERLAY_OPACITY = 0.8  # of the heatmap where the map peaks, as in srn_hf.visualize.attention_figure
MIN_SHOWN_SCORE = 0.005  # the label list shows whole percents: a lower score would be listed as 0 %
# The one answer to an image value whose file is not an upload of this page nor one of its examples: the same words
# whether the file exists, is not an image or is missing, so that the page tells nothing about the server's files.
REFUSED_FILE = "Refused: the page opens only images uploaded to it and its own examples."


def example_images(model, examples: list[str | os.PathLike] | None = None) -> list[tuple[Path, str]]:
    """The page's examples and their captions: `examples` (image files, captioned with their names) when given, else
    the model's own example images with their true labels ([`srn_hf.showcase.model_examples`]); none without either.
    """
    from .showcase import model_examples

    if examples is not None:
        for path in examples:
            open_image(
                path
            )  # an ImageError naming a missing file or one that is not an image, before the page is built
        return [(Path(path), Path(path).name) for path in examples]
    return [(example.path, example.caption()) for example in model_examples(model)]


def predict(tagger, image_file: str | None) -> dict | None:
    """Runs the model once on an image: every label's score and attention map, and the time it took.

    The model sees the image scaled down to at most `DISPLAY_SIDE` pixels (or its own input side, if larger): its
    input is smaller still, and the attention maps of every label at a photo's full resolution would take gigabytes.

    Returns None for no image, else a dict with `image` (that copy), `scores` (label -> sigmoid score, every label),
    `attention_maps` (label -> uint8 map over the copy, scaled to its own maximum) and `seconds`. Raises
    [`srn_hf.images.ImageError`] naming the file when it is not an image.
    """
    if image_file is None:
        return None
    picture = open_image(image_file)
    side = max(DISPLAY_SIDE, getattr(tagger.model.config, "image_size", 0))
    picture.thumbnail((side, side))
    start = time.perf_counter()
    predictions = tagger(picture, threshold=0.0, return_attention_maps=True)
    seconds = time.perf_counter() - start
    scores, attention_maps = {}, {}
    for prediction in predictions:
        attention_map = prediction["attention_map"]
        scores[prediction["label"]] = prediction["score"]
        scaled = attention_map / max(float(attention_map.max()), 1e-12)
        attention_maps[prediction["label"]] = np.round(scaled * 255).astype(np.uint8)
    return {"image": picture, "scores": scores, "attention_maps": attention_maps, "seconds": seconds}


def labels_above(prediction: dict | None, model_thresholds: dict[str, float], shift: float) -> dict[str, float]:
    """The labels whose score exceeds their threshold moved by `shift` (clipped to [0, 1]), best first; never a
    label whose score the list would show as 0 % (below `MIN_SHOWN_SCORE`), however low the slider goes."""
    if prediction is None:
        return {}
    names = list(prediction["scores"])
    scores = np.array([prediction["scores"][name] for name in names], dtype=np.float64)
    thresholds = np.clip([model_thresholds[name] + shift for name in names], 0.0, 1.0)
    shown = [names[index] for index in labels_above_thresholds(scores, thresholds) if scores[index] >= MIN_SHOWN_SCORE]
    return {name: prediction["scores"][name] for name in shown}


def attention_overlay(prediction: dict, label: str) -> Image.Image:
    """The attention map A of `label` drawn over the image: colour and opacity grow with the map's value."""
    heatmap = heatmap_rgba(prediction["attention_maps"][label].astype(np.float32), opacity=OVERLAY_OPACITY)
    overlay = Image.fromarray(np.round(heatmap * 255).astype(np.uint8), mode="RGBA")
    return Image.alpha_composite(prediction["image"].convert("RGBA"), overlay).convert("RGB")


def summary(prediction: dict | None, shown: dict[str, float], device: str) -> str:
    """One line under the labels: how many are shown, and how long the prediction took."""
    if prediction is None:
        return "Drop an image, or pick an example below."
    count = (
        f"{len(shown)} of {len(prediction['scores'])} labels above their thresholds"
        if shown
        else ("No label above its threshold: lower the threshold to see the best scores.")
    )
    return f"{count} · predicted in {prediction['seconds'] * 1000:.0f} ms on {device}"


def describe_thresholds(config) -> str:
    """The slider's caption: where it starts, and what it moves."""
    calibrated = config.label_thresholds or {}
    if not calibrated:
        return f"Starts at the model's threshold, {config.threshold:g}, and applies to every label."
    return (
        f"Starts at the model's thresholds: {config.threshold:g}, and calibrated ones for {len(calibrated)} "
        f"label{'s' if len(calibrated) > 1 else ''}; "
        "moving the slider moves every label's threshold by as much."
    )


def upload_folder() -> Path:
    """Gradio's folder of the files uploaded to its pages (and of the examples it serves), resolved."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


class DemoModel:
    """The model behind the page: its pipeline and thresholds, and the page's event handlers.

    Args:
        tagger: a `multi-label-image-classification` pipeline of an SRN model.
        example_files: the page's example images, the only files outside Gradio's upload folder it opens.
    """

    def __init__(self, tagger, example_files: list[str | os.PathLike] = ()):
        self.example_files = {Path(path).resolve() for path in example_files}
        self.tagger = tagger
        self.config = tagger.model.config
        names = config_label_names(self.config)
        self.model_thresholds = dict(zip(names, tagger.thresholds()))  # the config's threshold / label_thresholds
        self.device_name = str(tagger.device)

    def show(self, prediction: dict | None, threshold: float) -> tuple[dict[str, float], str]:
        """The labels above the thresholds the slider sets, and the line under them."""
        shown = labels_above(prediction, self.model_thresholds, threshold - self.config.threshold)
        return shown, summary(prediction, shown, self.device_name)

    def page_file(self, image_data) -> str | None:
        """The file of an image value when the page may open it, else None: an existing file in Gradio's upload
        folder, or one of the page's examples, once `..` and symlinks are resolved."""
        path = image_data.get("path") if isinstance(image_data, dict) else None
        if not isinstance(path, str) or not path:
            return None
        resolved = Path(path).resolve()
        allowed = resolved.is_relative_to(upload_folder()) or resolved in self.example_files
        return str(resolved) if allowed and resolved.is_file() else None

    def on_image(self, image_data: dict | None, threshold: float) -> tuple:
        """A new image (or none): predicts it; shows its labels and the best one's attention map, or refuses it.

        `image_data` is the image box's value as the page sends it (`{"path": ..., "orig_name": ...}`, Gradio's
        preprocessing off): the upload is opened here, so that a file Pillow cannot open is refused by its name, not
        with Gradio's generic error. Gradio checks only a value marked as its FileData (`meta`), and a client may
        send any path: only an upload of this page or one of its examples is opened ([`page_file`]), anything else
        gets one answer, `REFUSED_FILE`, whether the file exists or not.
        """
        image_file = self.page_file(image_data) if image_data else None
        if image_data and image_file is None:
            gr.Warning(REFUSED_FILE)
            return None, {}, REFUSED_FILE, attention_image(None, None)
        try:
            prediction = predict(self.tagger, image_file)
        except ImageError as error:  # an upload of this page: its own name, and what is wrong with it
            name = image_data.get("orig_name") or Path(image_file).name
            message = f"Refused: {name}: {error.reason}; upload a photo (JPEG, PNG, WebP, ...)."
            gr.Warning(message)
            return None, {}, message, attention_image(None, None)
        shown, status = self.show(prediction, threshold)
        return prediction, shown, status, attention_image(prediction, next(iter(shown), None))

    def on_label_click(self, prediction: dict | None, selected: gr.SelectData) -> gr.Image:
        """A click on a label of the list: that label's attention map."""
        return attention_image(prediction, selected.value)


def build_app(
    model,
    device: str | int | None = None,
    examples: list[str | os.PathLike] | None = None,
    fast: bool = False,
    title: str | None = None,
    trust_remote_code: bool = False,
) -> gr.Blocks:
    """The demo page of an SRN model (see the module docstring).

    Args:
        model: a folder written by `save_pretrained` (with its image processor), a Hub id, or a loaded model.
        device: torch device of the pipeline (default: transformers' choice).
        examples: image files of the page's examples (default: the model's own, [`example_images`]).
        fast: bf16 autocast and channels-last ([`srn_hf.fast`]), faster on CPUs with bf16 units.
        title: the page's heading (default: the Hub id, or for a folder the model's name: SRN, its backbone and
            its number of labels; a folder's own name, often `final`, says nothing).
        trust_remote_code: run the Python code a model folder or repository brings (its config.json's `auto_map`)
            when transformers does not know its `model_type`; never by default (SRN's own code is srn_hf's).

    Returns:
        a `gradio.Blocks`; `.launch()` serves it. Its examples are copied into Gradio's upload folder, which it
        serves: launch it without `allowed_paths`, which would serve more of the server's files.
    """
    from transformers import pipeline

    from .pipeline_srn import TASK

    tagger = pipeline(TASK, model=model, device=device, fast=fast, trust_remote_code=trust_remote_code)
    shown_examples = example_images(model, examples)
    demo_model = DemoModel(tagger, [path for path, _ in shown_examples])
    config = demo_model.config
    if title is None:
        local = not isinstance(model, (str, os.PathLike)) or os.path.isdir(model)
        title = f"SRN {config.backbone}, {config.num_labels} labels" if local else os.fspath(model)

    with gr.Blocks(title=f"SRN demo: {title}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\n"
            f"Multi-label classification with a Spatial Regularization Network (SRN, CVPR 2017): {config.num_labels} "
            f"labels, backbone `{config.backbone}`. Drop an image; every label above its threshold is listed with its "
            "score. Click a label to see its attention map A: where the model looked for it."
        )
        prediction = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="srn-image")
                gallery = None
                if shown_examples:  # the first test images of the model's own data, captioned with their true labels
                    gallery = gr.Examples(
                        [[os.fspath(path)] for path, _ in shown_examples],
                        inputs=image,
                        label="Examples",
                        example_labels=[caption for _, caption in shown_examples],
                    )
            with gr.Column():
                threshold = gr.Slider(
                    0.0,
                    1.0,
                    value=config.threshold,
                    step=SLIDER_STEP,
                    label="Threshold",
                    info=describe_thresholds(config),
                    elem_id="srn-threshold",
                )
                labels = gr.Label(label="Labels above the threshold", show_heading=False, elem_id="srn-labels")
                status = gr.Markdown(summary(None, {}, demo_model.device_name), elem_id="srn-status")
                attention = gr.Image(label="Attention map", interactive=False, format="png", elem_id="srn-attention")
        outputs = [prediction, labels, status, attention]
        gr.on([image.upload, image.clear], demo_model.on_image, [image, threshold], outputs, preprocess=False)
        if gallery is not None:  # once the example is in the image box
            gallery.load_input_event.then(demo_model.on_image, [image, threshold], outputs, preprocess=False)
        threshold.change(demo_model.show, [prediction, threshold], [labels, status])
        labels.select(demo_model.on_label_click, [prediction], attention)
    return demo


def attention_image(prediction: dict | None, label: str | None) -> gr.Image:
    """The attention image component's update: `label`'s map over the image, titled with the label and its score."""
    if prediction is None or label not in prediction.get("scores", {}):
        return gr.Image(value=None, label="Attention map")
    score = prediction["scores"][label]
    return gr.Image(value=attention_overlay(prediction, label), label=f"Attention map A of {label} ({score:.2f})")


__all__ = ["build_app", "example_images"]
