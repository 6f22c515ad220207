"""The demo page's parts outside the browser: Gradio stays out of `import srn_hf`, the threshold slider's rule, the
examples, and `srn-hf demo` refusing what it cannot serve (the page itself: test_app_browser.py)."""

import socket
import subprocess
import sys

import datasets
import numpy as np
import skimage.data
from conftest import save_with_processor, small_srn
from PIL import Image

import srn_hf.app
from srn_hf.app import SKIMAGE_PHOTOS, example_images, labels_above
from srn_hf.cli import main as cli_main
from srn_hf.data.stamp_scenes import generate_stamp_scenes


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


def test_examples_are_demo_test_scenes_and_scikit_image_photos(tmp_path):
    files = example_images(tmp_path)
    names = [path.name for path in files]
    assert names[-len(SKIMAGE_PHOTOS):] == [f"{name}.png" for name in SKIMAGE_PHOTOS]  # lossless
    for name, path in zip(SKIMAGE_PHOTOS, files[-len(SKIMAGE_PHOTOS):]):
        with Image.open(path) as photo:
            assert np.array_equal(np.asarray(photo.convert("RGB")), np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB")))
    scenes = files[: -len(SKIMAGE_PHOTOS)]
    assert len(scenes) == srn_hf.app.STAMP_SCENE_EXAMPLES  # Debian's tuxpaint stamps are installed by setup_env.sh
    # each scene is the file the demo data holds, byte for byte (the data's first test images), not a re-encoding
    test_split = generate_stamp_scenes(None, sizes=(0, 0, len(scenes)), num_workers=1, progress=False)["test"]
    for path, row in zip(scenes, test_split.cast_column("image", datasets.Image(decode=False))):
        assert path.read_bytes() == row["image"]["bytes"]
    assert example_images(tmp_path) == files  # written once, then reused


def test_the_page_is_titled_with_the_model_not_its_folder_name(tmp_path):
    model_dir = save_with_processor(small_srn({0: "bird", 1: "boat"}, image_size=64), tmp_path / "final")
    page = srn_hf.app.build_app(model_dir, examples_dir=tmp_path / "examples")
    assert page.title == "SRN demo: SRN resnet10t, 2 labels"  # the model: its backbone and labels


def test_demo_refuses_a_bad_model_a_taken_port_and_a_missing_gradio(tmp_path, monkeypatch, capsys):
    assert cli_main(["demo", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"srn-hf demo: error: {tmp_path / 'missing'}") and len(error.splitlines()) == 1

    model_dir = save_with_processor(small_srn({0: "bird", 1: "boat"}, image_size=64), tmp_path / "model")
    monkeypatch.setattr(srn_hf.app, "EXAMPLES_DIR", tmp_path / "examples")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["demo", model_dir, "--port", str(port)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the loading bars
    assert len(errors) == 1 and errors[0].startswith(f"srn-hf demo: error: 127.0.0.1:{port}: ")

    monkeypatch.setitem(sys.modules, "gradio", None)  # as where the app extra is not installed
    monkeypatch.delitem(sys.modules, "srn_hf.app")
    assert cli_main(["demo", model_dir]) == 2
    assert "pip install 'srn_hf[app]'" in capsys.readouterr().err

