"""``gf.LocationEncoder``: GPS embeddings without any backbone, equal to geoclip's / geomapclip's
location encoders (evaluated in float64: the released float32 phases are off by ~2e-3 rad at σ = 256)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import geofast as gf
from geofast.train import synthetic


def test_location_encoder_needs_no_backbone_and_equals_the_references(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOFAST_CLIP", str(tmp_path / "no-such-clip"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from geoclip import LocationEncoder as GeoCLIPLocation

    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-85, 85, 500), rng.uniform(-180, 180, 500)]).astype(np.float32).astype(np.float64)
    ref = GeoCLIPLocation().double().eval()  # the released encoder, evaluated in float64 (exact phases)
    with torch.no_grad():
        raw = ref(torch.from_numpy(pts)).numpy()
    enc = gf.LocationEncoder.from_pretrained("geoclip")
    assert enc.sigmas == (1.0, 16.0, 256.0) and enc.dim == 512
    np.testing.assert_allclose(enc.encode(pts, normalize=False), raw, atol=2e-4, rtol=1e-4)
    unit = enc(pts)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=2e-5)
    assert enc.encode([48.85, 2.35]).shape == (1, 512)
    with pytest.raises(gf.CoordinateError):
        enc.encode([[91.0, 0.0]])
    # A location-encoder-only release (geoclip.LocationEncoder.from_pretrained's format).
    from safetensors.torch import save_file

    (tmp_path / "loc").mkdir()
    save_file({k: v.contiguous() for k, v in ref.float().state_dict().items()}, str(tmp_path / "loc" / "model.safetensors"))
    config = {"model_type": "geoclip-location-encoder", "format_version": 1, "sigma": [1, 16, 256]}
    (tmp_path / "loc" / "config.json").write_text(json.dumps(config))
    loaded = GeoCLIPLocation.from_pretrained(str(tmp_path / "loc"))
    with torch.no_grad():
        ref_loc = torch.nn.functional.normalize(loaded.double()(torch.from_numpy(pts)), dim=1).numpy()
    np.testing.assert_allclose(gf.LocationEncoder.from_pretrained(tmp_path / "loc").encode(pts), ref_loc, atol=2e-5)


def test_geomapclip_location_encoder(monkeypatch):
    from geomapclip.model.location_encoder import LocationEncoder as MapLocation

    pts = synthetic.sample_points(200, 3)
    ref = MapLocation().double().eval()
    with torch.no_grad():
        raw = ref(torch.from_numpy(pts)).numpy()
    np.testing.assert_allclose(
        gf.LocationEncoder.from_pretrained("geomapclip").encode(pts, normalize=False), raw, atol=2e-4, rtol=1e-4
    )


def test_location_encoder_model_errors(tmp_path):
    with pytest.raises(gf.ModelError, match="unknown model"):
        gf.LocationEncoder.from_pretrained("geonope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(gf.ModelError, match="neither a model folder"):
        gf.LocationEncoder.from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert", "format_version": 1}))
    with pytest.raises(gf.ModelError, match="not a geoclip release"):
        gf.LocationEncoder.from_pretrained(bad)
