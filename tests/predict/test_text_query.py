"""Text queries: CLIP's text tower → GeoCLIP's image head → the gallery.

The reference is plain transformers and the ``geoclip`` package: ``CLIPModel.get_text_features``
on the tiny CLIP's own tokenizer output, GeoCLIP's image MLP (``GeoCLIP.image_encoder.mlp``) and
a float64 numpy softmax over the gallery embeddings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import geofast as gf
from conftest import make_tiny_clip

TEXTS = ["a harbour with red wooden houses", "the desert at noon", "snow on the mountains in winter"]


def reference_probs(tiny_clip_dir, geolocator, texts):
    from geoclip import GeoCLIP
    from transformers import CLIPTokenizer

    ref = GeoCLIP(from_pretrained=True, clip_path=str(tiny_clip_dir)).eval()
    tok = CLIPTokenizer.from_pretrained(str(tiny_clip_dir))
    max_len = ref.image_encoder.CLIP.config.text_config.max_position_embeddings
    inputs = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        feats = ref.image_encoder.CLIP.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        if not isinstance(feats, torch.Tensor):  # transformers 5 returns an output object
            feats = feats.pooler_output
        emb = torch.nn.functional.normalize(ref.image_encoder.mlp(feats), dim=1).double().numpy()
    logits = float(ref.logit_scale.detach().exp()) * (emb @ np.asarray(geolocator.gallery.embeddings, np.float64).T)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return emb, p / p.sum(axis=1, keepdims=True)


def test_text_prediction_equals_transformers_reference(geolocator, tiny_clip_dir):
    from test_duplicates import assert_matches_reference, merged_reference

    ref_emb, probs = reference_probs(tiny_clip_dir, geolocator, TEXTS)
    np.testing.assert_allclose(geolocator.encode_texts(TEXTS), ref_emb, atol=2e-5)
    merged = geolocator.predict_text(TEXTS, top_k=5, places=False)
    raw = geolocator.predict_text(TEXTS, top_k=5, places=False, merge_duplicates=False)
    grouped = np.unique(geolocator.gallery.latlon, axis=0, return_inverse=True)
    for i, text in enumerate(TEXTS):
        assert merged[i].image == raw[i].image == "text: " + text
        assert merged[i].error is None and merged[i].method == "geoclip"
        assert_matches_reference(merged[i], *merged_reference(probs[i], geolocator.gallery.latlon, 5, grouped))
        order = np.argsort(-probs[i], kind="stable")[:5]
        np.testing.assert_allclose([c.prob for c in raw[i].candidates], probs[i][order], rtol=1e-4, atol=1e-7)


def test_text_tower_is_loaded_only_when_asked(tiny_clip_dir, cache_dir):
    from geofast.predict.geoclip import Geolocator

    loc = Geolocator.from_pretrained("geoclip", clip=tiny_clip_dir, device="cpu", cache_dir=cache_dir, progress=False)
    assert loc.backbone._text is None
    loc.encode_texts(["one"])
    assert loc.backbone._text is not None
    with pytest.raises(gf.InputError, match="empty"):
        loc.predict_text(["  "])


@pytest.mark.parametrize("kind", ["vision_only", "no_tokenizer"])
def test_backbone_without_text_tower_or_tokenizer_is_a_clear_error(tmp_path, kind):
    from geofast.models.clip import load_backbone

    folder = make_tiny_clip(tmp_path / kind, vision_only=kind == "vision_only", with_tokenizer=False)
    backbone = load_backbone(folder, "cpu")  # photos still work
    with pytest.raises(gf.ModelError) as err:
        backbone.encode_text(["a harbour"])
    msg = str(err.value)
    assert "\n" not in msg and ("no text tower" in msg if kind == "vision_only" else "no tokenizer" in msg)
    assert "tokenizer" in (err.value.hint or "")


def run_cli(*args, cache_dir):
    env = {**os.environ, "GEOFAST_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    env.pop("GEOFAST_CLIP", None)
    return subprocess.run(
        [sys.executable, "-m", "geofast", "locate", *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.mark.slow
def test_cli_text_json_equals_library(geolocator, tiny_clip_dir, cache_dir, photo_dir, tmp_path):
    photo = sorted(photo_dir.iterdir())[0]
    r = run_cli(photo, "--text", TEXTS[0], "--text", TEXTS[1], "--clip", tiny_clip_dir, "--json", "-k", "4", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["image"] for x in rows] == [str(photo), "text: " + TEXTS[0], "text: " + TEXTS[1]]
    lib = geolocator.predict_text(TEXTS[:2], top_k=4)
    for x, p in zip(rows[1:], lib):
        assert [(q["lat"], q["lon"], q["place"]) for q in x["predictions"]] == [(c.lat, c.lon, c.place) for c in p.candidates]
        np.testing.assert_allclose([q["prob"] for q in x["predictions"]], [c.prob for c in p.candidates], rtol=1e-5)
        assert x["confidence"] == pytest.approx(p.confidence, rel=1e-5)
    # Raw candidates through the CLI equal the library's raw list.
    r = run_cli("--text", TEXTS[2], "--clip", tiny_clip_dir, "--json", "--raw-candidates", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    raw = geolocator.predict_text([TEXTS[2]], merge_duplicates=False)[0]
    assert [(q["lat"], q["lon"]) for q in json.loads(r.stdout)[0]["predictions"]] == [(c.lat, c.lon) for c in raw.candidates]

    # A backbone without a tokenizer: one clean line with a hint, no traceback.
    bare = make_tiny_clip(tmp_path / "bare", with_tokenizer=False)
    r = run_cli("--text", "a harbour", "--clip", bare, cache_dir=cache_dir)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "no tokenizer" in r.stderr


@pytest.mark.slow
def test_cli_text_option_errors(tmp_path):
    for args, needle in (
        (["--text", "a harbour", "--method", "rag"], "--text"),
        (["--text", " "], "empty"),
        ([], "nothing to locate"),
    ):
        r = run_cli(*args, cache_dir=tmp_path)
        assert r.returncode != 0 and "Traceback" not in r.stderr and needle in r.stderr, r.stderr
