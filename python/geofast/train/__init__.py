"""Train and fine-tune GeoCLIP models on cached CLIP embeddings (``geofast train``).

GeoCLIP's CLIP ViT-L/14 backbone is frozen, so an image database (``geofast db build``) holds
everything a training step needs: a step runs only the heads (image MLP, location encoder, logit
scale), about 0.5 GFLOP per image instead of the backbone's 162. See :mod:`geofast.train.run`
for the run folder, :mod:`geofast.train.objective` for the loss and the GPS queue.

>>> from geofast.train import TrainConfig, train                          # doctest: +SKIP
>>> result = train(TrainConfig(db="photos.db", out="runs/city", epochs=5))  # doctest: +SKIP
>>> import geofast as gf; gf.Geolocator.from_pretrained(result.run_dir)    # doctest: +SKIP

Importing this package imports neither torch nor Lightning; :func:`train` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geofast.train.config import TrainConfig

if TYPE_CHECKING:
    from geofast.train.run import TrainResult


def train(config: TrainConfig | None = None, /, **kwargs: Any) -> TrainResult:
    """Run a training (see :func:`geofast.train.run.train`); ``train(db=..., out=...)`` also works."""
    from geofast.train.run import train as _train

    callbacks = {k: kwargs.pop(k) for k in ("on_event", "on_step", "on_epoch") if k in kwargs}
    if config is None:
        config = TrainConfig(**kwargs)
    elif kwargs:
        raise TypeError("pass either a TrainConfig or keyword settings, not both")
    return _train(config, **callbacks)


def export(source: Any, out: Any, **kwargs: Any) -> Any:
    """Write ``source`` (a run, a model folder, "geoclip", "geomapclip") in ``geoclip``'s release format."""
    from geofast.train.export import export_model

    return export_model(source, out, **kwargs)


__all__ = ["TrainConfig", "export", "train"]
