"""Options shared by the commands that run a prediction method (``locate``, ``eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

_LLM = "LLM (--method rag)"
_DB = "Image database (--method swc / geoclip+swc / rag)"

Method = Annotated[
    str,
    typer.Option(
        "--method",
        help="geoclip; swc (Search-within-Cell over --db photos, else over GeoCLIP's top-k); geoclip+swc (SwC among --db photos inside GeoCLIP's top-1 cell); rag (an LLM with retrieved references, Img2Loc/G3).",
    ),
]
Model = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        help="geoclip (photos), geomapclip (map images), a geofast train run folder, or a geoclip release folder.",
    ),
]
Clip = Annotated[
    str | None,
    typer.Option(
        "--clip",
        metavar="ID|DIR",
        help="CLIP ViT-L/14 backbone: hub id or local folder (default $GEOFAST_CLIP, then openai/clip-vit-large-patch14).",
    ),
]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or mps (default: best available).")]
Precision = Annotated[
    str | None,
    typer.Option(
        "--precision",
        metavar="fp32|int8|bf16",
        help="Image encoder arithmetic: fp32 (CPU default), int8 (CPU, ~3x faster; check agreement with geofast bench --area precision), bf16 (CPUs with AVX512-BF16/AMX); fp16 is the CUDA default.",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")]
Gallery = Annotated[
    Path | None, typer.Option("--gallery", metavar="FILE", help="Custom gallery: CSV with lat/lon columns or an (N, 2) .npy.")
]
Region = Annotated[
    str | None,
    typer.Option("--region", metavar="LAT_MIN,LON_MIN,LAT_MAX,LON_MAX", help="Only consider gallery points inside this box."),
]
RawCandidates = Annotated[
    bool,
    typer.Option(
        "--raw-candidates",
        help="Keep GeoCLIP's raw candidate list, where a gallery point listed twice appears twice (default: candidates at the same coordinates are merged, probabilities summed).",
    ),
]
Db = Annotated[Path | None, typer.Option("--db", metavar="DIR", rich_help_panel=_DB, help="Image database (geofast db build).")]
SwcK = Annotated[int, typer.Option("--swc-k", min=1, rich_help_panel=_DB, help="Database neighbours clustered by SwC.")]
EpsKm = Annotated[float, typer.Option("--eps-km", min=0.0, rich_help_panel=_DB, help="DBSCAN radius (km) of SwC.")]
CellKm = Annotated[
    float,
    typer.Option("--cell-km", min=0.0, rich_help_panel=_DB, help="Cell radius (km) around GeoCLIP's top-1 for geoclip+swc."),
]
Confidence = Annotated[
    bool,
    typer.Option(
        "--confidence/--no-confidence",
        rich_help_panel=_DB,
        help="With --db: load GeoCLIP's heads for a PD confidence (--no-confidence loads only the CLIP backbone).",
    ),
]

LlmBaseUrl = Annotated[
    str | None,
    typer.Option(
        "--llm-base-url",
        metavar="URL",
        rich_help_panel=_LLM,
        help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 (Ollama), http://localhost:8000/v1 (vLLM); default $GEOFAST_LLM_BASE_URL, $OPENAI_BASE_URL, OpenAI. The key comes from $GEOFAST_LLM_API_KEY or $OPENAI_API_KEY, never the command line.",
    ),
]
LlmModel = Annotated[
    str | None,
    typer.Option(
        "--llm-model", metavar="NAME", rich_help_panel=_LLM, help="Model name (default $GEOFAST_LLM_MODEL, else gpt-4o-mini)."
    ),
]
LlmRecipe = Annotated[
    str,
    typer.Option(
        "--llm-recipe",
        rich_help_panel=_LLM,
        help="g3 (prompts with 0/5/10/15 references, 2 samples each) or img2loc (16 nearest + 16 farthest, 1 sample); the options below override it.",
    ),
]
LlmReferences = Annotated[
    str | None,
    typer.Option(
        "--llm-references", metavar="N,...", rich_help_panel=_LLM, help="Reference counts of the prompts, e.g. 0,5,10,15."
    ),
]
LlmSamples = Annotated[int | None, typer.Option("--llm-samples", min=1, rich_help_panel=_LLM, help="Samples per prompt.")]
LlmTemperature = Annotated[float | None, typer.Option("--llm-temperature", min=0.0, max=2.0, rich_help_panel=_LLM)]
LlmNearest = Annotated[
    int | None,
    typer.Option(
        "--llm-nearest",
        min=0,
        rich_help_panel=_LLM,
        help="Nearest database neighbours (or GeoCLIP candidates) offered as references.",
    ),
]
LlmFarthest = Annotated[
    int | None,
    typer.Option(
        "--llm-farthest",
        min=0,
        rich_help_panel=_LLM,
        help="Farthest database neighbours offered as negative references (--db only).",
    ),
]
LlmConcurrency = Annotated[
    int, typer.Option("--llm-concurrency", min=1, rich_help_panel=_LLM, help="Requests in flight at once.")
]
LlmTimeout = Annotated[float, typer.Option("--llm-timeout", min=0.1, rich_help_panel=_LLM, help="Seconds per request.")]
LlmRetries = Annotated[
    int,
    typer.Option(
        "--llm-retries", min=0, rich_help_panel=_LLM, help="Retries on 429/5xx/connection errors (exponential backoff)."
    ),
]
LlmDeadline = Annotated[
    float,
    typer.Option(
        "--llm-deadline",
        min=0.1,
        rich_help_panel=_LLM,
        help="Seconds one image may spend in the LLM stage; past it the retrieval answer is used, flagged as a fallback.",
    ),
]
LlmImageSize = Annotated[
    int, typer.Option("--llm-image-size", min=16, rich_help_panel=_LLM, help="Longest side (px) of the image sent to the model.")
]
LlmMaxTokens = Annotated[int, typer.Option("--llm-max-tokens", min=1, rich_help_panel=_LLM)]
LlmCache = Annotated[
    bool,
    typer.Option(
        "--llm-cache/--no-llm-cache", rich_help_panel=_LLM, help="Reuse cached answers for the same image, prompt and model."
    ),
]


def method_options_from(params: dict[str, Any]) -> Any:
    """The :class:`~geofast.predict.factory.MethodOptions` of a command's method options (pass
    ``locals()``); ``locate``, ``eval`` and ``serve`` declare the same ones."""
    from geofast.predict.factory import MethodOptions

    method = params["method"]
    return MethodOptions(
        method=method,
        model=params["model"],
        clip=params["clip"],
        device=params["device"],
        gallery=params["gallery"],
        region=params["region"],
        db=params["db"],
        swc_k=params["swc_k"],
        eps_km=params["eps_km"],
        cell_km=params["cell_km"],
        confidence=params["confidence"],
        llm=llm_config_from(params) if method == "rag" else None,
        merge_duplicates=not params["raw_candidates"],
        precision=params.get("precision"),
    )


def llm_config_from(params: dict[str, Any]) -> Any:
    """The LLM config of a command's ``llm_*`` parameters (pass ``locals()``)."""
    return llm_config(**{k[len("llm_") :]: v for k, v in params.items() if k.startswith("llm_")})


