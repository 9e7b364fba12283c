"""The CLIP image backbone: loading it from a hub id or a local folder, preprocessing, encoding.

GeoCLIP and GeoMapCLIP freeze ``openai/clip-vit-large-patch14`` and use its projected image
features (768-d; ``CLIPModel.get_image_features``). geofast loads only the vision tower and its
projection (:class:`transformers.CLIPVisionModelWithProjection`), whose ``image_embeds`` are the
same numbers, from either a full CLIP checkpoint (``model_type: clip``) or a vision-only one
(``model_type: clip_vision_model``). A folder holding ``config.json``, the weights
(``model.safetensors`` or ``pytorch_model.bin``) and ``preprocessor_config.json`` is enough: no
text tower, no tokenizer.

Text queries (``Geolocator.predict_text``) need CLIP's text tower too: it is loaded only when
first asked for (:meth:`Backbone.encode_text`), from the same folder or hub id — a full CLIP
checkpoint (``model_type: clip``, whose weights hold ``text_model.*`` and ``text_projection``)
plus its tokenizer files (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``). The text
features are ``text_projection(pooled output)``, the 768 numbers of
``CLIPModel.get_text_features``, in the space GeoCLIP's image head reads.

Preprocessing is the backbone's own CLIP image processor (what GeoCLIP's ``predict()`` uses via
``AutoProcessor``): shortest side 224 bicubic, centre crop 224, CLIP mean/std.

Where the backbone comes from, in order: the ``clip`` argument (``--clip``), ``$GEOFAST_CLIP``,
then ``openai/clip-vit-large-patch14`` from the Hugging Face cache (downloaded if the hub is
reachable and ``HF_HUB_OFFLINE`` is unset).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geofast.errors import ModelError

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_ENV = "GEOFAST_CLIP"
#: GeoCLIP's image MLP takes 768-d projected CLIP features.
EXPECTED_DIM = 768
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HINT = (
    f"pass --clip DIR (or set {CLIP_ENV}=DIR) pointing at a local copy of {DEFAULT_CLIP} "
    "with config.json, model.safetensors and preprocessor_config.json; on a connected machine: "
    f"hf download {DEFAULT_CLIP} config.json model.safetensors preprocessor_config.json --local-dir DIR"
)


def resolve_source(clip: str | os.PathLike[str] | None) -> str:
    """The backbone source to use: ``clip``, else ``$GEOFAST_CLIP``, else the default hub id."""
    if clip is not None and str(clip).strip():
        return os.fspath(clip)
    env = os.environ.get(CLIP_ENV, "").strip()
    return env or DEFAULT_CLIP


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else Apple MPS when available, else CPU."""
    import torch

    if device is not None and str(device).strip() and str(device) != "auto":
        try:
            dev = torch.device(str(device))
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"invalid device {device!r}", hint="use cpu, cuda, cuda:N or mps") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device {device!r} requested but CUDA is not available", hint="use --device cpu")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ModelError(f"device {device!r} requested but MPS is not available", hint="use --device cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars while loading."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled() if hasattr(hf_logging, "is_progress_bar_enabled") else True
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _snapshot(repo_id: str) -> Path:
    """A local folder with the backbone files of a hub repo: cache first, then the network."""
    from geofast.models.hub import snapshot

    return snapshot(repo_id, ["config.json", "preprocessor_config.json", "model.safetensors"], what="CLIP backbone", hint=_HINT)


_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_TEXT_HINT = (
    f"text queries need a full CLIP checkpoint (model_type clip, e.g. {DEFAULT_CLIP}) with its tokenizer in the "
    f"backbone folder: hf download {DEFAULT_CLIP} {' '.join(_TOKENIZER_FILES)} --local-dir DIR (DIR: the --clip folder)"
)


def _read_config(folder: Path) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(f"CLIP backbone folder {folder} has no config.json", hint=_HINT)
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {config_path}: {e}", hint=_HINT) from e
    if not isinstance(raw, dict):
        raise ModelError(f"{config_path} is not a JSON object", hint=_HINT)
    return raw


