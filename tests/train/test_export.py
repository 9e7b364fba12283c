"""geoclip 1.3.0's release format both ways.

* ``geofast export`` output loads with ``geoclip.GeoCLIP.from_pretrained`` (its backbone download
  pointed at the tiny test CLIP) and predicts what geofast predicts;
* a release written from geoclip's own modules loads into geofast and predicts what geoclip predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import geofast as gf
from geofast.train import export, synthetic, train


def _geoclip_from_release(folder: Path, tiny_clip_dir: Path, monkeypatch):
    import geoclip.model._hub as hub

    monkeypatch.setattr(hub, "download_backbone", lambda config, **_: str(tiny_clip_dir))  # no hub here
    from geoclip import GeoCLIP

    return GeoCLIP.from_pretrained(str(folder))


def _compare_predictions(ref, ours, paths, k=5):
    """Same top-k gallery points (order swaps only between near-equal probabilities) and the
    same probabilities, up to the reference's float32 Fourier phases (~1e-3 relative)."""
    from PIL import Image

    with torch.no_grad():
        pixels = torch.cat([ref.image_encoder.preprocess_image(Image.open(p).convert("RGB")) for p in paths])
        top = ref.forward(pixels, ref.gps_gallery).softmax(dim=-1).topk(k, dim=1)
    gallery = ref.gps_gallery.numpy().astype(np.float64)
    for pred, idx, prob in zip(ours.predict(paths, top_k=k, places=False), top.indices.numpy(), top.values.numpy()):
        our_ll = np.array([[c.lat, c.lon] for c in pred.candidates])
        our_p = np.array([c.prob for c in pred.candidates])
        tol = 1e-5 + 3e-3 * prob
        assert np.all(np.abs(our_p - prob) <= tol), (our_p, prob)
        for r in range(k):
            match = np.flatnonzero(np.abs(gallery[idx] - our_ll[r]).max(axis=1) < 1e-4)
            assert match.size, f"rank {r}: {our_ll[r]} not in the reference top-{k}"
            assert match[0] == r or abs(prob[match[0]] - prob[r]) <= tol[r], (r, prob)
    gps, prob = ref.predict(paths[0], top_k=k)  # and geoclip's own predict() path
    np.testing.assert_allclose(
        np.array([[c.lat, c.lon] for c in ours.predict(paths[:1], top_k=k, places=False)[0].candidates])[:1],
        gps.numpy()[:1],
        atol=1e-4,
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    synthetic.make_database(root / "db", synthetic.sample_points(300, 1), seed=2)
    return train(
        db=root / "db", out=root / "run", init="geoclip", epochs=1, batch_size=100, queue_size=64, lr=1e-3, val_fraction=0.0
    )


def test_export_loads_in_geoclip_and_predicts_what_geofast_predicts(trained_run, tiny_clip_dir, photo_dir, tmp_path, monkeypatch):
    out = tmp_path / "release"
    report = export(trained_run.run_dir, out)
    assert report.gallery_points == 300 and report.sigmas == (1.0, 16.0, 256.0)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "gallery.csv", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("model_type", "format_version", "sigma", "gallery_file")} == {
        "model_type": "geoclip-geolocation",
        "format_version": 1,
        "sigma": [1, 16, 256],
        "gallery_file": "gallery.csv",
    }
    ref = _geoclip_from_release(out, tiny_clip_dir, monkeypatch)
    ours = gf.Geolocator.from_pretrained(trained_run.run_dir, clip=tiny_clip_dir, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_allclose(ref.gps_gallery.numpy(), ours.gallery.latlon.astype(np.float32))
    assert abs(float(ref.logit_scale.detach().exp()) - ours.logit_scale) < 1e-4
    paths = sorted(str(p) for p in photo_dir.iterdir())[:6]
    _compare_predictions(ref, ours, paths)
    # The exported folder is a geofast model too, and re-exporting is stable.
    again = gf.Geolocator.from_pretrained(out, clip=tiny_clip_dir, cache_dir=tmp_path / "cache", progress=False)
    assert [p.candidates[0].lat for p in again.predict(paths[:2], places=False)] == [
        p.candidates[0].lat for p in ours.predict(paths[:2], places=False)
    ]


def _write_geoclip_release(model, folder: Path, gallery: np.ndarray) -> None:
    """A release written from geoclip's own modules, the way its from_pretrained reads them."""
    from safetensors.torch import save_file

    folder.mkdir()
    weights = {"logit_scale": model.logit_scale.detach().clone()}
    weights.update({f"location_encoder.{k}": v for k, v in model.location_encoder.state_dict().items()})
    weights.update({f"image_encoder.mlp.{k}": v for k, v in model.image_encoder.mlp.state_dict().items()})
    config = {
        "model_type": "geoclip-geolocation",
        "format_version": 1,
        "sigma": [1, 16, 256],
        "gallery_file": "coords.csv",
        "backbone": {"repo_id": "openai/clip-vit-large-patch14", "revision": "main"},
    }
    np.savetxt(folder / "coords.csv", gallery, delimiter=",", header="LAT,LON", comments="", fmt="%.6f")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.slow
def test_an_existing_geoclip_release_loads_into_geofast(tiny_clip_dir, photo_dir, tmp_path, monkeypatch):
    from geoclip import GeoCLIP

    from geofast.gallery import read_gallery_file
    from geofast.models import resolve

    base = GeoCLIP(from_pretrained=True, clip_path=str(tiny_clip_dir)).eval()
    gallery = read_gallery_file(resolve("geoclip").default_gallery)[::50]
    _write_geoclip_release(base, tmp_path / "rel", gallery)
    ref = _geoclip_from_release(tmp_path / "rel", tiny_clip_dir, monkeypatch)
    ours = gf.Geolocator.from_pretrained(tmp_path / "rel", clip=tiny_clip_dir, cache_dir=tmp_path / "cache", progress=False)
    paths = sorted(str(p) for p in photo_dir.iterdir())[:6]
    _compare_predictions(ref, ours, paths)
    # geofast's own export of the packaged model is such a release too.
    report = export("geoclip", tmp_path / "exported", gallery=gallery)
    assert report.backbone == {"repo_id": "openai/clip-vit-large-patch14", "revision": "main"}
    ref2 = _geoclip_from_release(tmp_path / "exported", tiny_clip_dir, monkeypatch)
    for name, p in ref.named_parameters():
        if not name.startswith("image_encoder.CLIP"):
            np.testing.assert_array_equal(p.detach().numpy(), dict(ref2.named_parameters())[name].detach().numpy(), err_msg=name)


def test_model_folder_errors(tmp_path, trained_run):
    (tmp_path / "release").mkdir()
    export(trained_run.run_dir, tmp_path / "release")
    (tmp_path / "release" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(gf.ModelError, match="cannot read weights"):
        gf.LocationEncoder.from_pretrained(tmp_path / "release")
    (tmp_path / "notempty").mkdir()
    (tmp_path / "notempty" / "x.txt").write_text("keep")
    with pytest.raises(gf.InputError, match="not empty"):
        export(trained_run.run_dir, tmp_path / "notempty")
    assert (tmp_path / "notempty" / "x.txt").read_text() == "keep"