def llm_config(
    recipe: str,
    base_url: str | None,
    model: str | None,
    references: str | None,
    samples: int | None,
    temperature: float | None,
    nearest: int | None,
    farthest: int | None,
    concurrency: int,
    timeout: float,
    retries: int,
    image_size: int,
    max_tokens: int,
    cache: bool,
    deadline: float | None = None,
) -> Any:
    """The :class:`~geofast.llm.LLMConfig` of the ``--llm-*`` options."""
    from geofast.errors import InputError
    from geofast.llm import LLMConfig

    if recipe not in ("g3", "img2loc"):
        raise InputError(f"unknown --llm-recipe {recipe!r}", hint="choose g3 or img2loc")
    overrides: dict[str, Any] = dict(
        base_url=base_url,
        model=model,
        concurrency=concurrency,
        timeout_s=timeout,
        max_retries=retries,
        image_max_side=image_size,
        max_tokens=max_tokens,
        cache=cache,
    )
    if deadline is not None:
        overrides["deadline_s"] = deadline
    if references is not None:
        try:
            overrides["references"] = tuple(int(x) for x in references.split(",") if x.strip())
        except ValueError:
            raise InputError(
                f"--llm-references {references!r} must be whole numbers separated by commas",
                hint="e.g. --llm-references 0,5,10,15",
            ) from None
    for key, value in (("samples", samples), ("temperature", temperature), ("nearest", nearest), ("farthest", farthest)):
        if value is not None:
            overrides[key] = value
    return LLMConfig.g3(**overrides) if recipe == "g3" else LLMConfig.img2loc(**overrides)


_RAY = "Ray cluster (pip install 'geofast[scale]')"
#: ``--ray`` without an address (geofast.cli.main supplies it): a local cluster (every CPU and GPU of this machine).
RAY_LOCAL = "local"
Ray = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        rich_help_panel=_RAY,
        help="Encode on a Ray cluster: HOST:PORT of a running one (ray start --head prints it), or no address for a local cluster using every GPU of this machine. Same results as without --ray.",
    ),
]
RayActors = Annotated[
    int | None,
    typer.Option(
        "--ray-actors", min=1, rich_help_panel=_RAY, help="Encoder actors, each loading the backbone once (default: one per GPU)."
    ),
]
RayGpusPerActor = Annotated[
    float | None,
    typer.Option(
        "--ray-gpus-per-actor",
        min=0.0,
        rich_help_panel=_RAY,
        help="GPUs per encoder actor (default 1 when the cluster has GPUs, else 0: encode on CPUs).",
    ),
]


def ray_options(address: str | None, actors: int | None, gpus_per_actor: float | None) -> Any:
    """``--ray``, ``--ray-actors``, ``--ray-gpus-per-actor`` → RayOptions, or None without ``--ray``."""
    from geofast.errors import InputError

    if address is None:
        if actors is not None or gpus_per_actor is not None:
            raise InputError("--ray-actors and --ray-gpus-per-actor need --ray", hint="add --ray [ADDRESS]")
        return None
    from geofast.db.ray_executor import RayOptions

    address = address.strip()
    return RayOptions(address=None if address in ("", RAY_LOCAL) else address, actors=actors, gpus_per_actor=gpus_per_actor)
