"""CLIP backbone loading (full and vision-only checkpoints, errors) and the heads registry."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import geofast as gf
from conftest import make_tiny_clip
from geofast.models.clip import DEFAULT_CLIP, load_backbone, resolve_source
from geofast.models.heads import Heads
from geofast.models.registry import resolve


def test_full_and_vision_only_checkpoints_give_clip_image_features(tmp_path, tiny_clip_dir):
    from transformers import CLIPModel

    full = load_backbone(tiny_clip_dir, device="cpu")
    ref = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=x)
        expected = out if isinstance(out, torch.Tensor) else out.pooler_output
    np.testing.assert_allclose(full.encode(x).numpy(), expected.numpy(), atol=1e-5)

    # A folder with only config.json + weights + preprocessor_config.json of the vision tower.
    vis = make_tiny_clip(tmp_path / "vision", seed=3, vision_only=True)
    assert sorted(os.listdir(vis)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    b = load_backbone(vis, device="cpu")
    assert b.encode(x).shape == (3, 768)


def test_preprocessing_matches_geoclip_processor(tiny_clip_dir, photo_dir):
    from PIL import Image
    from transformers import AutoProcessor

    b = load_backbone(tiny_clip_dir, device="cpu")
    ref = AutoProcessor.from_pretrained(tiny_clip_dir)
    ims = [Image.open(p).convert("RGB") for p in sorted(photo_dir.iterdir())[:4]]
    ours = b.preprocess(ims)
    assert ours.shape == (4, 3, 224, 224)
    theirs = ref(images=ims, return_tensors="pt")["pixel_values"]
    assert torch.equal(ours, theirs)


def test_source_resolution_order(monkeypatch, tiny_clip_dir):
    monkeypatch.delenv("GEOFAST_CLIP", raising=False)
    assert resolve_source(None) == DEFAULT_CLIP
    monkeypatch.setenv("GEOFAST_CLIP", str(tiny_clip_dir))
    assert resolve_source(None) == str(tiny_clip_dir)
    assert resolve_source("other/model") == "other/model"
    assert load_backbone(None, device="cpu").folder == tiny_clip_dir


def test_missing_backbone_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.delenv("GEOFAST_CLIP", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(gf.ModelError) as info:
        load_backbone(None, device="cpu")
    assert "no CLIP backbone" in str(info.value)
    assert "--clip DIR" in info.value.hint and "GEOFAST_CLIP" in info.value.hint
    with pytest.raises(gf.ModelError, match="does not exist"):
        load_backbone(str(tmp_path / "nope"), device="cpu")


def test_broken_backbone_folders(tmp_path, tiny_clip_dir):
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_clip_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(gf.ModelError, match="no weights"):
        load_backbone(no_weights, device="cpu")

    no_config = tmp_path / "no_config"
    shutil.copytree(tiny_clip_dir, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(gf.ModelError, match="no config.json"):
        load_backbone(no_config, device="cpu")

    wrong_dim = tmp_path / "wrong_dim"
    shutil.copytree(tiny_clip_dir, wrong_dim)
    cfg = json.loads((wrong_dim / "config.json").read_text())
    cfg["projection_dim"] = 512
    (wrong_dim / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(gf.ModelError, match="projects to 512"):
        load_backbone(wrong_dim, device="cpu")

    not_clip = tmp_path / "not_clip"
    shutil.copytree(tiny_clip_dir, not_clip)
    (not_clip / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(gf.ModelError, match="not a CLIP model"):
        load_backbone(not_clip, device="cpu")

    # Weights of a different architecture: the vision tower is missing, never silently random.
    other = tmp_path / "other"
    other.mkdir()
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2, 2)}, str(other / "model.safetensors"))
    shutil.copy(tiny_clip_dir / "config.json", other / "config.json")
    with pytest.raises(gf.ModelError, match="do not contain the CLIP vision tower"):
        load_backbone(other, device="cpu")


def test_unavailable_device(tiny_clip_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(gf.ModelError, match="CUDA is not available"):
        load_backbone(tiny_clip_dir, device="cuda")
    with pytest.raises(gf.ModelError, match="invalid device"):
        load_backbone(tiny_clip_dir, device="quantum")


@pytest.mark.parametrize("name,scale", [("geoclip", 39.6874), ("geomapclip", 78.9367)])
def test_heads_load_the_packaged_weights(name, scale):
    files = resolve(name)
    heads = Heads.load(files)
    assert abs(heads.logit_scale - scale) < 1e-3
    state = torch.load(files.location_encoder, weights_only=True)
    for i, cap in enumerate(heads.location.capsules):
        np.testing.assert_array_equal(cap.b, state[f"LocEnc{i}.capsule.0.b"].numpy())  # loaded, never re-sampled
    assert len(heads.location.capsules) == 3


def test_unknown_model_and_bad_weights(tmp_path):
    with pytest.raises(gf.ModelError, match="unknown model"):
        resolve("geonope")
    from geofast.models.heads import ImageHead, LocationEncoder

    with pytest.raises(gf.ModelError, match="unexpected tensors"):
        ImageHead({"0.weight": torch.zeros(768, 768)})
    state = torch.load(resolve("geoclip").location_encoder, weights_only=True)
    state["LocEnc0.capsule.1.weight"] = torch.zeros(10, 10)
    with pytest.raises(gf.ModelError, match="has shape"):
        LocationEncoder(state)
