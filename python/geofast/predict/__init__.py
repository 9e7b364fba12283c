"""Predictors: GeoCLIP/GeoMapCLIP retrieval (``geoclip``), Search-within-Cell (``swc``) and
retrieval-augmented LLM geolocation (``rag``). All return :class:`Prediction` objects."""

from __future__ import annotations

from geofast.predict.types import Candidate, Prediction

__all__ = ["Candidate", "Prediction"]
