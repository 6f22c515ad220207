"""Odd and bad image files: each is converted to upright 8-bit RGB and predicted, or fails naming the file, and one
bad file never stops a batch or a folder."""

import numpy as np
import pytest
from helpers import save_with_processor, small_srn
from PIL import Image
from transformers import pipeline

from srn_hf.images import ImageError, list_image_files, open_image, open_images

RED, WHITE = (255, 0, 0), (255, 255, 255)


def write_grayscale(path):
    Image.new("L", (30, 20), 100).save(path)


def write_rgba(path):
    image = Image.new("RGBA", (30, 20), (0, 0, 0, 0))  # transparent black...
    image.paste((255, 0, 0, 255), (0, 0, 15, 20))  # ...except an opaque red left half
    image.save(path)


def write_cmyk(path):
    Image.new("CMYK", (30, 20), (255, 0, 0, 0)).save(path, quality=95)  # pure cyan ink


def write_16_bit(path):
    values = np.full((20, 30), 32896, dtype=np.uint16)  # half of 65535: mid grey
    values[:, :15] = 65535
    Image.fromarray(values).save(path)


def write_1x1(path):
    Image.new("RGB", (1, 1), RED).save(path)


def write_exif_rotated(path):
    stored = Image.new("RGB", (40, 20), WHITE)
    stored.paste(RED, (0, 0, 20, 20))  # red left half, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display rotated 90 degrees clockwise, so the stored left half is on top
    stored.save(path, exif=exif, quality=95)


def write_truncated_jpeg(path):
    Image.effect_noise((64, 64), 60).convert("RGB").save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_not_an_image(path):
    path.write_text("these are notes, not pixels\n")


def write_bomb(path):
    # 12000 x 12000 = 144 megapixels above Pillow's 89-megapixel guard, in a PNG of a few kilobytes.
    Image.new("1", (12000, 12000), 0).save(path)


GOOD = {
    "gray.png": write_grayscale,
    "rgba.png": write_rgba,
    "cmyk.jpg": write_cmyk,
    "deep.png": write_16_bit,
    "dot.png": write_1x1,
    "rotated.jpg": write_exif_rotated,
}
BAD = {
    "truncated.jpg": (write_truncated_jpeg, "truncated"),
    "notes.jpg": (write_not_an_image, "not an image"),
    "bomb.png": (write_bomb, "decompression-bomb"),
}


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    for name, write in GOOD.items():
        write(folder / name)
    for name, (write, _) in BAD.items():
        write(folder / name)
    return folder


def test_grayscale_becomes_gray_rgb(odd_folder):
    image = open_image(odd_folder / "gray.png")
    assert image.mode == "RGB" and image.size == (30, 20)
    assert image.getpixel((5, 5)) == (100, 100, 100)


def test_rgba_is_composited_on_white(odd_folder):
    image = open_image(odd_folder / "rgba.png")
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == RED
    assert image.getpixel((25, 5)) == WHITE  # transparent reads as paper, not as the black of its colour values


def test_cmyk_is_converted(odd_folder):
    red, green, blue = open_image(odd_folder / "cmyk.jpg").getpixel((15, 10))
    assert red < 40 and green > 215 and blue > 215  # cyan


def test_16_bit_is_rescaled_not_clipped(odd_folder):
    image = open_image(odd_folder / "deep.png")
    assert Image.open(odd_folder / "deep.png").mode.startswith("I")
    assert image.getpixel((5, 5)) == WHITE
    assert image.getpixel((25, 5)) == (128, 128, 128)  # Pillow's own convert("RGB") would give 255


def test_1x1_opens(odd_folder):
    image = open_image(odd_folder / "dot.png")
    assert image.size == (1, 1) and image.getpixel((0, 0)) == RED


def test_exif_orientation_is_applied(odd_folder):
    image = open_image(odd_folder / "rotated.jpg")
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 and top[1] < 60  # red on top
    assert bottom.min() > 200  # white below


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_raises_error_naming_it(odd_folder, name):
    path = odd_folder / name
    with pytest.raises(ImageError, match=BAD[name][1]) as raised:
        open_image(path)
    assert str(path) in str(raised.value) and raised.value.source == path


def test_bomb_guard_reads_only_the_header(odd_folder):
    with pytest.raises(ImageError, match="144000000 pixels"):
        open_image(odd_folder / "bomb.png")
    assert open_image(odd_folder / "gray.png", max_pixels=600).size == (30, 20)
    with pytest.raises(ImageError, match="decompression-bomb guard of 599 pixels"):
        open_image(odd_folder / "gray.png", max_pixels=599)


def test_missing_file_and_wrong_type():
    with pytest.raises(ImageError, match="missing.png: no such file"):
        open_image("missing.png")
    with pytest.raises(TypeError, match="got int"):
        open_image(3)


def test_arrays_and_pil_images():
    deep = np.full((4, 6), 65535, dtype=np.uint16)
    assert open_image(deep).getpixel((0, 0)) == WHITE
    assert open_image(np.zeros((4, 6, 4), dtype=np.uint8)).getpixel((0, 0)) == WHITE  # transparent
    with pytest.raises(ValueError, match="float64"):
        open_image(np.zeros((4, 6, 3)))
    assert open_image(Image.new("LA", (3, 3), (0, 255))).getpixel((1, 1)) == (0, 0, 0)


def test_folder_listing_and_batch_keep_going(odd_folder, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.png", "sub/a.jpg", ".hidden/c.png", "readme.txt"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    assert list_image_files(tmp_path) == [tmp_path / "b.png", tmp_path / "sub" / "a.jpg"]
    assert list_image_files(tmp_path, recursive=False) == [tmp_path / "b.png"]
    with pytest.raises(ImageError, match="is not a folder"):
        list_image_files(tmp_path / "b.png")

    sources = [odd_folder / "gray.png", odd_folder / "notes.jpg", odd_folder / "dot.png"]
    opened = list(open_images(sources))
    assert [source for source, _ in opened] == sources
    assert isinstance(opened[1][1], ImageError)
    assert isinstance(opened[0][1], Image.Image) and isinstance(opened[2][1], Image.Image)


def test_pipeline_predicts_every_odd_image_and_reports_bad_ones(odd_folder, tmp_path):
    tagger = pipeline(
        "multi-label-image-classification", model=save_with_processor(small_srn({0: "cat", 1: "dog"}), tmp_path)
    )

    results = tagger(str(odd_folder), batch_size=4, threshold=0.0)
    assert sorted(results) == sorted(str(odd_folder / name) for name in [*GOOD, *BAD])
    for name in GOOD:
        assert [item["label"] for item in results[str(odd_folder / name)]] != []
    for name, (_, reason) in BAD.items():
        error = results[str(odd_folder / name)]
        assert isinstance(error, ImageError) and reason in str(error) and str(odd_folder / name) in str(error)

    one_by_one = tagger([str(odd_folder / "rgba.png"), str(odd_folder / "notes.jpg")], threshold=0.0)
    batched = results[str(odd_folder / "rgba.png")]
    assert [item["label"] for item in one_by_one[0]] == [item["label"] for item in batched]
    assert [item["score"] for item in one_by_one[0]] == pytest.approx([item["score"] for item in batched], abs=1e-5)
    with pytest.raises(ImageError, match="notes.jpg"):
        tagger(str(odd_folder / "notes.jpg"))
