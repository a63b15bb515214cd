"""Letterbox pre-processing and the way back to source pixels."""

from __future__ import annotations

import numpy as np
import pytest

from edged.inference.preprocess import Letterbox, letterbox

GREY = 114 / 255


def bgr(width: int, height: int, colour: tuple[int, int, int]) -> np.ndarray:
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = colour
    return img


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("size", [(320, 320), (256, 384)])
def test_shape_dtype_and_range(size, dtype):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(360, 640, 3), dtype=np.uint8)
    blob, _ = letterbox(img, size, dtype)
    assert blob.shape == (1, 3, *size)
    assert blob.dtype == dtype
    assert blob.flags.c_contiguous
    assert 0.0 <= float(blob.min()) and float(blob.max()) <= 1.0
    assert float(blob.max()) > 0.9 and float(blob.min()) < 0.1  # scaled by 1/255, not clipped or left 0..255


@pytest.mark.parametrize("source_wh, size, scale, pad_x, pad_y", [
    ((640, 360), (320, 320), 0.5, 0, 70),  # wide: padding above and below
    ((300, 500), (320, 320), 0.64, 64, 0),  # tall: padding left and right
    ((320, 320), (320, 320), 1.0, 0, 0),  # already the right size: no resize, no padding
    ((640, 360), (256, 320), 0.5, 0, 38),  # non-square input
])
def test_transform(source_wh, size, scale, pad_x, pad_y):
    _, t = letterbox(bgr(*source_wh, (0, 0, 0)), size)
    assert t == Letterbox(scale=pytest.approx(scale), pad_x=pad_x, pad_y=pad_y,
                          source_width=source_wh[0], source_height=source_wh[1])


def test_padding_is_grey_114_on_y():
    blob, t = letterbox(bgr(640, 360, (10, 20, 30)), (320, 320))
    assert (t.pad_x, t.pad_y) == (0, 70)
    for area in (blob[0, :, :70, :], blob[0, :, 250:, :]):
        np.testing.assert_allclose(area, GREY, atol=1e-6)
    content = blob[0, :, 70:250, :]
    np.testing.assert_allclose(content[0], 30 / 255, atol=1e-6)  # R
    np.testing.assert_allclose(content[1], 20 / 255, atol=1e-6)  # G
    np.testing.assert_allclose(content[2], 10 / 255, atol=1e-6)  # B


def test_padding_is_grey_114_on_x_with_the_odd_pixel_on_the_right():
    # 301x500 into 320x320: scale 0.64, 193 columns of picture, 127 of padding: 63 left, 64 right.
    blob, t = letterbox(bgr(301, 500, (255, 255, 255)), (320, 320))
    assert (t.pad_x, t.pad_y) == (63, 0)
    np.testing.assert_allclose(blob[0, :, :, :63], GREY, atol=1e-6)
    np.testing.assert_allclose(blob[0, :, :, 63 + 193:], GREY, atol=1e-6)
    np.testing.assert_allclose(blob[0, :, :, 63:63 + 193], 1.0, atol=1e-6)


def test_rgb_order():
    blob, _ = letterbox(bgr(320, 320, (255, 0, 0)), (320, 320))  # pure blue in BGR
    np.testing.assert_array_equal(blob[0, 2], 1.0)
    np.testing.assert_array_equal(blob[0, 0], 0.0)
    np.testing.assert_array_equal(blob[0, 1], 0.0)


def test_pixels_land_where_the_transform_says():
    # A white square in a black 640x360 image: at scale 0.5 and pad_y 70 it must show at the mapped place.
    img = bgr(640, 360, (0, 0, 0))
    img[100:200, 300:400] = 255
    blob, t = letterbox(img, (320, 320))
    plane = blob[0, 1]
    assert plane[70 + 50 + 2: 70 + 100 - 2, 150 + 2: 200 - 2].min() == pytest.approx(1.0)
    assert plane[70:70 + 50 - 2, :].max() == pytest.approx(0.0)
    assert plane[70 + 100 + 2:250, :].max() == pytest.approx(0.0)


@pytest.mark.parametrize("source_wh, size", [((640, 360), (320, 320)), ((300, 500), (320, 320)),
                                             ((1280, 720), (384, 640)), ((333, 777), (640, 640))])
def test_to_source_round_trip(source_wh, size):
    w, h = source_wh
    _, t = letterbox(bgr(w, h, (0, 0, 0)), size)
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, [w * 0.7, h * 0.7], size=(50, 2))
    wh = rng.uniform(1, [w * 0.3, h * 0.3], size=(50, 2))
    source = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    model = source * t.scale + np.array([t.pad_x, t.pad_y, t.pad_x, t.pad_y], dtype=np.float32)
    back = t.to_source(model)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, source, rtol=1e-5, atol=1e-3)


def test_to_source_clips_to_the_image():
    t = Letterbox(scale=0.5, pad_x=0, pad_y=70, source_width=640, source_height=360)
    boxes = np.array([[-10, 40, 330, 300], [100, 100, 120, 120]], dtype=np.float32)
    np.testing.assert_allclose(t.to_source(boxes), [[0, 0, 640, 360], [200, 60, 240, 100]])
