"""Opening images robustly for prediction: every odd file becomes an RGB image, or an error naming the file.

`open_image(source)` returns a PIL image in RGB, upright, with 8 bits per channel:

    grayscale (L, 1-bit), palette (P)     converted to RGB
    RGBA, LA, PA, palette transparency    composited on white (a transparent background reads as paper, not black)
    CMYK                                  converted to RGB (Pillow's conversion)
    16-bit and 32-bit grayscale PNG/TIFF  rescaled to 8 bits (Pillow's own RGB conversion would clip them to white)
    EXIF orientation                      applied (`ImageOps.exif_transpose`): the image is upright
    any size down to 1 x 1                opened; the image processor warps it to the model's input size

and raises `ImageError` (a `ValueError` whose message starts with the file name) for a missing file, a file that is
not an image, a truncated or corrupt file (unless the caller set Pillow's
`ImageFile.LOAD_TRUNCATED_IMAGES`), and an image with more pixels than the decompression-bomb guard allows
(`max_pixels`, by default Pillow's `PIL.Image.MAX_IMAGE_PIXELS`, about 89 megapixels; its header is read, its
pixels never decoded).

`list_image_files(folder)` lists the images of a folder, and `open_images(sources)` opens many, yielding the
`ImageError` in place of a bad file so that one bad file never stops a batch. `decode_image(cell)` decodes a cell
of a `datasets.Image(decode=False)` column (a file or bytes), with the same words for a bad image.
"""

import io
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# What Pillow raises for an image it cannot open or decode (see `pillow_failure`).
PILLOW_ERRORS = (Image.DecompressionBombError, OSError, SyntaxError, ValueError)
# File name endings Pillow can open (".jpg", ".png", ".webp", ...), the files `list_image_files` picks in a folder.
IMAGE_EXTENSIONS = frozenset(extension.lower() for extension in Image.registered_extensions())


class ImageError(ValueError):
    """An image that cannot be opened or predicted; `source` names the file (or the object) and the message too."""

    def __init__(self, source, reason: str | None = None):
        if reason is None:  # re-raised from a DataLoader worker: torch passes its message, which ends with ours
            message = str(source).strip().splitlines()[-1].split("ImageError: ", 1)[-1]
            source, _, reason = message.partition(": ")
        self.source = source
        self.reason = reason
        super().__init__(f"{describe_source(source)}: {reason}")


def describe_source(source) -> str:
    """A short name for an image source in messages: the path, or the type of an in-memory image."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return f"PIL image ({source.mode}, {source.width}x{source.height})"
    return f"{type(source).__name__} image"


def list_image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """The image files of `folder` (by extension, see `IMAGE_EXTENSIONS`), sorted, hidden files left out.

    A file with an image extension that turns out not to be an image is listed: `open_image` reports it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(folder, "is not a folder")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.is_file()
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def open_image(source: str | os.PathLike | Image.Image | np.ndarray, max_pixels: int | None = None) -> Image.Image:
    """Opens `source` (a path, a PIL image or an H x W (x C) uint8 array) as an upright 8-bit RGB PIL image.

    Args:
        source: the image file, or an image already in memory.
        max_pixels: decompression-bomb guard: width * height above it raises `ImageError` before any pixel is
            decoded. Defaults to `PIL.Image.MAX_IMAGE_PIXELS` at call time; Pillow itself refuses images above twice
            that value, so raise `PIL.Image.MAX_IMAGE_PIXELS` too to open larger ones.

    Raises:
        ImageError: the file is missing, not an image, truncated or corrupt, or too large; the message names it.
    """
    if isinstance(source, np.ndarray):
        return to_rgb(array_to_image(source))
    if isinstance(source, Image.Image):
        check_size(source, source.size, max_pixels)
        return to_rgb(ImageOps.exif_transpose(source))
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"an image must be a path, a PIL image or a numpy array, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise ImageError(source, "no such file" if not path.exists() else "is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own guard below is the check
            image = Image.open(path)
        check_size(source, image.size, max_pixels)
        image.load()  # decode now, so that a truncated file fails here, naming the file
        return to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except PILLOW_ERRORS as error:
        raise pillow_failure(source, error) from error


