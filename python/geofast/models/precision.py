"""Numeric precision of the CLIP image encoder: ``fp32``, ``int8``, ``bf16`` (and ``fp16`` on CUDA).

On a CPU the ViT-L/14 image encoder is every path's cost (162 GFLOP per image), and float32
already runs near the CPU's float32 peak; only cheaper arithmetic makes it faster.

* ``fp32`` — the default on a CPU (and on Apple MPS).
* ``fp16`` — the default on CUDA (what geofast always did there); CUDA only.
* ``int8`` — CPU only. The vision tower is exported to ONNX once and its MatMul weights are
  quantized to int8 **per output channel**; activations are quantized **dynamically** (per
  tensor, at run time) by ONNX Runtime (``onnxruntime.quantization.quantize_dynamic``). The
  quantized model is cached under ``$GEOFAST_CACHE/encoders/`` (see :func:`int8_model_path`),
  so only the first start pays for the export and the quantization. ``docs/precision.md`` says
  why ONNX Runtime (measured against torchao, torch's own dynamic quantization and OpenVINO).
* ``bf16`` — weights and activations in bfloat16, through torch; only where the hardware runs
  bf16 natively (CPU: AVX512-BF16 or AMX; CUDA: compute capability ≥ 8.0). Elsewhere bf16 is
  emulated and slower than fp32, so it is refused in one line.

Quantized outputs are never assumed equal to float32's: ``geofast bench --area precision``
measures agreement on the user's own photos and weights, and a database records the precision
its embeddings were made with (:func:`geofast.db.encode.backbone_info`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from geofast.errors import CacheError, ModelError

if TYPE_CHECKING:
    import torch

#: What ``--precision`` accepts (``fp16`` is CUDA's default and may be named there too).
PRECISIONS = ("fp32", "int8", "bf16", "fp16")
#: Bump when the int8 recipe (export, quantization options) changes: old cache files then miss.
INT8_RECIPE = "ort-dynamic-qint8-per-channel-weight-matmul-v1"
_INT8_INSTALL = "pip install 'geofast[int8]' (ONNX Runtime)"


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())  # type: ignore[union-attr]
    except AttributeError:  # an older torch: read the flags the kernel reports
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_int8_level() -> str:
    """The int8 dot-product level of this CPU, for reports: ``vnni`` or ``avx2`` (or ``other``)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    try:
        if cpu._is_vnni_supported():  # type: ignore[union-attr]
            return "vnni"
        return "avx2" if cpu._is_avx2_supported() else "other"  # type: ignore[union-attr]
    except AttributeError:
        return "other"


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The precision to run on ``device``: ``precision``, or the device's default (fp16 on CUDA,
    fp32 elsewhere). Raises :class:`ModelError` (one line, naming the fix) for an unknown
    precision or one the device cannot run natively."""
    import torch

    kind = device.type
    if precision is None or not str(precision).strip() or str(precision).strip().lower() == "auto":
        return "fp16" if kind == "cuda" else "fp32"
    p = str(precision).strip().lower()
    if p not in PRECISIONS:
        raise ModelError(
            f"unknown precision {precision!r}", hint="choose fp32, int8 or bf16 (fp16 on CUDA)", params=("precision",)
        )
    if p == "int8" and kind != "cpu":
        raise ModelError(
            f"precision int8 runs on the CPU only, not on {kind}",
            hint="leave precision unset on a GPU (fp16), or run on the CPU (device cpu)",
            params=("precision", "device"),
        )
    if p == "fp16" and kind != "cuda":
        raise ModelError(
            "precision fp16 runs on CUDA only (a CPU has no fast fp16 arithmetic)",
            hint="use int8 or fp32 on a CPU (bf16 where the CPU has AVX512-BF16 or AMX)",
            params=("precision",),
        )
    if p == "bf16":
        if kind == "cpu" and not cpu_bf16_native():
            raise ModelError(
                "precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has neither, so bf16 would be slower than fp32",
                hint="use precision int8 (faster) or fp32 (exact)",
                params=("precision",),
            )
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ModelError("precision bf16 needs a GPU with native bf16 (compute capability 8.0+)", params=("precision",))
        if kind == "mps":
            raise ModelError("precision bf16 is not offered on MPS", hint="leave precision unset (fp32)", params=("precision",))
    return p


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype the weights are loaded in (int8 starts from float32)."""
    import torch

    return {"fp32": torch.float32, "int8": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ----------------------------------------------------------------------------------------------
# int8: the ONNX Runtime encoder and its cache
# ----------------------------------------------------------------------------------------------


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelError(
            "precision int8 needs ONNX Runtime, which is not installed", hint=_INT8_INSTALL, params=("precision",)
        ) from e
    return onnxruntime


def weights_digest(folder: Path, cache: Path) -> str:
    """sha256 over the backbone's config and weight files. A file's hash is remembered in the
    cache by (path, size, mtime), so an unchanged multi-GB file is hashed once, not every start."""
    from geofast._io import atomic_write_text, file_sha256

    memo_path = cache / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    names = [
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ]
    files = [folder / n for n in names if (folder / n).is_file()]
    if (folder / "model.safetensors.index.json").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        files += sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p not in files)
    for path in files:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = memo.get(key)
        if not isinstance(digest, str):
            digest = file_sha256(path)
            memo[key] = digest
            changed = True
        h.update(path.name.encode() + b"\0" + digest.encode() + b"\0")
    if changed:
        try:
            atomic_write_text(memo_path, json.dumps(memo, sort_keys=True))
        except OSError:
            pass  # a read-only cache still works; the hash is recomputed next time
    return h.hexdigest()


