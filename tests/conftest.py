"""Shared fixtures: random coordinates and reference helpers."""

from __future__ import annotations

import numpy as np
import pytest


def random_latlon(n: int, seed: int = 0) -> np.ndarray:
    """Points uniform on the sphere, (n, 2) degrees latitude first."""
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    lon = rng.uniform(-180.0, 180.0, n)
    return np.column_stack([lat, lon])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


# --- models -----------------------------------------------------------------------------------
# The real backbone (openai/clip-vit-large-patch14) cannot be downloaded here; tests build a tiny
# random CLIP with the same interface (projection_dim 768), save it, and load it through the same
# code path users take with --clip DIR.

TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, patch_size=32, image_size=224
)


#: A hand-written byte-level BPE vocabulary for the tiny text tower (vocab_size 99): the special
#: tokens at the ids the tiny text config names (bos 0, eos = pad = unk 1), letters and digits with
#: and without the end-of-word mark, and a few merges.
TINY_MERGES = ["t h", "th e</w>", "e r", "a n", "r e", "o u", "i n", "o r", "h a", "a r", "e d</w>", "e s</w>", "o n</w>"]


def write_tiny_tokenizer(folder) -> None:
    """vocab.json + merges.txt written by hand, then saved by CLIPTokenizer itself (adding
    tokenizer.json and tokenizer_config.json, the layout of the hub's CLIP folders)."""
    import json
    import string
    from pathlib import Path

    from transformers import CLIPTokenizer

    folder = Path(folder)
    symbols = list(string.ascii_lowercase) + list(string.digits)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in symbols:
        vocab[c] = len(vocab)
    for c in symbols:
        vocab[c + "</w>"] = len(vocab)
    for m in TINY_MERGES:
        a, b = m.split()
        vocab.setdefault(a + b, len(vocab))
    assert len(vocab) <= 99
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n")
    CLIPTokenizer.from_pretrained(folder).save_pretrained(folder)


def make_tiny_clip(folder, *, seed: int = 0, vision_only: bool = False, with_processor: bool = True, with_tokenizer: bool = True):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    if vision_only:
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=768, **TINY_VISION))
    else:
        config = CLIPConfig(
            projection_dim=768,
            text_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=2,
                num_hidden_layers=1,
                vocab_size=99,
                max_position_embeddings=16,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            ),
            vision_config=TINY_VISION,
        )
        model = CLIPModel(config)
    model.eval().save_pretrained(folder)
    if with_processor:
        CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    if with_tokenizer and not vision_only:
        write_tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One gallery-embedding cache for the whole session (GeoCLIP's 100K gallery is encoded once)."""
    return tmp_path_factory.mktemp("geofast-cache")


def make_photo(path, seed: int, size=(320, 240), fmt=None, mode="RGB"):
    """A synthetic 'photo': smooth colour gradients plus texture, different per seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    freq = rng.uniform(0.01, 0.08, 3)
    img = np.stack([base[c] * 0.5 + 120 * np.sin(freq[c] * (xx + yy * rng.uniform(0.2, 2.0)) + c) for c in range(3)], axis=-1)
    img += rng.normal(0, 25, img.shape)
    arr = np.clip(img, 0, 255).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, format=fmt)
    return path


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    sizes = [(320, 240), (240, 320), (500, 200), (224, 224), (640, 480), (100, 90)]
    for i in range(24):
        ext = ["jpg", "png", "webp"][i % 3]
        make_photo(folder / f"photo_{i:02d}.{ext}", seed=i, size=sizes[i % len(sizes)])
    return folder


@pytest.fixture(scope="session")
def geolocator(tiny_clip_dir, cache_dir):
    from geofast.predict.geoclip import Geolocator

    return Geolocator.from_pretrained("geoclip", clip=tiny_clip_dir, device="cpu", cache_dir=cache_dir, progress=False)