def pillow_failure(source, error: Exception) -> ImageError:
    """The `ImageError` naming `source` for what Pillow raised (one of `PILLOW_ERRORS`): the one wording of a bad
    image, whether a file or a dataset's cell ([`decode_image`])."""
    if isinstance(error, Image.DecompressionBombError):
        return ImageError(source, f"too large for Pillow's decompression-bomb guard ({error})")
    if isinstance(error, UnidentifiedImageError):
        return ImageError(source, "not an image file Pillow can read")
    return ImageError(source, f"truncated or corrupt ({error})")  # Pillow raises OSError, SyntaxError or ValueError


def decode_image(image: dict, draft: bool = False, name: str | None = None) -> Image.Image:
    """The PIL image of a `datasets.Image(decode=False)` cell (`{"path", "bytes"}`), decoded as `datasets.Image` does
    (fully, EXIF orientation applied): the one decoder of dataset cells (training, `srn-hf predict --data`, the
    model's example images).

    `draft` decodes a JPEG at 1/8 scale (every byte of it is still read). Raises [`ImageError`] naming the image
    (`name`, else the file, else "image bytes") for a missing, empty, truncated or corrupt file, or one that is not
    an image, in the words of [`pillow_failure`].
    """
    path, data = image.get("path"), image.get("bytes")
    name = name or path or "image bytes"
    if not data:
        if path is None:
            raise ImageError(name, "the row holds neither a file nor image bytes")
        if not os.path.isfile(path):
            raise ImageError(name, "no such file")
        if os.path.getsize(path) == 0:
            raise ImageError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data) if data else path)
            if draft and picture.format == "JPEG":
                picture.draft(picture.mode, (max(1, picture.width // 8), max(1, picture.height // 8)))
            picture.load()
            if not draft and picture.getexif().get(ExifTags.Base.Orientation) is not None:
                picture = ImageOps.exif_transpose(picture)  # as `datasets.Image` decodes it
        return picture
    except PILLOW_ERRORS as error:
        raise pillow_failure(name, error) from None


def check_size(source, size: tuple[int, int], max_pixels: int | None) -> None:
    """The decompression-bomb guard: refuses width * height above `max_pixels` (default: Pillow's limit)."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    width, height = size
    if limit is not None and width * height > limit:
        raise ImageError(
            source,
            f"{width}x{height} = {width * height} pixels exceeds the decompression-bomb guard of {limit} pixels; "
            "if you trust the file, pass a larger max_pixels (and raise PIL.Image.MAX_IMAGE_PIXELS)",
        )
    if width < 1 or height < 1:
        raise ImageError(source, f"has no pixels ({width}x{height})")


def array_to_image(array: np.ndarray) -> Image.Image:
    """An H x W or H x W x C (C = 1, 3 or 4) array as a PIL image (uint16 arrays are rescaled to 8 bits)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image array must be H x W or H x W x 3/4, got shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must hold uint8 (or uint16) values, got {array.dtype}")
    return Image.fromarray(array)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: transparency composited on white, high bit depths rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data (PNG, TIFF) spans 0..65535; float images are taken to span 0..1 where they fit in it.
        top = 1.0 if image.mode == "F" and values.max(initial=0) <= 1.0 else 65535.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_images(
    sources: Iterable[str | os.PathLike | Image.Image | np.ndarray], max_pixels: int | None = None
) -> Iterator[tuple[object, Image.Image | ImageError]]:
    """Opens each source in turn, yielding `(source, image)`, or `(source, ImageError)` for a bad one."""
    for source in sources:
        try:
            yield source, open_image(source, max_pixels=max_pixels)
        except ImageError as error:
            yield source, error


__all__ = ["ImageError", "IMAGE_EXTENSIONS", "decode_image", "list_image_files", "open_image", "open_images"]