def int8_model_path(folder: Path, cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """Where the int8 model of the backbone in ``folder`` is cached, and its key: sha256 of the
    weights' hash, the recipe and the ONNX Runtime version (a new version re-quantizes)."""
    from geofast.cache import cache_root

    ort = _ort()
    root = cache_root(cache_dir) / "encoders"
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(
        json.dumps({"weights": weights_digest(folder, root), "recipe": INT8_RECIPE, "onnxruntime": ort.__version__}).encode()
    ).hexdigest()[:32]
    return root / f"clip-vision-int8-{key}.onnx", key


class _Wrap:
    """Export helper: the vision tower's forward as pixel_values → image_embeds."""

    @staticmethod
    def module(model: Any) -> Any:
        import torch

        class Vision(torch.nn.Module):
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                return self.m(pixel_values=pixel_values).image_embeds

        return Vision(model).eval()


def _export_int8(model: Any, image_size: int, target: Path) -> None:
    """Export ``model`` (float32 vision tower) to ONNX, quantize it, write ``target`` atomically
    with a sidecar recording its size and sha256."""
    import warnings

    import torch

    ort = _ort()
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:  # onnxruntime.quantization needs the onnx package
        raise ModelError("precision int8 needs the onnx package to quantize the model once", hint=_INT8_INSTALL) from e
    del ort
    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=target.parent))
    try:
        f32 = work / "fp32.onnx"
        q8 = work / "int8.onnx"
        x = torch.zeros(1, 3, image_size, image_size)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Wrap.module(model),
                (x,),
                str(f32),
                input_names=["pixel_values"],
                output_names=["image_embeds"],
                dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        import logging

        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice from the quantizer
        try:
            # Only MatMuls with a constant (weight) operand: the linear layers, ~98 % of the FLOPs.
            # Attention's activation x activation MatMuls stay float32.
            quantize_dynamic(
                str(f32),
                str(q8),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                extra_options={"MatMulConstBOnly": True},
            )
        finally:
            logging.getLogger().setLevel(level)
        f32.unlink()
        from geofast._io import atomic_write_text, file_sha256

        sidecar = {"size": q8.stat().st_size, "sha256": file_sha256(q8), "recipe": INT8_RECIPE}
        os.replace(q8, target)  # same folder: atomic
        atomic_write_text(target.with_suffix(".json"), json.dumps(sidecar))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _verified(target: Path) -> bool:
    """Whether the cached model is complete: present, its sidecar readable, size and sha256 equal."""
    from geofast._io import file_sha256

    side = target.with_suffix(".json")
    try:
        meta = json.loads(side.read_text())
        return (
            isinstance(meta, dict)
            and target.stat().st_size == meta.get("size")
            and meta.get("recipe") == INT8_RECIPE
            and file_sha256(target) == meta.get("sha256")
        )
    except (OSError, ValueError):
        return False


class OnnxVision:
    """The int8 vision tower on ONNX Runtime, called like the torch model it replaces
    (``model(pixel_values=x).image_embeds``)."""

    def __init__(self, path: Path, threads: int) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise CacheError(f"cannot load the int8 encoder {path}: {str(e).splitlines()[0]}") from e
        self.path = path

    def __call__(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        import numpy as np
        import torch

        x = np.ascontiguousarray(pixel_values.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run(["image_embeds"], {"pixel_values": x})
        return SimpleNamespace(image_embeds=torch.from_numpy(out))

    def eval(self) -> OnnxVision:
        return self


def load_int8(model: Any, folder: Path, image_size: int, *, cache_dir: str | os.PathLike[str] | None = None) -> OnnxVision:
    """The int8 encoder of the float32 vision tower ``model`` loaded from ``folder``: from the
    cache when a verified copy is there, else exported, quantized and cached first (a corrupt or
    partial cache file is rebuilt)."""
    import torch

    target, _key = int8_model_path(folder, cache_dir)
    if not _verified(target):
        target.unlink(missing_ok=True)
        target.with_suffix(".json").unlink(missing_ok=True)
        _export_int8(model, image_size, target)
        if not _verified(target):
            raise CacheError(f"the int8 encoder written to {target} does not verify", hint="check the disk, then retry")
    return OnnxVision(target, torch.get_num_threads())


def int8_cached(folder: Path, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether a verified int8 model of ``folder``'s backbone is cached (the float32 weights then
    need not be loaded)."""
    target, _ = int8_model_path(folder, cache_dir)
    return _verified(target)
