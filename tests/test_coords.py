import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from florence2.coords import (
    LOC_PATTERN,
    NUM_BINS,
    box_to_loc_tokens,
    dequantize,
    dequantize_flat,
    loc_tokens,
    parse_loc_tokens,
    quantize,
    quantize_flat,
)
from florence2.errors import TaskError


def test_quantize_floor_and_clamp():
    # 640 px wide: a bin is 0.64 px; 480 px high: 0.48 px.
    points = [[0, 0], [34.24, 160.08], [639.99, 479.99], [640, 480], [-5, 1e6]]
    assert quantize(points, (640, 480)).tolist() == [[0, 0], [53, 333], [999, 999], [999, 999], [0, 999]]
    assert quantize(points, (640, 480)).dtype == np.int64


def test_dequantize_bin_centres():
    assert dequantize([53, 53], (1000, 1000)).tolist() == [53.5, 53.5]
    # Reference §5.3: OVD 'a green car' on 640x480 -> [34.24, 158.64, 582.72, 374.16].
    box = dequantize_flat([53, 330, 910, 779], (640, 480))
    assert box.tolist() == [34.24, 158.64, 582.72, 374.16]
    assert box.dtype == np.float64
    # Out-of-range bins (e.g. <loc_1000> in generated text) extrapolate instead of failing.
    assert dequantize([1000, 1000], (1000, 1000)).tolist() == [1000.5, 1000.5]


def test_reference_round_trip_800x1200():
    # Reference §5.2 (native truncates to int; we keep float bin centres).
    size = (800, 1200)
    boxes = np.array([[0, 0, 30, 40], [500, 550, 600, 690], [750, 1121, 851, 1239]])
    expected = [[0, 0, 30, 40], [500, 550, 600, 690], [750, 1121, 799, 1199]]
    assert dequantize_flat(quantize_flat(boxes, size), size).astype(int).tolist() == expected
    points = np.array([[0, 0], [300, 400], [850, 1250]])
    assert dequantize(quantize(points, size), size).astype(int).tolist() == [[0, 0], [300, 400], [799, 1199]]


def test_flat_shapes_are_kept():
    size = (1000, 500)
    quads = np.arange(24, dtype=float).reshape(3, 8) * 10
    assert quantize_flat(quads, size).shape == (3, 8)
    assert quantize_flat(quads, size)[0, :4].tolist() == [0, 20, 20, 60]
    assert dequantize_flat(np.zeros((2, 3, 6), dtype=int), size).shape == (2, 3, 6)
    assert dequantize_flat([], size).tolist() == []


@pytest.mark.parametrize("bad", [[1, 2, 3], [[1, 2, 3]], 5])
def test_bad_point_shapes(bad):
    with pytest.raises(TaskError):
        quantize(bad, (100, 100))
    with pytest.raises(TaskError):
        quantize_flat([1, 2, 3], (100, 100))


@pytest.mark.parametrize("size", [(0, 100), (100, -1), (100,), (float("nan"), 5)])
def test_bad_image_size(size):
    with pytest.raises(TaskError):
        quantize([[1, 1]], size)


def test_loc_tokens_and_parse():
    text = loc_tokens(np.array([[53, 334], [933, 775]]))
    assert text == "<loc_53><loc_334><loc_933><loc_775>"
    assert parse_loc_tokens("car" + text + "x<loc_1000>") == [53, 334, 933, 775, 1000]
    assert [m.group(1) for m in LOC_PATTERN.finditer("<loc_7><loc_x><loc_8>")] == ["7", "8"]
    assert parse_loc_tokens("<loc_" + "9" * 5000 + ">") == [10**18]  # saturates, no crash
    with pytest.raises(TaskError):
        loc_tokens([NUM_BINS])
    with pytest.raises(TaskError):
        loc_tokens([1.5])


def test_box_to_loc_tokens():
    assert box_to_loc_tokens([34, 160, 597, 371], (640, 480)) == "<loc_53><loc_333><loc_932><loc_772>"
    with pytest.raises(TaskError):
        box_to_loc_tokens([1, 2, 3], (640, 480))


sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))


@given(sizes, st.data())
def test_round_trip_within_one_bin(size, data):
    points = np.array(
        data.draw(
            st.lists(
                st.tuples(
                    st.floats(0, size[0], allow_nan=False, exclude_max=True),
                    st.floats(0, size[1], allow_nan=False, exclude_max=True),
                ),
                min_size=1,
                max_size=8,
            )
        )
    )
    back = dequantize(quantize(points, size), size)
    bin_size = np.array(size) / NUM_BINS
    assert np.all(np.abs(back - points) <= bin_size * (0.5 + 1e-9))


@given(sizes, st.lists(st.integers(0, NUM_BINS - 1), min_size=2, max_size=20).filter(lambda b: len(b) % 2 == 0))
def test_bins_round_trip_exactly(size, bins):
    assert quantize_flat(dequantize_flat(bins, size), size).tolist() == bins
