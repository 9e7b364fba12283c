"""Where the bounds of test_ddp.py come from, and proof that they catch DDP bugs (run by hand).

    python tests/train/ddp_check.py spread [VARIANT ...]   # float32 spread, 1 vs 2 processes
    python tests/train/ddp_check.py bugs [BUG ...]         # the test on a copy with one bug

``spread`` runs both 2-process runs of test_ddp.py and their 1-process twins (all through the
CLI, so that each variant's environment reaches every process) under each BLAS / SIMD variant and
prints the measured quantities as JSON lines. ``bugs`` copies ``python/geofast`` to a temporary
folder, injects one bug there (the worktree is not touched) and runs test_ddp.py (or the test the
bug is for) against the copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests" / "train"), str(ROOT)]

VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "default": ([], {}),
    "aten-avx2": ([], {"ATEN_CPU_CAPABILITY": "avx2"}),
    "aten-default": ([], {"ATEN_CPU_CAPABILITY": "default"}),
    "mkl-avx2": ([], {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
    "mkl-cbwr": ([], {"MKL_CBWR": "COMPATIBLE"}),
    "one-core": (["taskset", "-c", "0"], {}),
}

#: the injected bugs: (file under python/geofast, text, replacement[, test file]); test_ddp.py by default
BUGS: dict[str, tuple[str, ...]] = {
    "summed": (
        "train/run.py",
        "    module = fabric.setup_module(model)",
        "    module = fabric.setup_module(model)\n"
        "    if world > 1:  # BUG: all-reduce SUM without the division by the world size\n"
        "        import torch.distributed as _dist\n\n"
        "        def _sum(state, bucket):\n"
        "            return _dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])\n\n"
        "        module._forward_module.register_comm_hook(None, _sum)",
    ),
    "mean-of-means": (
        "train/objective.py",
        "loss_sum(image, location, raw_scale, targets) * (self.world / n_global)",
        "loss_sum(image, location, raw_scale, targets) / x.shape[0]",
    ),
    "queue-rank0": ("train/objective.py", "self.queue.push(batch)", "self.queue.push(batch[: sizes[0]])"),
    "offsets": ("train/objective.py", "offset = sum(sizes[: self.rank])", "offset = self.rank * x.shape[0]"),
    "rank1-trains-rank0": ("train/run.py", "lo, hi = rank_slice(g, world, rank)", "lo, hi = rank_slice(g, world, 0)"),
    # for test_objective.py::test_a_training_run_equals_the_reference_loop: a wrong objective that
    # leaves the queue right (the logits see the queue after this step's push, the batch twice)
    "queue-after-push": (
        "train/objective.py",
        "        all_gps = torch.cat([batch, self.queue.gps]).numpy()  # the queue as it was before this step\n"
        "        self.queue.push(batch)",
        "        self.queue.push(batch)\n        all_gps = torch.cat([batch, self.queue.gps]).numpy()",
        "tests/train/test_objective.py::test_a_training_run_equals_the_reference_loop",
    ),
}


def spread(variants: list[str], seeds: list[int]) -> None:
    import test_ddp as t

    names = t.trainable_names("geoclip", 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for variant in variants:
            prefix, env = VARIANTS[variant]
            for seed in seeds:
                row: dict[str, object] = {"variant": variant, "seed": seed}
                for label, base in (("first", t.FIRST), ("several", t.SEVERAL)):
                    spec = dict(base, seed=seed)
                    db = t.make_db(root, spec["rows"])
                    runs = {}
                    for devices in (1, 2):
                        out = root / f"{variant}-{seed}-{label}-{devices}"
                        r = t.run_cli(prefix + t.cli_args(spec, db, out, devices), env=env)
                        if r.returncode != 0:
                            raise SystemExit(r.stderr[-3000:])
                        runs[devices] = t.load_ckpt(out)
                    if label == "first":
                        s = t.first_step_spread(runs[1], runs[2], names)
                        row["first_grad_rel_max"] = max(s["grad_rel"].values())
                        row["first_sq_rel_max"] = max(s["sq_rel"].values())
                        row["first_loss_rel"] = s["loss_rel"]
                    else:
                        s = t.several_steps_spread(runs[1], runs[2], names)
                        row["several_loss_rel"] = s["loss_rel"]
                        row["several_sq_ratio_dev_max"] = max(abs(v - 1.0) for v in s["sq_ratio"].values())
                print(json.dumps(row), flush=True)


def bugs(which: list[str]) -> None:
    for bug in which:
        rel, old, new, *test = BUGS[bug]
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "python"
            shutil.copytree(ROOT / "python", copy, ignore=shutil.ignore_patterns("__pycache__"))
            target = copy / "geofast" / rel
            text = target.read_text()
            assert text.count(old) == 1, (bug, old)
            target.write_text(text.replace(old, new))
            env = {**os.environ, "PYTHONPATH": str(copy)}
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(test or ["tests/train/test_ddp.py"])]
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("E ", "FAILED", "PASSED")) or " passed" in ln]
            print(f"== {bug}: pytest exit {r.returncode}", *lines[:40], sep="\n", flush=True)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:] or ["spread"]
    if cmd == "spread":
        seeds = [int(s) for s in os.environ.get("SEEDS", "3").split(",")]
        spread(rest or list(VARIANTS), seeds)
    elif cmd == "bugs":
        bugs(rest or list(BUGS))
    else:
        raise SystemExit(__doc__)
