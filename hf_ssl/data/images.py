"""Turn whatever an image column holds into an RGB PIL image, or say clearly that it cannot.

Datasets in the wild mix modes: grey (L), palette (P), alpha (RGBA, LA), print (CMYK) and
16-bit scans (I;16, I). Every method expects 3-channel 8-bit input, so every image goes
through `to_rgb`; undecodable samples raise `UndecodableImageError`, which the stream counts
and skips instead of crashing the run. `decode_image` is the one decoder of hf-ssl: training,
evaluation and the card's figures all read images through it, so an image is seen the same way
(upright per its EXIF orientation, transparency on white, 16-bit rescaled) wherever it is used.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps


class UndecodableImageError(ValueError):
    """A sample whose image is missing, truncated, not an image at all, or too large to decode."""


# Decoded pixels allowed per image, checked from the header before anything is decoded. Pillow
# only warns below its own hard limit (twice its MAX_IMAGE_PIXELS), so a single-colour PNG of a few
# hundred KB and 12000 x 12000 pixels would be decoded to gigabytes in every DataLoader worker that
# meets it. 8000 x 8000 is above the photos vision datasets hold.
MAX_DECODED_PIXELS = 64_000_000


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _high_bit_depth_to_grey(image: Image.Image) -> Image.Image:
    """Scale a 16-bit (I;16), 32-bit integer (I) or float (F) image to 8-bit grey.

    Pillow's own ``convert("L")`` clips values above 255 instead of rescaling them, which turns
    a 16-bit scan into a white page; here 16-bit ranges are divided by 257 (65535 -> 255).
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode in _SIXTEEN_BIT_MODES:
        values = values / 257.0
    elif image.mode == "I":
        # 32-bit containers usually hold 16-bit data (PNG-16 opens as "I"); 8-bit data stays as is.
        maximum = float(values.max()) if values.size else 0.0
        if maximum > 65535:
            minimum = float(values.min())
            values = (values - minimum) * (255.0 / max(maximum - minimum, 1.0))
        elif maximum > 255:
            values = values / 257.0
    elif image.mode == "F":
        maximum = float(values.max()) if values.size else 0.0
        if maximum <= 1.0:
            values = values * 255.0
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return `image` as an 8-bit RGB image; transparent areas are composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return _high_bit_depth_to_grey(image).convert("RGB")
    if image.mode == "P":
        # A palette may carry transparency; going through RGBA keeps it for the composite below.
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _check_pixel_count(image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_DECODED_PIXELS:
        raise UndecodableImageError(
            f"the image is {width} x {height} = {width * height:,} pixels, above the {MAX_DECODED_PIXELS:,}-pixel "
            "decoding limit (a decompression bomb, or an image to downscale before training)"
        )


def _cell_path(value: Any) -> str | None:
    """The file an image cell came from, when it says (imagefolder and parquet cells carry one)."""
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return value if isinstance(value, str) else None


def _open_image(value: Any) -> Image.Image:
    """Open one image cell lazily (Pillow reads the header; pixels wait for ``load()``)."""
    if value is None:
        raise UndecodableImageError("the image cell is empty (None)")
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
        raise UndecodableImageError("the image cell has neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(value)))
    if isinstance(value, str):
        return Image.open(value)
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    raise UndecodableImageError(f"cannot decode an image from a {type(value).__name__}")


def _read(value: Any, read: Callable[[Image.Image], Any]) -> Any:
    """``read(_open_image(value))``, any failure an `UndecodableImageError` naming the cell's file."""
    try:
        return read(_open_image(value))
    except UndecodableImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, TypeError) as error:
        path = _cell_path(value)
        detail = str(error).split(" <_io.BytesIO")[0]  # from bytes Pillow names a BytesIO object, not the file
        if path and path not in detail:
            detail = f"{path}: {detail}"
        raise UndecodableImageError(f"{type(error).__name__}: {detail}") from error


def _decode(image: Image.Image) -> Image.Image:
    _check_pixel_count(image)  # from the header: Pillow has decoded nothing yet
    # Pillow decodes lazily: load() forces the full decode so truncated files fail here.
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def decode_image(value: Any) -> Image.Image:
    """Decode one image cell (PIL image, ``{"bytes", "path"}`` dict, bytes, path, array) to upright RGB.

    The EXIF orientation is applied (a phone photo tagged "rotate 90" is returned upright, as
    `datasets` and browsers show it), then `to_rgb`.

    Raises:
        UndecodableImageError: the cell is empty, truncated, not an image, or has more than
            `MAX_DECODED_PIXELS` pixels; the message names the cell's file when it has one.
    """
    return _read(value, _decode)


def image_dimensions(value: Any) -> tuple[int, int]:
    """``(width, height)`` of one image cell from its header alone (no pixel decoding).

    Raises:
        UndecodableImageError: as `decode_image`, for what the header shows.
    """
    return _read(value, lambda image: image.size)
