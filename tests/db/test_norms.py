"""Databases keep each photo's CLIP feature norm (``norms.npy``): row × norm is the raw feature.

GeoCLIP's image MLP takes the unnormalised projected CLIP feature, so training from a database
needs the norm the build divided by. Checked against transformers' own CLIP, through build, an
in-place ``add``, a rebuild and ``from_arrays``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from conftest import make_photo
from geofast.db import Database
from geofast.db.format import NORMS


def raw_features(clip_dir, paths) -> np.ndarray:
    """transformers' CLIP image features (unnormalised), independent of geofast's loader."""
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    proc = CLIPImageProcessor.from_pretrained(clip_dir)
    ims = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=proc(images=ims, return_tensors="pt")["pixel_values"])
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return out.numpy().astype(np.float64)


def _photos(folder, n, seed):
    folder.mkdir()
    return [make_photo(folder / f"p{i}.jpg", seed=seed + i, size=(140, 100)) for i in range(n)]


def test_build_and_add_keep_the_feature_norms(tmp_path, tiny_clip_dir):
    paths = _photos(tmp_path / "a", 7, 300)
    (tmp_path / "a.csv").write_text("image,lat,lon\n" + "".join(f"{p},{i},{2 * i}\n" for i, p in enumerate(paths)))
    Database.build(tmp_path / "a.csv", tmp_path / "db", clip=tiny_clip_dir, device="cpu", chunk_size=3, batch_size=2, dtype="f32")
    db = Database.open(tmp_path / "db", verify=True)
    raw = raw_features(tiny_clip_dir, paths)
    assert db.norms is not None and db.norms.dtype == np.float32 and db.norms.shape == (7,)
    np.testing.assert_allclose(np.asarray(db.norms), np.linalg.norm(raw, axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(db.embeddings) * np.asarray(db.norms)[:, None], raw, rtol=1e-4, atol=1e-5)

    more = _photos(tmp_path / "b", 3, 400)
    (tmp_path / "b.csv").write_text("image,lat,lon\n" + "".join(f"{p},{-i},{-2 * i}\n" for i, p in enumerate(more)))
    report = Database.add(tmp_path / "db", tmp_path / "b.csv")
    assert report.added == 3
    grown = Database.open(tmp_path / "db", verify=True)
    assert "segments" in grown.manifest["files"][NORMS] and len(grown.manifest["files"][NORMS]["segments"]) == 2  # in place
    np.testing.assert_allclose(
        np.asarray(grown.norms), np.linalg.norm(raw_features(tiny_clip_dir, paths + more), axis=1), rtol=1e-5
    )


def test_from_arrays_keeps_norms_only_when_it_normalises(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((50, 16)) * rng.uniform(0.5, 30.0, (50, 1))
    ll = np.column_stack([rng.uniform(-80, 80, 50), rng.uniform(-180, 180, 50)])
    db = Database.from_arrays(tmp_path / "a", emb, ll, dtype="f32")
    np.testing.assert_allclose(np.asarray(db.norms), np.linalg.norm(emb, axis=1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(db.embeddings) * np.asarray(db.norms)[:, None], emb, rtol=1e-5, atol=1e-5)
    kept = Database.from_arrays(tmp_path / "b", emb, ll, dtype="f32", normalize=False)
    assert kept.norms is None and NORMS not in kept.manifest["files"]
    np.testing.assert_allclose(np.asarray(kept.embeddings), emb, rtol=1e-6)
