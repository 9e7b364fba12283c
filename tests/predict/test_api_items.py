"""The Python API as the CLI behaves: a bad item fails alone, and the 768-d CLIP embeddings that
``Database.search`` takes have a public, documented way in (``Geolocator.encode_clip``)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_photo

GALLERY = np.array([[48.8566, 2.3522], [35.6762, 139.6503], [-33.8688, 151.2093], [40.7128, -74.0060]])


@pytest.fixture(scope="module")
def small_loc(tiny_clip_dir, tmp_path_factory):
    from geofast.predict.geoclip import Geolocator

    cache = tmp_path_factory.mktemp("api-cache")
    return Geolocator.from_pretrained(
        "geoclip", clip=tiny_clip_dir, device="cpu", gallery=GALLERY, cache_dir=cache, progress=False
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("api-photos")
    return [make_photo(d / f"p{i}.jpg", seed=60 + i) for i in range(3)]


def test_a_missing_or_broken_file_gets_its_own_error(small_loc, photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    missing = tmp_path / "missing.jpg"
    items = [str(photos[0]), str(missing), str(broken), str(photos[1]), str(tmp_path / "none-*.png")]
    preds = small_loc.predict(items, top_k=3, places=False)
    assert [p.image for p in preds] == items
    assert preds[1].error is not None and "no such file" in preds[1].error and str(missing) in preds[1].error
    assert preds[2].error is not None and str(broken) in preds[2].error
    assert preds[4].error is not None
    # The good images are located exactly as on their own.
    alone = small_loc.predict([str(photos[0]), str(photos[1])], top_k=3, places=False)
    for got, ref in zip((preds[0], preds[3]), alone):
        assert got.error is None and (got.lat, got.lon) == (ref.lat, ref.lon)
        assert [c.prob for c in got.candidates] == [c.prob for c in ref.candidates]


def test_encode_clip_matches_the_raw_transformers_model(small_loc, photos, tiny_clip_dir):
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel

    got = small_loc.encode_clip([str(p) for p in photos], batch_size=2)
    assert got.shape == (3, 768) and got.dtype == np.float32

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(tiny_clip_dir)
    ims = [Image.open(p).convert("RGB") for p in photos]
    with torch.inference_mode():
        feats = model.get_image_features(pixel_values=processor(images=ims, return_tensors="pt")["pixel_values"])
    if not isinstance(feats, torch.Tensor):  # transformers 5: an output whose pooler_output is projected
        feats = feats.pooler_output
    ref = feats.double().numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    # float32 forward passes of the same weights on the same pixels, batched 2 + 1 vs 3: they differ
    # in reduction order only (measured max |diff| 2.6e-8 on unit vectors); 1e-5 leaves a 400x margin
    # and a wrong space (GeoCLIP's 512-d head output, unnormalised features) is off by O(1).
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # The space a database stores: the same features embed_pil hands a database search.
    _, clip = small_loc.embed_pil(ims, with_clip=True)
    np.testing.assert_allclose(got, clip, atol=1e-5, rtol=0)
    assert small_loc.encode_clip([]).shape == (0, 768)
