"""End-to-end: ``Geolocator.predict`` against ``geoclip.GeoCLIP.predict`` with the same backbone.

The real ViT-L/14 weights cannot be downloaded everywhere; speed does not depend on the weight
values, so the full benchmark builds a *random* CLIP with ViT-L/14's exact shapes (cached under
``$GEOFAST_CACHE/bench/``) and gives it to both sides. Quick mode uses a tiny CLIP and the
first 5K gallery points on both sides (a smoke run: it measures everything except a realistic
encoder, and the reference's gallery re-encoding shrinks 20×).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benches.harness import Skip, Workload, quiet_libraries, time_call

#: Gallery points searched by both sides in quick mode (the full mode uses all 100K).
QUICK_GALLERY = 5_000

_VIT_L14 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=224
)
_TEXT_L14 = dict(
    hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77
)
_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=32, image_size=224)
_TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=16, vocab_size=99
)


def random_clip(full_size: bool) -> Path:
    """A random CLIP checkpoint with ViT-L/14 (or tiny) shapes, saved once and reused."""
    from geofast.cache import cache_root

    name = "clip-vit-l14-random" if full_size else "clip-tiny-random"
    folder = cache_root() / "bench" / name
    if (folder / "model.safetensors").is_file() and (folder / "preprocessor_config.json").is_file():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from geofast.models.clip import quiet_transformers

    torch.manual_seed(0)
    text = dict(_TEXT_L14 if full_size else _TINY_TEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = CLIPConfig(projection_dim=768, text_config=text, vision_config=_VIT_L14 if full_size else _TINY)
    with quiet_transformers():
        model = CLIPModel(config).eval()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
        model.save_pretrained(tmp)
        CLIPImageProcessor().save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _photos(n: int) -> list[Path]:
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="geofast-bench-photos-"))
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        p = folder / f"p{i:03d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        out.append(p)
    return out


def workloads(quick: bool) -> list[Workload]:
    import importlib.util

    state: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        if state:
            return state
        if importlib.util.find_spec("geoclip") is None:
            raise Skip("geoclip is not installed")
        import torch

        with quiet_libraries():
            from geoclip import GeoCLIP

        from geofast.gallery import read_gallery_file
        from geofast.models import resolve
        from geofast.predict.geoclip import Geolocator, build_gallery

        clip_dir = random_clip(full_size=not quick)
        photos = _photos(32)
        # Quick mode: both sides search the first QUICK_GALLERY points of GeoCLIP's gallery.
        files = resolve("geoclip")
        gallery = read_gallery_file(files.default_gallery)[:QUICK_GALLERY] if quick else None
        loc = Geolocator.from_pretrained("geoclip", clip=clip_dir, gallery=gallery, device="cpu", progress=False)
        with tempfile.TemporaryDirectory(prefix="geofast-bench-cache-") as cold:
            t0 = time.perf_counter()
            build_gallery(loc.heads, files.default_gallery, gallery, cache_dir=cold, progress=False)
            state["cold_build_s"] = time.perf_counter() - t0
        loc.predict([photos[0]], top_k=5)  # warm: places index, allocator, threads
        with quiet_libraries():
            ref = GeoCLIP(from_pretrained=True, clip_path=str(clip_dir)).eval()
        if gallery is not None:
            ref.gps_gallery = torch.tensor(gallery, dtype=torch.float32)
        pixels = loc.backbone.preprocess([__import__("geofast.images", fromlist=["load_image"]).load_image(photos[0])])
        state.update(loc=loc, ref=ref, photos=photos, pixels=pixels, torch=torch)
        return state

    def ref_predict(s: dict[str, Any]) -> Any:
        return s["ref"].predict(str(s["photos"][2]), top_k=5)

    def ref_seconds(s: dict[str, Any]) -> float:
        """One GeoCLIP.predict call (best of 2 after a warm-up; 1 in quick mode), timed once
        and shared by every row that compares with it."""
        if "ref_s" not in s:
            s["ref_s"], s["ref_out"] = time_call(lambda: ref_predict(s), 1 if quick else 2)
        return float(s["ref_s"])

    def check_same(s: dict[str, Any], ours: Any, ref: Any) -> str:
        gps, prob = ref if ref is not None else s["ref_out"]
        got = np.array([[c.lat, c.lon] for c in ours[0].candidates])
        if np.abs(got[0] - gps.numpy()[0]).max() > 1e-4:
            raise AssertionError(f"top-1 differs: {got[0]} vs {gps.numpy()[0]}")
        return f"same top-1; |Δp| {abs(ours[0].candidates[0].prob - float(prob[0])):.1e}"

    size = f"tiny CLIP, {QUICK_GALLERY // 1000}K gallery" if quick else "ViT-L/14 (random weights)"
    work = [
        Workload(
            name=f"locate 1 image vs CLIP forward alone [{size}]",
            kernel="locate",
            anchor="CLIP image encoder forward only",
            setup=setup,
            run_geofast=lambda s: s["loc"].predict([s["photos"][1]], top_k=5),
            run_anchor=lambda s: s["loc"].backbone.encode(s["pixels"]),
            target=None if quick else 1 / 1.15,
            note="speed-up ≥ 0.87 means locate ≤ 1.15 × the forward alone; runs alternate, best of 5 each; torch threads default",
            repeat=5,
            interleave=True,
        ),
        Workload(
            name=f"locate 1 image vs GeoCLIP.predict [{size}]",
            kernel="locate",
            anchor="geoclip 1.3.0 GeoCLIP.predict",
            setup=setup,
            # The raw candidate list, as the reference returns it (check_same compares them).
            run_geofast=lambda s: s["loc"].predict([s["photos"][2]], top_k=5, merge_duplicates=False),
            run_anchor=ref_predict,
            anchor_seconds=ref_seconds,
            check=check_same,
            target=None if quick else 6.0,
            repeat=2,
        ),
        Workload(
            name=f"locate 32 images batched vs 32 × GeoCLIP.predict [{size}]",
            kernel="locate",
            anchor="geoclip 1.3.0 GeoCLIP.predict (1 call, ×32)",
            setup=setup,
            run_geofast=lambda s: s["loc"].predict(s["photos"], top_k=5, batch_size=32),
            run_anchor=ref_predict,
            anchor_seconds=ref_seconds,
            anchor_scale=1 / 32,
            repeat=1,
        ),
        Workload(
            name=f"first-run gallery cache build vs one GeoCLIP.predict [{size}]",
            kernel="gallery cache",
            anchor="geoclip 1.3.0 GeoCLIP.predict",
            setup=setup,
            run_geofast=lambda s: None,
            geofast_seconds=lambda s: float(s["cold_build_s"]),
            run_anchor=ref_predict,
            anchor_seconds=ref_seconds,
            target=None if quick else 1.0,
            note="geofast time = encoding + writing the 100K-point gallery cache into an empty cache folder",
            repeat=1,
        ),
    ]
    work += _precision_workloads(quick, setup, ref_predict, ref_seconds, size)
    work += _eval_workloads(quick, setup)
    return work


def _precision_workloads(quick: bool, setup: Any, ref_predict: Any, ref_seconds: Any, size: str) -> list[Workload]:
    """One set of rows per lower precision the CPU runs natively (int8; bf16 with AVX512-BF16/AMX):
    locate 1 and 32 photos against the float32 encoder and against ``GeoCLIP.predict``, and
    locate against that precision's own encoder (what the rest of the path costs)."""
    from geofast.models.precision import cpu_bf16_native, cpu_int8_level

    precisions = ["int8"] + (["bf16"] if cpu_bf16_native() else [])

    def make(precision: str) -> Any:
        def setup_p() -> dict[str, Any]:
            s = setup()
            key = f"loc_{precision}"
            if key not in s:
                import importlib.util

                if precision == "int8" and importlib.util.find_spec("onnxruntime") is None:
                    raise Skip("onnxruntime is not installed (pip install 'geofast[int8]')")
                from geofast.models.clip import load_backbone
                from geofast.predict.geoclip import Geolocator

                base = s["loc"]
                backbone = load_backbone(base.backbone.source, "cpu", precision=precision)
                loc = Geolocator(base.name, backbone, base.heads, base.gallery)
                loc.predict([s["photos"][0]], top_k=5)  # warm
                s[key] = loc
            return s

        return setup_p

    def agreement(s: dict[str, Any], precision: str) -> str:
        import numpy as np

        a = s["loc"].backbone.encode(s["pixels"]).numpy().astype(np.float64)
        b = s[f"loc_{precision}"].backbone.encode(s["pixels"]).numpy().astype(np.float64)
        cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
        return f"embedding cosine vs fp32 {cos:.5f}"

    level = cpu_int8_level()
    work: list[Workload] = []
    for p in precisions:
        work += _rows(p, make(p), level, size, agreement, ref_predict, ref_seconds, quick)
    return work