def _text_config(folder: Path) -> Any:
    from transformers import CLIPTextConfig

    raw = _read_config(folder)
    if raw.get("model_type") != "clip" or not raw.get("text_config"):
        raise ModelError(f"the CLIP backbone in {folder} has no text tower (a vision-only checkpoint)", hint=_TEXT_HINT)
    text = dict(raw["text_config"])
    text.pop("model_type", None)
    config = CLIPTextConfig(**text)
    config.projection_dim = int(raw.get("projection_dim") or config.projection_dim or 0)
    if config.projection_dim != EXPECTED_DIM:
        raise ModelError(
            f"the CLIP text tower in {folder} projects to {config.projection_dim} dimensions; GeoCLIP's heads need {EXPECTED_DIM}",
            hint=_TEXT_HINT,
        )
    return config


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())


def _tokenizer_folder(folder: Path, source: str) -> Path:
    """The folder holding the tokenizer: the backbone folder, else (hub ids) the hub snapshot."""
    if _has_tokenizer(folder):
        return folder
    path = Path(source).expanduser()
    if not path.is_dir() and source.count("/") == 1 and not path.is_absolute():
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0")
        for local_only in (True, False) if not offline else (True,):
            try:
                snap = Path(snapshot_download(repo_id=source, allow_patterns=list(_TOKENIZER_FILES), local_files_only=local_only))
            except Exception:
                continue
            if _has_tokenizer(snap):
                return snap
    raise ModelError(
        f"the CLIP backbone in {folder} has no tokenizer (tokenizer.json or vocab.json + merges.txt)", hint=_TEXT_HINT
    )


@dataclass
class TextTower:
    """CLIP's text encoder with its projection, and the tokenizer."""

    model: Any
    tokenizer: Any
    max_length: int


def load_text_tower(folder: Path, source: str, device: torch.device, dtype: torch.dtype) -> TextTower:
    """Load CLIP's text tower and tokenizer from a backbone folder (see the module docstring)."""
    config = _text_config(folder)
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise ModelError(f"CLIP backbone folder {folder} has no weights (model.safetensors)", hint=_TEXT_HINT)
    tok_folder = _tokenizer_folder(folder, source)
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    with quiet_transformers():
        try:
            tokenizer = CLIPTokenizer.from_pretrained(tok_folder)
        except Exception as e:
            raise ModelError(
                f"cannot load the CLIP tokenizer from {tok_folder}: {str(e).splitlines()[0]}", hint=_TEXT_HINT
            ) from e
        try:
            loaded: Any = CLIPTextModelWithProjection.from_pretrained(
                folder, config=config, dtype=dtype, output_loading_info=True
            )
            model, info = loaded
        except Exception as e:
            raise ModelError(f"cannot load the CLIP text tower from {folder}: {str(e).splitlines()[0]}", hint=_TEXT_HINT) from e
    missing = list(info.get("missing_keys") or []) + [
        m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys") or []
    ]
    if missing:
        raise ModelError(
            f"the weights in {folder} do not contain the CLIP text tower "
            f"({len(missing)} tensors missing or mismatched, e.g. {missing[0]})",
            hint=_TEXT_HINT,
        )
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    limit = int(config.max_position_embeddings)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return TextTower(model=model, tokenizer=tokenizer, max_length=limit)


