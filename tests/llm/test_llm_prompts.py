"""Prompt plans (Img2Loc / G3) and the image the LLM sees."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from geofast.llm import ANSWER_FORMAT, Reference, build_prompt, encode_image, parse_latlon, plan_prompts

COORD = re.compile(r"\((-?\d+\.\d{4}), (-?\d+\.\d{4})\)")


def refs(n: int, offset: float = 0.0) -> list[Reference]:
    return [Reference(10.0 + i + offset, -20.0 - i, 0.9 - 0.01 * i) for i in range(n)]


def test_plan_has_one_prompt_per_reference_count():
    plan = plan_prompts(refs(16), refs(16, 50.0), (0, 5, 10, 15))
    assert [(p.n_refs, p.n_farthest) for p in plan] == [(0, 0), (5, 5), (10, 10), (15, 15)]
    for p in plan:
        near, _, far = p.text.partition("look very different")
        assert [(float(a), float(b)) for a, b in COORD.findall(near)] == [(r.lat, r.lon) for r in refs(16)[: p.n_refs]]
        assert [(float(a), float(b)) for a, b in COORD.findall(far)] == [(r.lat, r.lon) for r in refs(16, 50.0)[: p.n_farthest]]


def test_identical_prompts_are_asked_once():
    # Only 5 GeoCLIP candidates: the 10- and 15-reference prompts would repeat the 5-reference one.
    plan = plan_prompts(refs(5), [], (0, 5, 10, 15), kind="geoclip")
    assert [p.n_refs for p in plan] == [0, 5]


def test_prompt_asks_for_json_and_the_example_is_not_an_answer():
    text = build_prompt(refs(3), refs(2, 40.0))
    assert ANSWER_FORMAT in text
    assert text.strip().endswith(ANSWER_FORMAT)
    # Our own prompt must never parse as an answer (the references are not JSON answers).
    assert parse_latlon(ANSWER_FORMAT) is None


def test_zero_reference_prompt_has_no_reference_sections():
    text = build_prompt([], [])
    assert COORD.search(text) is None and "similar" not in text and "different" not in text


def test_geoclip_references_carry_probabilities():
    text = build_prompt([Reference(1.0, 2.0, 0.25)], kind="geoclip")
    assert "(1.0000, 2.0000) probability 0.250" in text


def _smooth(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 5, width)[None, :, None]
    y = np.linspace(0, 3, height)[:, None, None]
    arr = 128 + 80 * np.sin(x * np.array([1.0, 1.7, 2.3]) + y * np.array([2.1, 0.7, 1.3]))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def test_fast_downscale_matches_a_full_lanczos_resize():
    im = _smooth(1600, 1200)
    enc = encode_image(im, 512)
    with Image.open(io.BytesIO(enc.jpeg)) as got:
        ours = np.asarray(got.convert("RGB"), dtype=np.float64)
    ref = np.asarray(im.resize((512, 384), Image.Resampling.LANCZOS), dtype=np.float64)
    assert ours.shape == ref.shape == (384, 512, 3)
    assert np.abs(ours - ref).mean() < 2.0  # JPEG q90 + box pre-reduction: a couple of levels


def test_jpeg_path_is_downscaled_like_a_full_lanczos_resize(tmp_path):
    path = tmp_path / "big.jpg"
    _smooth(2400, 1800).save(path, quality=95)
    enc = encode_image(str(path), 512)
    assert (enc.width, enc.height) == (512, 384)
    with Image.open(io.BytesIO(enc.jpeg)) as got:
        ours = np.asarray(got.convert("RGB"), dtype=np.float64)
    with Image.open(path) as full:
        ref = np.asarray(full.convert("RGB").resize((512, 384), Image.Resampling.LANCZOS), dtype=np.float64)
    assert np.abs(ours - ref).mean() < 2.5


def test_non_rgb_images_are_converted():
    for mode in ("L", "RGBA", "P", "CMYK", "I;16"):
        im = _smooth(100, 80).convert(mode)
        enc = encode_image(im, 64)
        with Image.open(io.BytesIO(enc.jpeg)) as got:
            assert got.mode == "RGB" and got.size == (64, 51)