def _rows(
    p: str, setup_p: Any, level: str, size: str, agreement: Any, ref_predict: Any, ref_seconds: Any, quick: bool
) -> list[Workload]:
    key = f"loc_{p}"

    def one(s: dict[str, Any]) -> Any:
        return s[key].predict([s["photos"][1]], top_k=5)

    def one_ref(s: dict[str, Any]) -> Any:
        return s[key].predict([s["photos"][2]], top_k=5)

    def many(s: dict[str, Any]) -> Any:
        return s[key].predict(s["photos"], top_k=5, batch_size=32)

    def own_encoder(s: dict[str, Any]) -> Any:
        return s[key].backbone.encode(s["pixels"])

    def fp32_encoder(s: dict[str, Any]) -> Any:
        return s["loc"].backbone.encode(s["pixels"])

    def agree(s: dict[str, Any], _g: Any, _a: Any) -> str:
        return str(agreement(s, p))

    tag = f"{p}{' (' + level + ')' if p == 'int8' else ''}"

    return [
        Workload(
            name=f"locate 1 image at {tag} vs its own encoder forward [{size}]",
            kernel="locate",
            anchor=f"CLIP image encoder forward only, {p}",
            setup=setup_p,
            run_geofast=one,
            run_anchor=own_encoder,
            target=None if quick else 1 / 1.10,
            note="speed-up ≥ 0.91 means locate ≤ 1.10 × the encoder alone; alternate runs, best of 5",
            repeat=5,
            interleave=True,
        ),
        Workload(
            name=f"locate 1 image at {tag} vs float32 encoder forward [{size}]",
            kernel="locate",
            anchor="CLIP image encoder forward only, fp32",
            setup=setup_p,
            run_geofast=one,
            run_anchor=fp32_encoder,
            check=agree,
            target=None if quick else (3.0 if p == "int8" and level == "vnni" else 1.8 if p == "int8" else None),
            note="int8 targets: ≥ 3× with VNNI, ≥ 1.8× on AVX2 only (the locate includes heads, search and decode)",
            repeat=5,
            interleave=True,
        ),
        Workload(
            name=f"locate 1 image at {tag} vs GeoCLIP.predict [{size}]",
            kernel="locate",
            anchor="geoclip 1.3.0 GeoCLIP.predict",
            setup=setup_p,
            run_geofast=one_ref,
            run_anchor=ref_predict,
            anchor_seconds=ref_seconds,
            repeat=2,
        ),
        Workload(
            name=f"locate 32 images batched at {tag} vs 32 × float32 encoder [{size}]",
            kernel="locate",
            anchor="CLIP image encoder forward only, fp32 (1 image, ×32)",
            setup=setup_p,
            run_geofast=many,
            run_anchor=fp32_encoder,
            anchor_scale=1 / 32,
            repeat=1,
        ),
        Workload(
            name=f"locate 32 images batched at {tag} vs 32 × GeoCLIP.predict [{size}]",
            kernel="locate",
            anchor="geoclip 1.3.0 GeoCLIP.predict (1 call, ×32)",
            setup=setup_p,
            run_geofast=many,
            run_anchor=ref_predict,
            anchor_seconds=ref_seconds,
            anchor_scale=1 / 32,
            repeat=1,
        ),
    ]