def _vision_config(folder: Path) -> Any:
    from transformers import CLIPVisionConfig

    config_path = folder / "config.json"
    raw = _read_config(folder)
    kind = raw.get("model_type")
    if kind == "clip":
        vision = dict(raw.get("vision_config") or {})
        vision.pop("model_type", None)
        config = CLIPVisionConfig(**vision)
        # The projection width is a top-level field of a full CLIP config.
        config.projection_dim = int(raw.get("projection_dim", config.projection_dim))
    elif kind == "clip_vision_model":
        config = CLIPVisionConfig.from_dict(raw)
    else:
        raise ModelError(
            f"{config_path} describes a {kind!r} model, not a CLIP model",
            hint="point --clip at a CLIP ViT checkpoint (model_type clip or clip_vision_model)",
        )
    if config.projection_dim != EXPECTED_DIM:
        raise ModelError(
            f"the CLIP backbone in {folder} projects to {config.projection_dim} dimensions; "
            f"GeoCLIP's heads need {EXPECTED_DIM} (ViT-L/14)",
            hint=f"use {DEFAULT_CLIP} or a checkpoint with projection_dim {EXPECTED_DIM}",
        )
    return config


@dataclass
class Backbone:
    """A loaded CLIP vision tower with its image processor."""

    model: Any
    processor: Any
    source: str
    folder: Path
    device: torch.device
    dtype: torch.dtype
    _text: TextTower | None = field(default=None, repr=False)
    #: The encoder's arithmetic: fp32, int8, bf16 or fp16 (:mod:`geofast.models.precision`).
    precision: str = "fp32"

    def text_tower(self) -> TextTower:
        """CLIP's text tower and tokenizer, loaded from the backbone's folder on first use."""
        if self._text is None:
            # int8 covers the image encoder only; the text tower runs in float32 there.
            self._text = load_text_tower(self.folder, self.source, self.device, self.dtype)
        return self._text

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask for ``texts`` (padded, truncated to the text tower's length)."""
        tower = self.text_tower()
        return dict(tower.tokenizer(list(texts), padding=True, truncation=True, max_length=tower.max_length, return_tensors="pt"))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected CLIP text features ``(B, 768)`` float32 (not normalised)."""
        import torch

        tower = self.text_tower()
        tokens = self.tokenize(texts)
        with torch.inference_mode():
            inputs = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            return tower.model(**inputs).text_embeds.float()

    #: When set, :meth:`encode` runs the forward pass there (``remote.encode(pixel_values)``,
    #: e.g. :class:`geofast.db.ray_executor.RayForward`: an evaluation's encoding on Ray actors).
    remote: Any = None

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP pixel values ``(B, 3, 224, 224)`` float32 for RGB PIL images (extreme aspect
        ratios centre-cropped first, :func:`geofast.images.clip_view`)."""
        return _run_processor(self.processor, images)

    def reduce(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """The processor's resize and centre crop only: 8-bit RGB images of the crop size
        (224 × 224) whose :meth:`preprocess` equals that of ``images`` bit for bit. A server
        keeps these instead of the decoded full-size photos."""
        from PIL import Image

        raw = self.processor(images=[_clip_view(im) for im in images], do_rescale=False, do_normalize=False, return_tensors="np")[
            "pixel_values"
        ]
        return [Image.fromarray(np.ascontiguousarray(np.moveaxis(np.asarray(x), 0, -1)).astype(np.uint8), "RGB") for x in raw]

    def text_unsupported(self) -> str | None:
        """Why this backbone cannot encode text queries (no server paths in it), or ``None``.
        Reads only the folder's file names and config, loads nothing."""
        if self._text is not None:
            return None
        try:
            raw = _read_config(self.folder)
        except ModelError:
            return "the CLIP backbone has no readable config.json"
        if raw.get("model_type") != "clip" or not raw.get("text_config"):
            return "the CLIP backbone has no text tower (a vision-only checkpoint)"
        if not _has_tokenizer(self.folder) and Path(self.source).expanduser().is_dir():
            return "the CLIP backbone has no tokenizer (tokenizer.json or vocab.json + merges.txt)"
        return None

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected CLIP image features ``(B, 768)`` float32 (not normalised)."""
        import torch

        if self.remote is not None:
            return self.remote.encode(pixel_values)
        with torch.inference_mode():
            x = pixel_values.to(self.device, dtype=self.dtype, non_blocking=True)
            out = self.model(pixel_values=x).image_embeds
            return out.float()


def _clip_view(im: Image.Image) -> Image.Image:
    from geofast.images import clip_view

    return clip_view(im)


def _run_processor(processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """CLIP pixel values of ``images``; each is capped to :data:`geofast.images.MAX_ASPECT`
    first, so the processor's shortest-side resize never builds a giant intermediate."""
    return processor(images=[_clip_view(im) for im in images], return_tensors="pt")["pixel_values"]


def _backbone_folder(source: str) -> Path:
    """The local folder holding the backbone ``source`` (a folder, or a hub id from the cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"--clip {source}: is a file; pass the folder that holds config.json", hint=_HINT)
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") != 1:
        raise ModelError(f"CLIP backbone folder {source} does not exist", hint=_HINT)
    return _snapshot(source)


def _load_processor(folder: Path) -> Any:
    from transformers import AutoImageProcessor, CLIPImageProcessor

    if not (folder / "preprocessor_config.json").is_file():
        return CLIPImageProcessor()
    with quiet_transformers():
        try:
            return AutoImageProcessor.from_pretrained(folder)
        except Exception as e:
            raise ModelError(f"cannot read {folder / 'preprocessor_config.json'}: {e}", hint=_HINT) from e


def load_preprocess(clip: str | os.PathLike[str] | None = None) -> Callable[[Sequence[Image.Image]], torch.Tensor]:
    """Only the backbone's preprocessing (:meth:`Backbone.preprocess`, no weights loaded): what
    image-decoding workers of a distributed build run."""
    processor = _load_processor(_backbone_folder(resolve_source(clip)))

    def preprocess(images: Sequence[Image.Image]) -> torch.Tensor:
        return _run_processor(processor, images)

    return preprocess


def load_backbone(
    clip: str | os.PathLike[str] | None = None,
    device: str | None = None,
    *,
    precision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Backbone:
    """Load the CLIP vision backbone (see the module docstring for where it comes from) in
    ``precision`` (fp32, int8, bf16; default fp16 on CUDA, fp32 elsewhere: see
    :mod:`geofast.models.precision`). An int8 encoder is cached under ``cache_dir``
    (default ``$GEOFAST_CACHE``); once cached, the float32 weights are not read again."""
    from geofast.models import precision as prec

    source = resolve_source(clip)
    folder = _backbone_folder(source)
    config = _vision_config(folder)
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise ModelError(f"CLIP backbone folder {folder} has no weights (model.safetensors)", hint=_HINT)

    dev = pick_device(device)
    mode = prec.resolve_precision(precision, dev)
    dtype = prec.torch_dtype(mode)
    processor = _load_processor(folder)
    if mode == "int8" and prec.int8_cached(folder, cache_dir):
        import torch

        vision = prec.OnnxVision(prec.int8_model_path(folder, cache_dir)[0], torch.get_num_threads())
        return Backbone(model=vision, processor=processor, source=source, folder=folder, device=dev, dtype=dtype, precision=mode)
    model = _load_vision(folder, config, dtype)
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if mode == "int8":
        model = prec.load_int8(model, folder, int(config.image_size), cache_dir=cache_dir)
    return Backbone(model=model, processor=processor, source=source, folder=folder, device=dev, dtype=dtype, precision=mode)


def _load_vision(folder: Path, config: Any, dtype: torch.dtype) -> Any:
    from transformers import CLIPVisionModelWithProjection

    with quiet_transformers():
        try:
            loaded: Any = CLIPVisionModelWithProjection.from_pretrained(
                folder, config=config, dtype=dtype, output_loading_info=True
            )
            model, info = loaded
        except Exception as e:
            raise ModelError(f"cannot load the CLIP backbone from {folder}: {e}", hint=_HINT) from e
        missing = list(info.get("missing_keys") or []) + [
            m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys") or []
        ]
        if missing:
            raise ModelError(
                f"the weights in {folder} do not contain the CLIP vision tower "
                f"({len(missing)} tensors missing or mismatched, e.g. {missing[0]})",
                hint=_HINT,
            )
    return model
