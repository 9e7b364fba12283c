"""gf.equal_earth against GeoCLIP's own torch projection and a float64 numpy transcription."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from benches.reference import numpy_equal_earth

import geofast as gf
from conftest import random_latlon


def test_matches_float64_formula():
    pts = random_latlon(10_000, 1)
    np.testing.assert_allclose(gf.equal_earth(pts), numpy_equal_earth(pts), rtol=1e-13, atol=1e-15)


def test_matches_geoclip_torch_code():
    from geoclip.model.location_encoder import equal_earth_projection

    pts = random_latlon(5_000, 2)
    ref = equal_earth_projection(torch.tensor(pts, dtype=torch.float64)).numpy()
    # GeoCLIP computes sqrt(3) in float32; everything else is float64 here.
    np.testing.assert_allclose(gf.equal_earth(pts), ref, rtol=1e-7, atol=1e-9)
    ref32 = equal_earth_projection(torch.tensor(pts, dtype=torch.float32)).numpy()
    assert np.max(np.abs(gf.equal_earth(pts) - ref32)) < 2e-6


def test_float32_and_strided_inputs_read_in_place():
    pts = random_latlon(1_000, 3)
    expected = gf.equal_earth(pts)
    f32 = pts.astype(np.float32)
    np.testing.assert_allclose(gf.equal_earth(f32), numpy_equal_earth(f32.astype(np.float64)), rtol=1e-13, atol=1e-15)
    fortran = np.asfortranarray(pts)
    np.testing.assert_array_equal(gf.equal_earth(fortran), expected)
    wide = np.zeros((1_000, 5))
    wide[:, 1] = pts[:, 0]
    wide[:, 3] = pts[:, 1]
    np.testing.assert_array_equal(gf.equal_earth(wide[:, 1::2]), expected)
    np.testing.assert_array_equal(gf.equal_earth(pts.tolist()), expected)


def test_edges_poles_and_antimeridian():
    pts = np.array([[90.0, 0.0], [-90.0, 0.0], [0.0, 180.0], [0.0, -180.0], [0.0, 0.0]])
    np.testing.assert_allclose(gf.equal_earth(pts), numpy_equal_earth(pts), rtol=1e-14, atol=1e-16)
    assert gf.equal_earth(np.zeros((0, 2))).shape == (0, 2)


@pytest.mark.parametrize(
    ("bad", "error", "text"),
    [
        ([[91.0, 0.0]], gf.CoordinateError, "latitude 91"),
        ([[0.0, -180.5]], gf.CoordinateError, "longitude -180.5"),
        ([[0.0, 0.0], [np.nan, 0.0]], gf.CoordinateError, "latlon[1] is not finite"),
        ([[np.inf, 0.0]], gf.CoordinateError, "not finite"),
        ([1.0, 2.0], gf.ShapeError, "2-D"),
        (np.zeros((4, 3)), gf.ShapeError, "(N, 2), got (4, 3)"),
        ("abc", gf.InputError, "numeric array"),
    ],
)
def test_bad_input_raises_clear_value_error(bad, error, text):
    with pytest.raises(error) as info:
        gf.equal_earth(bad)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, gf.GeofastError)
    assert text in str(info.value)
    assert "\n" not in str(info.value)


def test_dense_latitude_sweep_and_tiles_match_formula():
    """The vectorised kernel (polynomial sin/atan in tiles) over a dense sweep including the
    poles, the equator and tile boundaries, against the float64 numpy transcription."""
    lat = np.concatenate([np.linspace(-90, 90, 200_001), [90 - 1e-9, -90 + 1e-9, 1e-300, -1e-12]])
    lon = np.resize(np.linspace(-180, 180, 7_919), lat.size)
    pts = np.column_stack([lat, lon])
    np.testing.assert_allclose(gf.equal_earth(pts), numpy_equal_earth(pts), rtol=1e-13, atol=1e-16)
    # Any split into calls gives the same rows (tiles and chunks are invisible).
    parts = np.vstack([gf.equal_earth(pts[i : i + 1_234]) for i in range(0, len(pts), 1_234)])
    np.testing.assert_array_equal(parts, gf.equal_earth(pts))