def _eval_workloads(quick: bool, setup: Any) -> list[Workload]:
    """Scoring a million predictions, and how much of a dataset evaluation is not the encoder."""
    from geofast import evaluate as ev

    n = 100_000 if quick else 1_000_000

    def setup_scores() -> dict[str, Any]:
        rng = np.random.default_rng(0)
        truth = np.column_stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)])
        pred = np.column_stack([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)])
        return {"truth": truth, "pred": pred}

    sample = 2_000

    def geopy_loop(s: dict[str, Any]) -> np.ndarray:
        from geopy.distance import geodesic

        return np.array([geodesic(tuple(a), tuple(b)).km for a, b in zip(s["truth"][:sample], s["pred"][:sample])])

    def check_scores(s: dict[str, Any], ours: dict[str, Any], ref: np.ndarray) -> str:
        d = ev.distances_km(s["truth"][:sample], s["pred"][:sample])
        err = float(np.max(np.abs(d - ref)))
        if err > 1e-6:
            raise AssertionError(f"geodesic distances differ from geopy by {err} km")
        return f"max |Δd| vs geopy {err:.1e} km on {sample} pairs"

    def setup_eval() -> dict[str, Any]:
        s = setup()
        if "eval_encoder_s" not in s:
            import csv

            loc = s["loc"]
            timer = {"s": 0.0}
            encode = loc.backbone.encode

            def timed(pixels: Any) -> Any:
                t0 = time.perf_counter()
                out = encode(pixels)
                timer["s"] += time.perf_counter() - t0
                return out

            folder = Path(s["photos"][0]).parent
            data = folder / "dataset.csv"
            with open(data, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image", "lat", "lon"])
                for i, p in enumerate(s["photos"]):
                    w.writerow([Path(p).name, 10.0 + i, 20.0 + i])
            out = folder / "predictions.csv"
            if out.exists():
                out.unlink()
            loc.backbone.encode = timed
            try:
                t0 = time.perf_counter()
                ev.run_predictions(
                    ev.read_dataset(data),
                    folder,
                    lambda paths: loc.predict(paths, top_k=5, batch_size=16, places=False),
                    ev.PredictionLog.open(out),
                    batch_size=16,
                )
                scored = ev.read_predictions(out)
                ev.score(scored.truth, scored.pred, confidence=scored.confidence)
                s["eval_total_s"] = time.perf_counter() - t0
            finally:
                loc.backbone.encode = encode
            s["eval_encoder_s"] = timer["s"]
        return s

    size = f"tiny CLIP, {QUICK_GALLERY // 1000}K gallery" if quick else "ViT-L/14 (random weights)"
    return [
        Workload(
            name=f"eval scoring {n // 1000}K predictions, geodesic",
            kernel="eval",
            anchor=f"geopy geodesic per pair ({sample} timed, scaled)",
            setup=setup_scores,
            run_geofast=lambda s: ev.score(s["truth"], s["pred"]),
            run_anchor=geopy_loop,
            anchor_scale=sample / n,
            check=check_scores,
            note="target: 1M predictions scored in ≤ 2 s (geopy ≈ 230 s)",
            repeat=3,
        ),
        Workload(
            name=f"eval of 32 images: whole run vs its CLIP forwards [{size}]",
            kernel="eval",
            anchor="the CLIP forward passes inside that run",
            setup=setup_eval,
            run_geofast=lambda s: None,
            geofast_seconds=lambda s: float(s["eval_total_s"]),
            run_anchor=None,
            check=lambda s, _g, _a: (
                f"encoder share {100 * s['eval_encoder_s'] / s['eval_total_s']:.1f}% (target ≥ 90%: everything else ≤ 10%)"
            ),
            repeat=1,
        ),
    ]
