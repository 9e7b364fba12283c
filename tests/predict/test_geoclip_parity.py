"""geofast's GeoCLIP / GeoMapCLIP predictions equal the reference packages' own, with the same CLIP.

The reference model is built by the `geoclip` / `geomapclip` packages themselves with the tiny
random CLIP plugged in; their `forward()` / `predict()` re-encode the whole gallery in float32
torch. geofast must return the same gallery points (rank by rank, allowing swaps only between
candidates whose probabilities differ by less than the tolerance) with probabilities within 1e-4.
The reference lists a gallery coordinate as often as its gallery does, so these comparisons use
geofast's raw candidate list (``merge_duplicates=False``); merging is tested in test_duplicates.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

PROB_TOL = 1e-4


def assert_same_topk(ref_idx, ref_prob, our_latlon, our_prob, ref_gallery, k):
    """Same gallery points and probabilities, allowing order swaps among near-equal probabilities."""
    ref_pts = ref_gallery[ref_idx[:k]]
    np.testing.assert_allclose(our_prob[:k], ref_prob[:k], atol=PROB_TOL, rtol=0)
    for r in range(k):
        d = np.abs(ref_pts - our_latlon[r]).max(axis=1)
        match = np.flatnonzero(d < 1e-4)
        assert match.size, f"rank {r}: {our_latlon[r]} is not among the reference top-{k} {ref_pts.tolist()}"
        if match[0] != r:  # allowed only for a near tie
            assert abs(ref_prob[match[0]] - ref_prob[r]) < PROB_TOL, (r, match[0], ref_prob[:k])


def _ref_topk(logits: torch.Tensor, k: int):
    probs = logits.softmax(dim=-1)
    top = torch.topk(probs, k, dim=1)
    return top.indices.numpy(), top.values.numpy().astype(np.float64)


@pytest.mark.slow
def test_geoclip_topk_equals_reference_on_many_images(geolocator, tiny_clip_dir, photo_dir):
    from geoclip import GeoCLIP

    ref = GeoCLIP(from_pretrained=True, clip_path=str(tiny_clip_dir)).eval()
    paths = sorted(str(p) for p in Path(photo_dir).iterdir())
    k = 5
    # One batched reference forward over the whole 100K gallery (what predict() does per image).
    from PIL import Image

    with torch.no_grad():
        pixels = torch.cat([ref.image_encoder.preprocess_image(Image.open(p).convert("RGB")) for p in paths])
        logits = ref.forward(pixels, ref.gps_gallery)
    ref_idx, ref_prob = _ref_topk(logits, k)
    ref_gallery = ref.gps_gallery.numpy().astype(np.float64)
    ours = geolocator.predict(paths, top_k=k, places=False, merge_duplicates=False)
    assert len(ours) == len(paths)
    for i, p in enumerate(ours):
        assert p.error is None
        our_latlon = np.array([[c.lat, c.lon] for c in p.candidates])
        our_prob = np.array([c.prob for c in p.candidates])
        assert_same_topk(ref_idx[i], ref_prob[i], our_latlon, our_prob, ref_gallery, k)
        assert np.all(np.diff(our_prob) <= 1e-12)
    # And the reference's own predict() path (file opening, RGB conversion) on one image.
    gps, prob = ref.predict(paths[0], top_k=k)
    our_latlon = np.array([[c.lat, c.lon] for c in ours[0].candidates])
    np.testing.assert_allclose(our_latlon, gps.numpy().astype(np.float64), atol=1e-4)
    np.testing.assert_allclose([c.prob for c in ours[0].candidates], prob.numpy(), atol=PROB_TOL)


def test_image_and_location_embeddings_equal_reference_encoders(geolocator, tiny_clip_dir, photo_dir):
    """Encoders on their own, on a small gallery: embeddings within float32 rounding of the reference."""
    from geoclip import GeoCLIP
    from PIL import Image

    ref = GeoCLIP(from_pretrained=True, clip_path=str(tiny_clip_dir)).eval()
    paths = sorted(str(p) for p in Path(photo_dir).iterdir())[:6]
    with torch.no_grad():
        pixels = torch.cat([ref.image_encoder.preprocess_image(Image.open(p).convert("RGB")) for p in paths])
        ref_img = torch.nn.functional.normalize(ref.image_encoder(pixels), dim=1).numpy()
    np.testing.assert_allclose(geolocator.encode_images(paths), ref_img, atol=2e-5)

    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-85, 85, 2000), rng.uniform(-180, 180, 2000)]).astype(np.float32)
    with torch.no_grad():
        ref_loc = torch.nn.functional.normalize(ref.location_encoder(torch.from_numpy(pts)), dim=1).numpy()
    ours = geolocator.encode_locations(pts.astype(np.float64))
    # The reference's float32 Fourier features at σ = 256 carry ~1e-3 rad phase errors; ours are
    # accurate, so the embeddings agree to what those errors allow, and far better in float64.
    assert np.max(np.abs(ours - ref_loc)) < 2e-3
    cos = np.sum(ours * ref_loc, axis=1)
    assert cos.min() > 0.99999
    with torch.no_grad():
        ref64 = ref.location_encoder.double()
        exact = torch.nn.functional.normalize(ref64(torch.from_numpy(pts.astype(np.float64))), dim=1).numpy()
    assert np.max(np.abs(ours - exact)) < 2e-5
    assert np.max(np.abs(ours - exact)) < np.max(np.abs(ref_loc - exact))


@pytest.mark.slow
def test_geomapclip_topk_equals_reference(tiny_clip_dir, photo_dir, cache_dir, monkeypatch):
    """GeoMapCLIP: same check on 20K points of its land-lattice gallery (its code hard-codes the
    hub backbone, so the test points its loader at the tiny CLIP)."""
    import geomapclip.model.image_encoder as gm_image
    import transformers

    from geofast.gallery import read_gallery_file
    from geofast.models.registry import resolve
    from geofast.predict.geoclip import Geolocator

    real_model, real_proc = transformers.CLIPModel.from_pretrained, transformers.AutoProcessor.from_pretrained
    monkeypatch.setattr(gm_image.CLIPModel, "from_pretrained", lambda *_a, **_k: real_model(str(tiny_clip_dir)))
    monkeypatch.setattr(gm_image.AutoProcessor, "from_pretrained", lambda *_a, **_k: real_proc(str(tiny_clip_dir)))
    from geomapclip import GeoMapCLIP

    ref = GeoMapCLIP().eval()
    # geomapclip 0.0.3 was written for transformers 4, where get_image_features returned the
    # projected tensor; transformers 5 returns an output object whose pooler_output holds it
    # (geoclip 1.3.0 carries the same shim). Adapt the reference to this environment, math unchanged.
    clip_model = ref.image_encoder.CLIP
    original = clip_model.get_image_features

    def get_image_features(**kwargs):
        out = original(**kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    clip_model.get_image_features = get_image_features
    full = read_gallery_file(resolve("geomapclip").default_gallery)
    assert full.shape == (288_686, 2)
    subset = full[:: len(full) // 20_000][:20_000]
    ref.gps_gallery = torch.tensor(subset, dtype=torch.float32)
    ours = Geolocator.from_pretrained(
        "geomapclip", clip=tiny_clip_dir, device="cpu", gallery=subset, cache_dir=cache_dir, progress=False
    )
    assert abs(ours.logit_scale - float(ref.logit_scale.detach().exp())) < 1e-4
    paths = sorted(str(p) for p in Path(photo_dir).iterdir())[:8]
    from PIL import Image

    with torch.no_grad():
        pixels = torch.cat([ref.image_encoder.preprocess_image(Image.open(p).convert("RGB")) for p in paths])
        logits = ref.forward(pixels, ref.gps_gallery)
    k = 5
    ref_idx, ref_prob = _ref_topk(logits, k)
    preds = ours.predict(paths, top_k=k, places=False, merge_duplicates=False)
    for i, p in enumerate(preds):
        our_latlon = np.array([[c.lat, c.lon] for c in p.candidates])
        assert_same_topk(ref_idx[i], ref_prob[i], our_latlon, np.array([c.prob for c in p.candidates]), subset, k)
    gps, prob = ref.predict(paths[0], top_k=k)
    np.testing.assert_allclose([c.prob for c in preds[0].candidates], prob.numpy(), atol=PROB_TOL)
