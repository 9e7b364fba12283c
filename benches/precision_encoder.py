"""int8 / bf16 / fp32 image encoders through geofast's real loading path (``load_backbone``) on
ViT-L/14's exact shapes with random weights, batch 4, 2 threads, interleaved rounds; prints JSON
(seconds per image, best of the rounds, cosine to fp32, first and second int8 start).

Run ``.venv/bin/python benches/precision_encoder.py`` once to write the random ViT-L/14 folder
(``$GEOFAST_VITL_DIR``, default ``vitl-random``, 1.2 GB), then again to measure.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def write_random_vitl(folder: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
        projection_dim=768,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    from geofast.models.clip import load_backbone

    torch.set_num_threads(2)
    folder = Path(os.environ.get("GEOFAST_VITL_DIR", "vitl-random"))
    if not (folder / "model.safetensors").is_file():
        write_random_vitl(folder)
        print(f"wrote {folder}; run again to measure")
        return
    cache = Path(os.environ.get("GEOFAST_VITL_CACHE", f"{folder}-cache"))
    res: dict[str, object] = {}
    fp32, res["fp32_start_s"] = timed(load_backbone, folder, "cpu", precision="fp32")
    int8, res["int8_first_start_s"] = timed(load_backbone, folder, "cpu", precision="int8", cache_dir=cache)
    del int8
    int8, res["int8_second_start_s"] = timed(load_backbone, folder, "cpu", precision="int8", cache_dir=cache)
    encoders = {"fp32": fp32, "int8": int8, "bf16": load_backbone(folder, "cpu", precision="bf16")}
    px = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32))
    outs = {k: e.encode(px).float().numpy() for k, e in encoders.items()}
    times: dict[str, list[float]] = {k: [] for k in encoders}
    for _ in range(int(os.environ.get("ROUNDS", "3"))):
        for k, e in encoders.items():
            times[k].append(timed(e.encode, px)[1] / px.shape[0])
    for k in encoders:
        res[f"{k}_s_per_image_best"] = min(times[k])
        res[f"{k}_s_per_image_all"] = times[k]
        res[f"{k}_cos_min"] = float(cosine(outs[k], outs["fp32"]).min())
        res[f"{k}_speedup"] = min(times["fp32"]) / min(times[k])
    res["load"] = os.getloadavg()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
