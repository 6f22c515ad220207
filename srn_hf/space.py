"""A Hugging Face Space beside a published SRN model: its demo page ([`srn_hf.app`]), loading the model by
repository id.

[`write_space_folder`] writes the folder a Gradio Space should hold (its page's examples are the model repository's
own images with their true labels, `examples.json`, downloaded with the model):

    app.py            builds the demo page of the model repository (`srn_hf.app.build_app("org/model")`); the Space
                      runs it with `python app.py`
    requirements.txt  srn_hf with its `app` extra (gradio comes from the Space's `sdk_version`)
    README.md         the Space card: front matter with `sdk: gradio`, `app_file: app.py`, `models: [org/model]`

[`publish_space`] writes it to a temporary directory and pushes it in one commit with [`srn_hf.hub.push_folder`]
(creating the Space with `space_sdk="gradio"` if needed); `dry_run_dir=` writes the same folder and pushes nothing.
"""

from __future__ import annotations

import os
import tempfile
from importlib import metadata
from pathlib import Path

from huggingface_hub import CommitInfo, SpaceCard, SpaceCardData
from huggingface_hub.utils import validate_repo_id

from . import __version__
from .hub import CardOptions, push_folder, require_empty_folder
from .storage import atomic_folder

SPACE_SDK = "gradio"
SPACE_APP = (
    '"""The demo page of the SRN model {model_repo_id}, written by `srn-hf publish --space` (srn_hf {version})."""\n'
    """
from srn_hf.app import build_app

demo = build_app({model_repo_id!r})

if __name__ == "__main__":
    demo.launch()
"""
)
SPACE_CARD = """
# {title}

The demo page of the multi-label image classifier [{model_repo_id}](https://huggingface.co/{model_repo_id}), a
Spatial Regularization Network (SRN, CVPR 2017): drop an image to see every label above its threshold with its
score, move the threshold, and click a label to see its attention map, where the model looked for it.

Run it on your own machine:

```bash
pip install {requirement!r}
srn-hf demo {model_repo_id}
```
"""


def default_requirement() -> str:
    """srn_hf with its app extra, at this version."""
    return f"srn_hf[app]=={__version__}"


def gradio_version() -> str | None:
    """The installed Gradio's version (without importing it), the Space's `sdk_version`; None if not installed."""
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        return None


def write_space_folder(
    out_dir: str | os.PathLike,
    space_id: str,
    model_repo_id: str,
    requirement: str | None = None,
    license: str = CardOptions.license,
) -> Path:
    """Writes to `out_dir` (an empty or new folder) the Gradio Space `space_id` that demos the model `model_repo_id`.

    Args:
        out_dir: the folder to write; it must be empty (all of it is uploaded).
        space_id, model_repo_id: `"org/name"` of the Space and of the model repository it loads.
        requirement: the pip requirement of srn_hf in requirements.txt (default: `srn_hf[app]==<this version>`;
            e.g. `"srn_hf[app] @ git+https://github.com/org/srn_hf@v0.1.0"` to install it from a repository).
        license: the Space's license, a Hub license id (by default the model card's).

    Returns:
        `out_dir`, holding app.py, requirements.txt and README.md (the page's examples are the model repository's
        own, [`srn_hf.showcase`]).
    """
    validate_repo_id(space_id)
    validate_repo_id(model_repo_id)
    requirement = requirement or default_requirement()
    if not requirement.strip() or "\n" in requirement:
        raise ValueError(f"the Space's srn_hf requirement {requirement!r} must be one pip requirement line")
    out_dir = require_empty_folder(out_dir)
    title = f"SRN demo: {model_repo_id.split('/')[-1]}"
    card_data = SpaceCardData(
        title=title,
        sdk=SPACE_SDK,
        sdk_version=gradio_version(),
        app_file="app.py",
        license=license,
        models=[model_repo_id],
        tags=["srn", "multi-label-image-classification", "image-classification"],
        emoji="🔎",
        colorFrom="indigo",
        colorTo="yellow",
        pinned=False,
    )
    body = SPACE_CARD.format(title=title, model_repo_id=model_repo_id, requirement=requirement)
    with atomic_folder(out_dir) as folder:  # renamed once complete: a failure leaves no half Space folder
        (folder / "app.py").write_text(
            SPACE_APP.format(model_repo_id=model_repo_id, version=__version__), encoding="utf-8"
        )
        (folder / "requirements.txt").write_text(requirement + "\n", encoding="utf-8")
        SpaceCard(f"---\n{card_data.to_yaml()}\n---\n{body}").save(folder / "README.md")
    return out_dir


def publish_space(
    space_id: str,
    model_repo_id: str,
    private: bool = False,
    dry_run_dir: str | os.PathLike | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    **space_options,
) -> CommitInfo | Path:
    """Publishes the Space `space_id` demoing `model_repo_id` in one commit ([`write_space_folder`] takes
    `space_options`); with `dry_run_dir`, only writes the folder there and returns its path."""
    if dry_run_dir is not None:
        return write_space_folder(dry_run_dir, space_id, model_repo_id, **space_options)
    with tempfile.TemporaryDirectory(prefix="srn-space-") as staging:
        folder = write_space_folder(Path(staging) / "space", space_id, model_repo_id, **space_options)
        return push_folder(
            folder,
            space_id,
            private=private,
            token=token,
            commit_message=commit_message,
            repo_type="space",
            space_sdk=SPACE_SDK,
        )


__all__ = ["publish_space", "write_space_folder"]
