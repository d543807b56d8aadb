"""A served model's inputs: a path, file bytes, base64 bytes and arrays all read as the file's pixels."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sweeper.servable import pixels


@pytest.fixture
def png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)).save(path)  # RGBA: alpha dropped
    return path


def test_every_form_of_an_image_reads_as_its_decoded_pixels(png: Path) -> None:
    want = pixels.decode(png)
    data = png.read_bytes()
    rgba = np.asarray(Image.open(png))
    forms = [str(png), png, data, base64.b64encode(data).decode(), want, want.tolist(), rgba, want[..., :1]]
    got = [pixels.read(x) for x in forms]
    assert want.shape == (5, 7, 3) and want.dtype == np.uint8
    assert all(np.array_equal(g, want) for g in got[:7])
    assert np.array_equal(got[7], np.repeat(want[..., :1], 3, axis=2))  # gray: one channel to three


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("no-such/file.png", "'no-such/file.png' is no file on the server nor base64"),
        (Path("no-such.png"), "no-such.png is no file on the server"),
        (base64.b64encode(b"not an image").decode(), "(base64 bytes) is not an image (no format Pillow"),
        (b"not an image", "(bytes) is not an image"),
        (np.zeros((4, 4, 3), np.float32), "an array of shape (4, 4, 3) and type float32"),
        ([[1, 2], [3, 4]], "an array of shape (2, 2) and type int64"),
        ([[[300, 0, 0]]], "an array of shape (1, 1, 3) and type int64"),
        ({"image": "x"}, "got a dict"),
    ],
)
def test_an_unreadable_input_names_itself_and_what_was_expected(item: object, says: str) -> None:
    with pytest.raises(pixels.BadInput) as e:
        pixels.read(item, 3)
    assert str(e.value).startswith("input 3") and says in str(e.value)
    assert str(e.value).endswith(f"expected {pixels.EXPECTED}") and "\n" not in str(e.value)
