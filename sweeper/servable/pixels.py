"""Images to ``H x W x 3`` uint8 RGB pixels: the one decoder of training, ``predict`` and serving.

A served model is sent a file path, the file's bytes (base64 in JSON) or decoded pixels; all three end
as the pixels that decoding the file gives, so the model sees what ``prediction.csv`` saw.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXPECTED = "an image file path on the server, base64-encoded image file bytes, or an H x W x 3 uint8 array"
"""What a served model takes, said in every error about its input."""


class BadInput(ValueError):
    """An input the model cannot read as an image; the message names the input and what was expected."""


def decode(source: Path | str | bytes) -> np.ndarray:
    """Decode an image file (a path or its bytes), upright (EXIF orientation applied).

    Raises:
        PIL.UnidentifiedImageError, OSError, SyntaxError: not an image Pillow can decode, or cut short.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        ImageOps.exif_transpose(im, in_place=True)  # phone photos: pixels as the camera held them
        return to_rgb8(im)


def to_rgb8(im: Image.Image) -> np.ndarray:
    """``H x W x 3`` uint8 pixels; 16-bit and float images scaled to 8 bits (``convert`` would clip them).

    ``I;16*`` modes span 0..65535. ``I`` (32-bit int) and ``F`` (float) carry no depth, so the scale is
    the first of 255 (or 1 for float) and 65535 that holds the image's maximum, else its maximum.
    """
    if not (im.mode.startswith("I;16") or im.mode in ("I", "F")):
        # 48/64-bit PNGs already open as 8-bit RGB(A); an RGB image is not copied once more by convert
        return np.array(im if im.mode == "RGB" else im.convert("RGB"))
    a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    peak = float(a.max(initial=0.0))
    if im.mode.startswith("I;16"):
        top = 65535.0
    else:
        tops = (1.0, 255.0, 65535.0) if im.mode == "F" else (255.0, 65535.0)
        top = next((t for t in tops if peak <= t), peak)
    gray = np.rint(a * (255.0 / top)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def read(item: Any, i: int = 0) -> np.ndarray:
    """One input of a served model as pixels: a path, file bytes, base64 file bytes, or an array.

    A string names a file when one is there, else it must be base64 image bytes. Arrays are uint8
    ``H x W x C`` with C = 3 (RGB), 1 (gray) or 4 (RGBA, alpha dropped), as decoding their PNG would give.

    Raises:
        BadInput: naming input ``i`` and what was expected.
    """
    if isinstance(item, (str, Path)) and _is_file(item):
        return _decoded(Path(item), i, f"file {item}")
    if isinstance(item, Path):
        raise BadInput(f"input {i}: {item} is no file on the server; expected {EXPECTED}")
    if isinstance(item, str):
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            shown = item if len(item) <= 60 else item[:57] + "..."
            msg = f"input {i}: {shown!r} is no file on the server nor base64; expected {EXPECTED}"
            raise BadInput(msg) from None
        return _decoded(data, i, "base64 bytes")
    if isinstance(item, bytes):
        return _decoded(item, i, "bytes")
    return from_array(item, i)


def _decoded(source: Path | bytes, i: int, what: str) -> np.ndarray:
    try:
        return decode(source)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        unknown = isinstance(e, UnidentifiedImageError) or not str(e)
        reason = "no format Pillow reads" if unknown else str(e).splitlines()[0][:120]
        raise BadInput(f"input {i} ({what}) is not an image ({reason}); expected {EXPECTED}") from None


def _is_file(name: str | Path) -> bool:
    """A file is there; False for strings no file can be named (too long: base64 image bytes)."""
    try:
        return Path(name).is_file()
    except (OSError, ValueError):
        return False


def from_array(item: Any, i: int = 0) -> np.ndarray:
    """Decoded pixels (an array or nested lists) as ``H x W x 3`` uint8, or :class:`BadInput`."""
    try:
        arr = np.asarray(item)
    except ValueError:  # ragged nested lists
        arr = np.asarray([])
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or not _uint8(arr):
        raise BadInput(f"input {i}: got {_described(item, arr)}; expected {EXPECTED}")
    arr = arr.astype(np.uint8)
    return to_rgb8(Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr))


def _uint8(arr: np.ndarray) -> bool:
    """uint8 pixels, or integers in 0..255 (JSON has no uint8: an array sent as JSON arrives as int64)."""
    if arr.dtype == np.uint8:
        return True
    return arr.dtype.kind in "iu" and arr.size > 0 and int(arr.min()) >= 0 and int(arr.max()) <= 255


def _described(item: Any, arr: np.ndarray) -> str:
    if isinstance(item, (np.ndarray, list, tuple)):
        return f"an array of shape {tuple(arr.shape)} and type {arr.dtype}"
    return f"a {type(item).__name__}"
