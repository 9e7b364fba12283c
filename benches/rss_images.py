"""Peak RSS of ``geofast eval`` and ``geofast locate`` against the number of images.

    python benches/rss_images.py 1000 10000

Makes small generated JPEGs (64 distinct files, reused by many dataset rows / arguments), a tiny
random CLIP (``benches.workloads.e2e.random_clip``) and a 2,000-point gallery, then runs each command
in a child process and reads its ``VmHWM`` (peak resident set) at exit. Prints one JSON line per
(command, images).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys
out, args = sys.argv[1], sys.argv[2:]
from geofast.cli import main
rc = main(args)
hwm = None
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1])
json.dump({"rc": rc, "maxrss_kb": hwm}, open(out, "w"))
"""


def run(args: list[str], tmp: Path) -> dict:
    out = tmp / "child.json"
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wall = time.perf_counter() - t0
    if not out.is_file():
        raise SystemExit(p.stderr[-2000:])
    rep = json.loads(out.read_text())
    rep["seconds"] = wall
    return rep


def main() -> None:
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `benches`
    from benches.workloads.e2e import random_clip

    sizes = [int(x) for x in sys.argv[1:]] or [1000, 10000]
    tmp = Path(tempfile.mkdtemp(prefix="rss-images-", dir=os.environ.get("GEOFAST_SCALE_DIR") or None))
    photos = tmp / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(64):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(photos / f"p{i:02d}.jpg", quality=85)
    gallery = tmp / "gallery.npy"
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 2000)))
    np.save(gallery, np.column_stack([lat, rng.uniform(-180, 180, 2000)]))
    clip = random_clip(False)
    common = ["--clip", str(clip), "--gallery", str(gallery), "--batch-size", "16", "--device", "cpu"]
    for n in sizes:
        # eval: n dataset rows over 64 files (the same file under many names via symlinks is not
        # needed: the dataset names repeat the files with a numeric suffix resolved by a link folder).
        data = tmp / f"links{n}"
        data.mkdir()
        rows = []
        for i in range(n):
            name = f"img{i:06d}.jpg"
            os.symlink(photos / f"p{i % 64:02d}.jpg", data / name)
            rows.append(f"{name},{lat[i % 2000]:.5f},{(i % 360) - 180}.0\n")
        (tmp / f"ds{n}.csv").write_text("image,lat,lon\n" + "".join(rows))
        ev = run(
            ["eval", str(tmp / f"ds{n}.csv"), "--images", str(data), "--out", str(tmp / f"pred{n}.csv"), "--json", *common], tmp
        )
        print(json.dumps({"command": "eval", "images": n, **ev}), flush=True)
        loc = run(["locate", str(data), "--json", "--no-places", *common], tmp)
        print(json.dumps({"command": "locate --json", "images": n, **loc}), flush=True)


if __name__ == "__main__":
    main()
