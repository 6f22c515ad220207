"""The demo page's parts outside the browser: Gradio stays out of `import srn_hf`, the threshold slider's rule, the
examples, the page's API opening only its uploads and examples (real HTTP requests to a page served here), and
`srn-hf demo` refusing what it cannot serve (the page itself: test_app_browser.py)."""

import io
import json
import os
import socket
import subprocess
import sys

import datasets
import httpx
import numpy as np
import pytest
from helpers import save_with_processor, small_srn
from PIL import Image

import srn_hf.app
from srn_hf.app import REFUSED_FILE, example_images, labels_above
from srn_hf.cli import main as cli_main
from srn_hf.data.stamp_scenes import generate_stamp_scenes
from srn_hf.showcase import EXAMPLE_COUNT, keep_examples


def test_import_srn_hf_never_imports_gradio():
    code = (
        "import sys, srn_hf, srn_hf.cli, srn_hf.hub, srn_hf.space, srn_hf.visualize\n"
        "srn_hf.cli.build_parser().parse_args(['demo', 'org/model'])\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'gradio'))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == "[]"


def test_the_slider_moves_every_label_threshold_from_the_model_ones():
    prediction = {"scores": {"bird": 0.95, "boat": 0.82, "car": 0.60, "cattle": 0.27}}
    model_thresholds = {"bird": 0.5, "boat": 0.8, "car": 0.5, "cattle": 0.5}  # boat's is calibrated
    assert list(labels_above(prediction, model_thresholds, 0.0)) == ["bird", "boat", "car"]  # the model's own
    assert list(labels_above(prediction, model_thresholds, 0.05)) == ["bird", "car"]  # boat's threshold is now 0.85
    assert list(labels_above(prediction, model_thresholds, -0.3)) == ["bird", "boat", "car", "cattle"]
    assert list(labels_above(prediction, model_thresholds, -1.0)) == ["bird", "boat", "car", "cattle"]  # clipped at 0
    assert labels_above(prediction, model_thresholds, 0.6) == {}  # every threshold clipped at 1
    assert labels_above(None, model_thresholds, 0.0) == {}
    # a score the list would show as 0 % is never "above the threshold", however low the slider goes
    prediction["scores"]["dog"], model_thresholds["dog"] = 0.004, 0.5
    assert "dog" not in labels_above(prediction, model_thresholds, -1.0)
    prediction["scores"]["dog"] = 0.006
    assert "dog" in labels_above(prediction, model_thresholds, -1.0)


def test_examples_are_the_runs_own_test_images_with_their_true_labels(tmp_path):
    """A training run keeps its first test images (srn_hf.showcase.keep_examples, as train_stages.py calls it); the
    page of its final model shows them, captioned with their true labels, each the file the data holds byte for byte."""
    test_split = generate_stamp_scenes(None, sizes=(0, 0, 6), num_workers=1, progress=False)["test"]
    names = test_split.features["labels"].feature.names
    output_dir = tmp_path / "run"
    model_dir = save_with_processor(small_srn(dict(enumerate(names)), image_size=64), output_dir / "final")
    records = keep_examples(test_split, "test", names, output_dir)
    assert len(records) == EXAMPLE_COUNT

    shown = example_images(model_dir)
    assert [caption for _, caption in shown] == [
        f"true: {', '.join(record['labels']) or 'no label'}" for record in records
    ]
    for (path, _), row in zip(shown, test_split.cast_column("image", datasets.Image(decode=False))):
        assert path.suffix == ".jpg" and path.read_bytes() == row["image"]["bytes"]  # not a re-encoding
    for (_, caption), row in zip(shown, test_split):
        assert caption == "true: " + (", ".join(names[label] for label in row["labels"]) or "no label")

    bare = save_with_processor(small_srn({0: "bird", 1: "boat"}, image_size=64), tmp_path / "bare" / "model")
    assert example_images(bare) == []  # no stock photo in place of the model's own images
    photo = tmp_path / "street.png"
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(photo)
    assert example_images(bare, [photo]) == [(photo, "street.png")]  # the user's own, when passed

    # A broken examples.json is refused naming the file and the entry, never shown as no examples.
    examples_file = output_dir / "examples.json"
    text = examples_file.read_text(encoding="utf-8")
    examples_file.write_text(text[: len(text) // 2], encoding="utf-8")  # truncated
    with pytest.raises(ValueError, match=rf"{examples_file} is not valid JSON"):
        example_images(model_dir)
    examples_file.write_text(text, encoding="utf-8")
    (output_dir / records[1]["file"]).unlink()
    with pytest.raises(ValueError, match=rf"{examples_file}: entry 1: no such file"):
        example_images(model_dir)


def test_the_page_is_titled_with_the_model_not_its_folder_name(tmp_path):
    model_dir = save_with_processor(small_srn({0: "bird", 1: "boat"}, image_size=64), tmp_path / "final")
    page = srn_hf.app.build_app(model_dir)
    assert page.title == "SRN demo: SRN resnet10t, 2 labels"  # the model: its backbone and labels


def test_demo_refuses_a_bad_model_a_taken_port_and_a_missing_gradio(tmp_path, monkeypatch, capsys):
    assert cli_main(["demo", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"srn-hf demo: error: {tmp_path / 'missing'}") and len(error.splitlines()) == 1

    model_dir = save_with_processor(small_srn({0: "bird", 1: "boat"}, image_size=64), tmp_path / "model")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["demo", model_dir, "--port", str(port)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the loading bars
    assert len(errors) == 1 and errors[0].startswith(f"srn-hf demo: error: 127.0.0.1:{port}: ")
    assert cli_main(["demo", model_dir, "--example", str(tmp_path / "missing.png")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"srn-hf demo: error: --example {tmp_path / 'missing.png'}: no such file"]

    monkeypatch.setitem(sys.modules, "gradio", None)  # as where the app extra is not installed
    monkeypatch.delitem(sys.modules, "srn_hf.app")
    assert cli_main(["demo", model_dir]) == 2
    assert "pip install 'srn_hf[app]'" in capsys.readouterr().err


def a_test_run(tmp_path, image_ids=("photos/img_005.jpg", "b")) -> tuple:
    """OUTPUT_DIR of a training run that kept its test images (examples.json, examples/) beside final/."""
    pictures = []
    for value in (60, 200)[: len(image_ids)]:
        picture = io.BytesIO()
        Image.fromarray(np.full((24, 24, 3), value, np.uint8)).save(picture, format="JPEG")
        pictures.append({"bytes": picture.getvalue(), "path": None})
    test_split = datasets.Dataset.from_dict(
        {"image": pictures, "image_id": list(image_ids), "labels": [[0], []][: len(image_ids)]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "image_id": datasets.Value("string"),
                "labels": datasets.Sequence(datasets.ClassLabel(names=["bird", "boat"])),
            }
        ),
    )
    output_dir = tmp_path / "run"
    records = keep_examples(test_split, "test", ["bird", "boat"], output_dir)
    model_dir = save_with_processor(small_srn({0: "bird", 1: "boat"}, image_size=64), output_dir / "final")
    return output_dir, model_dir, records


def test_example_files_are_named_once_after_their_image(tmp_path):
    _, _, records = a_test_run(tmp_path, image_ids=("photos/img_005.jpg", "scene.v2"))
    assert [record["file"] for record in records] == ["examples/0-photos_img_005.jpg", "examples/1-scene.v2.jpg"]


@pytest.mark.parametrize("entry", ["/etc/passwd", "../../etc/passwd", "examples/../../../etc/passwd", "link"])
def test_an_example_outside_its_folder_is_refused_naming_the_entry(tmp_path, entry):
    """An examples.json entry that leads out of its folder (an absolute path, `..`, or a symlink inside the folder
    pointing out) is refused by the page, which would serve the file to anyone (`/gradio_api/file=...`)."""
    output_dir, model_dir, records = a_test_run(tmp_path)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes((output_dir / records[0]["file"]).read_bytes())  # an image, so that only the place is wrong
    if entry == "link":
        (output_dir / "examples" / "link.jpg").symlink_to(outside)
        entry = "examples/link.jpg"
    records[1]["file"] = entry
    (output_dir / "examples.json").write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(ValueError) as refused:
        srn_hf.app.build_app(model_dir)
    message = str(refused.value)
    assert message.startswith(f"{output_dir / 'examples.json'}: entry 1: file {entry!r} ") and "\n" not in message


@pytest.fixture
def page(tmp_path, monkeypatch):
    """The demo page of a run's final model with its examples, served on a free local port: (page, its API URL, the
    model folder's run)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    output_dir, model_dir, _ = a_test_run(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = srn_hf.app.build_app(model_dir)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/gradio_api/", output_dir
    demo.close()


def call_on_image(api: str, image_value, expected: str = "complete") -> list:
    """POST /gradio_api/call/on_image as any client can, then read the result: the outputs (state, labels, status
    line, attention image), or Gradio's error (`expected="error"`)."""
    with httpx.Client(timeout=120) as client:
        event = client.post(f"{api}call/on_image", json={"data": [image_value, 0.5]}).raise_for_status()
        answer = client.get(f"{api}call/on_image/{event.json()['event_id']}").raise_for_status().text
    kind, data = (line.partition(": ")[2] for line in answer.strip().splitlines()[-2:])
    assert kind == expected, answer
    return json.loads(data)


def test_the_page_api_opens_only_its_uploads_and_examples(page, tmp_path):
    """A client may send any path as the image value (without Gradio's FileData `meta`, which Gradio alone would
    check): a server file is never predicted, and the answer is the same whether it exists, is not an image, or is
    missing. An upload through the API, and the page's own examples, are predicted."""
    _, api, output_dir = page
    server_image = tmp_path / "private" / "photo.jpg"
    server_image.parent.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(server_image)
    escape = f"{tmp_path / 'gradio'}/../private/photo.jpg"  # inside the upload folder, until `..` is resolved
    for path in (str(server_image), escape, "/etc/passwd", str(tmp_path / "missing.jpg"), "/etc"):
        outputs = call_on_image(api, {"path": path})
        assert outputs[1:3] == [{}, REFUSED_FILE], path  # no label, one wording
        assert outputs[3]["value"] is None  # no attention map of the file
    assert call_on_image(api, "/etc/passwd", expected="error") == {"error": None}  # a bare string: Gradio refuses

    with httpx.Client(timeout=120) as client:  # a real upload, as the page does: /upload, then the call
        uploaded = client.post(f"{api}upload", files={"files": ("mine.jpg", server_image.read_bytes())}).json()
    outputs = call_on_image(api, {"path": uploaded[0], "orig_name": "mine.jpg", "meta": {"_type": "gradio.FileData"}})
    assert "labels above their thresholds" in outputs[2] or "No label above" in outputs[2]
    assert outputs[3]["value"]["url"].startswith(api + "file=")  # the attention map of the upload

    example = output_dir / json.loads((output_dir / "examples.json").read_text())[0]["file"]
    assert "predicted in" in call_on_image(api, {"path": str(example)})[2]  # the page's own example
    text_upload = tmp_path / "notes.txt"
    text_upload.write_text("not an image")
    with httpx.Client(timeout=120) as client:
        uploaded = client.post(f"{api}upload", files={"files": ("notes.txt", text_upload.read_bytes())}).json()
    message = call_on_image(api, {"path": uploaded[0], "orig_name": "notes.txt"})[2]
    assert message.startswith("Refused: notes.txt: not an image")  # the user's own upload: named, and why
    assert os.path.isfile(uploaded[0])
