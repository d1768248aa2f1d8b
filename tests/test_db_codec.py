import numpy as np
import pytest

from db.codec import decode_map, encode_map, encode_maps


@pytest.mark.parametrize("g", [4, 16, 24])
def test_round_trip_keeps_map_within_half_a_level(g):
    m = np.random.default_rng(g).gamma(2.0, 3.0, size=(g, g)).astype(np.float32)
    blob, peak = encode_map(m)
    assert len(blob) == g * g and peak == pytest.approx(m.max())
    decoded = decode_map(blob, peak)
    assert decoded.dtype == np.float32 and decoded.shape == (g, g)
    np.testing.assert_allclose(decoded, m, atol=m.max() / 510 + 1e-6)
    assert np.unravel_index(decoded.argmax(), m.shape) == np.unravel_index(m.argmax(), m.shape)


def test_all_zero_map_encodes_as_zero_bytes_and_decodes_to_zeros():
    blob, peak = encode_map(np.zeros((24, 24)))
    assert blob == bytes(576) and peak == 0.0
    np.testing.assert_array_equal(decode_map(blob, peak), np.zeros((24, 24), np.float32))


def test_blob_is_row_major_uint8_scaled_to_255():
    blob, peak = encode_map(np.array([[0.0, 1.0], [2.0, 4.0]]))
    assert list(blob) == [0, 64, 128, 255] and peak == 4.0


@pytest.mark.parametrize("bad", [np.ones((3, 4)), np.ones(9), -np.ones((2, 2)), np.full((2, 2), np.nan)])
def test_encode_rejects_non_square_negative_or_nan_maps(bad):
    with pytest.raises(ValueError):
        encode_map(bad)


def test_decode_rejects_a_blob_that_is_not_a_square_grid():
    with pytest.raises(ValueError, match="square"):
        decode_map(bytes(10), 1.0)


def test_encode_maps_matches_encode_map_per_map_zero_maps_included():
    maps = np.random.default_rng(0).uniform(size=(5, 24, 24)).astype(np.float32)
    maps[2] = 0.0
    blobs, peaks = encode_maps(maps)
    assert peaks.dtype == np.float32 and len(blobs) == 5
    for m, blob, peak in zip(maps, blobs, peaks, strict=True):
        assert (blob, float(peak)) == encode_map(m)
