"""Options declared once and shared by several commands.

A command takes a whole group of options with :func:`with_options`: the group's parameters are
added to the command's signature (typer sees them as if written out) and reach the command as
one :class:`Shared` mapping. To give every command of a group a new option, add it to the group.
Options one command alone takes stay in that command's signature, typed with the aliases here
where another command declares the same option.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

_LLM = "LLM (--method rag)"


def positive(value: float | None) -> float | None:
    """An option that must be > 0 (typer's ``min`` is a closed bound: 0 would pass)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g} is not > 0")
    return value


_DB = "Image database (--method swc / geoclip+swc / rag)"

Method = Annotated[
    str,
    typer.Option(
        "--method",
        metavar="geoclip|swc|geoclip+swc|rag",
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
Device = Annotated[
    str | None,
    typer.Option("--device", metavar="cpu|cuda|cuda:N|mps", help="Where the models run (default: the best available)."),
]
Precision = Annotated[
    str | None,
    typer.Option(
        "--precision",
        metavar="fp32|int8|bf16",
        help="Image encoder arithmetic: fp32 (CPU default), int8 (CPU, quantized with ONNX Runtime; check agreement on "
        "your photos with geofast check), bf16 (CPUs with AVX512-BF16 or AMX); fp16 is the CUDA default.",
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
EpsKm = Annotated[
    float,
    typer.Option(
        "--eps-km", metavar="KM > 0", callback=positive, rich_help_panel=_DB, help="DBSCAN radius (km) of SwC (swc, geoclip+swc)."
    ),
]
CellKm = Annotated[
    float,
    typer.Option(
        "--cell-km",
        metavar="KM > 0",
        callback=positive,
        rich_help_panel=_DB,
        help="Cell radius (km) around GeoCLIP's top-1 (geoclip+swc).",
    ),
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
        metavar="g3|img2loc",
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
LlmTemperature = Annotated[
    float | None,
    typer.Option(
        "--llm-temperature",
        min=0.0,
        max=2.0,
        rich_help_panel=_LLM,
        help="Sampling temperature of the LLM (g3: 0.7; several samples per prompt need a temperature above 0).",
    ),
]
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
LlmMaxTokens = Annotated[
    int,
    typer.Option(
        "--llm-max-tokens",
        min=1,
        rich_help_panel=_LLM,
        help="Longest answer (tokens) the LLM may write per request.",
    ),
]
LlmCache = Annotated[
    bool,
    typer.Option(
        "--llm-cache/--no-llm-cache", rich_help_panel=_LLM, help="Reuse cached answers for the same image, prompt and model."
    ),
]


TopK = Annotated[int, typer.Option("--top-k", "-k", min=1, metavar="N", help="Candidates per image.")]
Places = Annotated[bool, typer.Option("--places/--no-places", help="Name the nearest GeoNames place of each candidate.")]
Workers = Annotated[
    int | None, typer.Option("--workers", min=1, help="Image-loading threads (default: 1 on CPU, up to 8 with a GPU).")
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar with ETA on stderr.")]


class Shared(dict[str, Any]):
    """The values of a command's option groups, by parameter name; ``given`` holds the names
    the user typed on the command line (the rest kept their defaults)."""

    given: frozenset[str] = frozenset()


#: The default of a command's ``shared`` parameter (``shared: o.Shared = o.GROUP``): replaced
#: by :func:`with_options` with the group's options.
GROUP = Shared()


@dataclass(frozen=True)
class OptionGroup:
    """Options several commands take, each declared once: (parameter name, annotated type, default)."""

    options: tuple[tuple[str, Any, Any], ...]

    def without(self, *names: str) -> OptionGroup:
        return OptionGroup(tuple(o for o in self.options if o[0] not in names))

    def __add__(self, other: OptionGroup) -> OptionGroup:
        return OptionGroup(self.options + other.options)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o[0] for o in self.options)


F = TypeVar("F", bound=Callable[..., Any])
_CTX = "_geofast_ctx"


def with_options(group: OptionGroup) -> Callable[[F], F]:
    """Give a command the options of ``group``: they take the place of its ``shared`` parameter
    (so ``--help`` lists them there) and arrive in it as one :class:`Shared` mapping."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = list(sig.parameters.values())
        at = [p.name for p in own].index("shared")
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d) for n, a, d in group.options]
        ctx = inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[:at] + added + own[at + 1 :]] + [ctx]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            context = kwargs.pop(_CTX)
            shared = Shared((n, kwargs.pop(n)) for n in group.names)
            shared.given = frozenset(n for n in group.names if _typed(context, n))
            return fn(**kwargs, shared=shared)

        command.__signature__ = sig.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate


def _typed(context: Any, name: str) -> bool:
    source = context.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


#: The options that choose and configure a prediction method (locate, eval, serve).
METHOD = OptionGroup(
    (
        ("method", Method, "geoclip"),
        ("model", Model, "geoclip"),
        ("clip", Clip, None),
        ("device", Device, None),
        ("precision", Precision, None),
        ("gallery", Gallery, None),
        ("region", Region, None),
        ("raw_candidates", RawCandidates, False),
        ("db", Db, None),
        ("swc_k", SwcK, 10),
        ("eps_km", EpsKm, 1.0),
        ("cell_km", CellKm, 25.0),
        ("confidence", Confidence, True),
    )
)
#: The ``--llm-*`` options of ``--method rag``.
LLM = OptionGroup(
    (
        ("llm_base_url", LlmBaseUrl, None),
        ("llm_model", LlmModel, None),
        ("llm_recipe", LlmRecipe, "g3"),
        ("llm_references", LlmReferences, None),
        ("llm_samples", LlmSamples, None),
        ("llm_temperature", LlmTemperature, None),
        ("llm_nearest", LlmNearest, None),
        ("llm_farthest", LlmFarthest, None),
        ("llm_concurrency", LlmConcurrency, 8),
        ("llm_timeout", LlmTimeout, 60.0),
        ("llm_retries", LlmRetries, 3),
        ("llm_image_size", LlmImageSize, 512),
        ("llm_max_tokens", LlmMaxTokens, 256),
        ("llm_cache", LlmCache, True),
        ("llm_deadline", LlmDeadline, 180.0),
    )
)

#: Which methods use each method-specific option; giving one to another method is an error.
USED_BY: dict[str, tuple[str, ...]] = {
    "swc_k": ("swc", "geoclip+swc"),
    "eps_km": ("swc", "geoclip+swc"),
    "cell_km": ("geoclip+swc",),
    "confidence": ("swc", "geoclip+swc"),
    **{name: ("rag",) for name in LLM.names},
}


def check_method_options(shared: Mapping[str, Any], given: Iterable[str] | None = None) -> None:
    """Refuse, in one line, an option the chosen method would ignore (as ``--db`` with geoclip)."""
    from geofast.errors import InputError

    method = shared["method"]
    typed = getattr(shared, "given", frozenset()) if given is None else frozenset(given)
    for name, methods in USED_BY.items():
        if name in typed and method not in methods:
            flag = "--" + name.replace("_", "-")
            if name == "confidence":
                flag = "--confidence/--no-confidence"
            used = " or ".join(methods)
            raise InputError(
                f"{flag} is used by --method {used}, not --method {method}",
                hint=f"drop {flag.split('/')[0]}, or pass --method {methods[0]}",
            )
    if "swc_k" in typed and shared.get("db") is None:
        raise InputError(
            "--swc-k counts database neighbours and needs --db (without --db SwC clusters GeoCLIP's --top-k candidates)",
            hint="add --db DIR, or drop --swc-k and use --top-k",
        )


def method_options_from(params: Mapping[str, Any]) -> Any:
    """The :class:`~geofast.predict.factory.MethodOptions` of the options of :data:`METHOD` and
    :data:`LLM` (``locate``, ``eval`` and ``serve`` take both groups); options the method would
    ignore are refused first (:func:`check_method_options`)."""
    from geofast.predict.factory import MethodOptions

    check_method_options(params)
    method = params["method"]
    return MethodOptions(
        method=method,
        model=params["model"],
        clip=params["clip"],
        device=params["device"],
        precision=params["precision"],
        gallery=params["gallery"],
        region=params["region"],
        db=params["db"],
        swc_k=params["swc_k"],
        eps_km=params["eps_km"],
        cell_km=params["cell_km"],
        confidence=params["confidence"],
        llm=llm_config_from(params) if method == "rag" else None,
        merge_duplicates=not params["raw_candidates"],
    )


def llm_config_from(params: Mapping[str, Any]) -> Any:
    """The LLM config of a command's ``llm_*`` options."""
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


#: ``--ray [ADDRESS]``, ``--ray-actors``, ``--ray-gpus-per-actor`` (eval, db build, db add).
RAY = OptionGroup((("ray", Ray, None), ("ray_actors", RayActors, None), ("ray_gpus_per_actor", RayGpusPerActor, None)))


def ray_options_from(shared: Mapping[str, Any]) -> Any:
    """The RayOptions of the :data:`RAY` group, or None without ``--ray``."""
    return ray_options(shared["ray"], shared["ray_actors"], shared["ray_gpus_per_actor"])
