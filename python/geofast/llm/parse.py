"""Robust extraction of one (latitude, longitude) answer from an LLM's reply.

Img2Loc split the reply on a comma; real models answer in many shapes. :func:`parse_latlon`
tries, in this order, and within each form takes the **last** valid match (models that think
aloud tend to quote the references first and give their answer last):

1. JSON objects, also inside fenced code blocks, with Python-style quotes or trailing commas
   tolerated, nested objects searched: keys ``latitude``/``lat`` and
   ``longitude``/``lon``/``lng``/``long`` (any case); values numbers or strings such as
   ``"48.85"`` or ``"33.9° S"``.
2. Labelled values in prose: ``Latitude: -22.9068, Longitude: -43.1729``, ``lat=55.75 lon=37.62``,
   ``**Latitude:** 48.85``.
3. Hemisphere notation: ``48.85°N, 2.35°E``, ``N 40.4168, W 3.7038``,
   degree-minute-second ``34°03′08″N 118°14′37″W``, degree-decimal-minute ``48°51.4'N``.
4. A bare decimal pair: ``(64.1466, -21.9426)`` (both numbers need a decimal point, so counts
   such as "3 buildings, 2 cars" are not coordinates).

A reasoning block ``<think>...</think>`` is ignored. An answer outside |lat| ≤ 90, |lon| ≤ 180,
non-finite, or exactly (0, 0) (the placeholder models emit when they cannot tell) counts as no
answer; the parser then falls back to the next match or form.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from geofast.coords import valid_latlon as _valid_coordinate

__all__ = ["parse_latlon", "parse_coordinate", "valid_latlon"]

LatLon = tuple[float, float]

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_SPACES = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\s*\n\s*")
#: Replies are read from their end (where the answer is); longer ones are cut to this.
_MAX_CHARS = 50_000
_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})

_LAT_KEYS = {"latitude", "lat"}
_LON_KEYS = {"longitude", "lon", "lng", "long"}

_NUM = r"[-+]?\d{1,3}(?:\.\d+)?"
_UNUM = r"\d{1,3}(?:\.\d+)?"
_DEG = r"(?:°|º|˚|\b(?i:deg(?:rees?)?)\b|d(?=\s*\d))"
_MIN = r"(?:'|′|’|\bmin\b|m(?=\s*\d))"
_SEC = r"(?:\"|″|”|''|′′|\bsec\b|s\b)"
# Hemisphere letters are upper case only ("3 s" is not South); words in any case.
_HEMI = r"(?P<hemi>[NSEW]|(?i:north|south|east|west))(?![A-Za-z])"

# A coordinate in degrees (optionally minutes, seconds) without sign; the hemisphere after it
# ("48.85°N", "34°03′08″N") or before it ("N 40.4168", "S 33°52'").
_DMS_BODY = (
    rf"(?P<deg>{_UNUM})\s*{_DEG}?\s*"
    rf"(?:(?P<min>\d{{1,2}}(?:\.\d+)?)\s*{_MIN}\s*"
    rf"(?:(?P<sec>\d{{1,2}}(?:\.\d+)?)\s*{_SEC}?\s*)?)?"
)
_HEMI_AFTER = re.compile(rf"(?<![\d.]){_DMS_BODY}{_HEMI}")
_HEMI_BEFORE = re.compile(rf"(?<![A-Za-z]){_HEMI}\s*:?\s*{_DMS_BODY}")

# "Latitude: 48.85", "lat = -33.9", "**Latitude:** 48.85° N", "latitude of approximately 48.85"
_LABEL_SEP = (
    r"(?:[\s:=*~≈(\[\"']|\bis\b|\bof\b|\babout\b|\baround\b"
    r"|\bapprox(?:imately|\.)?|\broughly\b)*"
)
_LABELLED = re.compile(
    rf"\b(?P<label>(?i:latitude|longitude|lat|lon|lng|long))\b{_LABEL_SEP}"
    rf"(?P<num>{_NUM})(?:\s*{_DEG})?(?:\s*(?P<hemi>[NSEW])(?![A-Za-z]))?"
)

# Two decimals: "(64.1466, -21.9426)", "48.8566 2.3522".
_PAIR = re.compile(r"(?<![\d.\w])(?P<lat>[-+]?\d{1,2}\.\d+)\s*°?\s*(?:,|;|/|\s)\s*(?P<lon>[-+]?\d{1,3}\.\d+)\s*°?(?![\d.])")


def valid_latlon(lat: float, lon: float) -> bool:
    """True when (lat, lon) is a valid coordinate (:func:`geofast.coords.valid_latlon`) and not
    the (0, 0) placeholder models answer when they do not know."""
    return _valid_coordinate(lat, lon) and not (lat == 0.0 and lon == 0.0)


def _dms(deg: str, minutes: str | None, seconds: str | None) -> float:
    value = float(deg)
    if minutes is not None:
        m = float(minutes)
        if m >= 60.0:
            return math.nan
        value += m / 60.0
    if seconds is not None:
        s = float(seconds)
        if s >= 60.0:
            return math.nan
        value += s / 3600.0
    return value


def _hemi_sign(hemi: str) -> tuple[str, float]:
    """('lat' | 'lon', sign) of a hemisphere letter or word."""
    h = hemi[0].upper()
    return ("lat" if h in "NS" else "lon", -1.0 if h in "SW" else 1.0)


def parse_coordinate(value: Any) -> float | None:
    """One coordinate from a JSON value: a number, or a string like ``"48.85"``,
    ``"-33.9°"``, ``"33.9 S"``, ``"34°03'08\\"N"``. Returns signed degrees or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.translate(_MINUS).strip()
    try:
        return float(text.rstrip("°º˚ ").strip())
    except ValueError:
        pass
    m = _HEMI_AFTER.fullmatch(text) or _HEMI_BEFORE.fullmatch(text)
    if m is not None:
        _, sign = _hemi_sign(m.group("hemi"))
        return sign * _dms(m.group("deg"), m.group("min"), m.group("sec"))
    m = re.fullmatch(rf"(?P<num>{_NUM})\s*{_DEG}?", text)
    if m is not None:
        return float(m.group("num"))
    return None


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------


#: Longest JSON object considered an answer; bounds the work on adversarial replies.
_MAX_OBJECT_CHARS = 2000


def _json_objects(text: str) -> list[str]:
    """The balanced ``{...}`` substrings (nested ones too) of at most ``_MAX_OBJECT_CHARS``,
    in order of their start, found in one pass. Quotes are tracked inside braces only, so an
    apostrophe in the surrounding prose does not matter."""
    spans: list[tuple[int, int]] = []
    stack: list[int] = []
    in_str: str | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if in_str is not None:
            if c == "\\":
                i += 2
                continue
            if c == in_str:
                in_str = None
        elif c == "{":
            stack.append(i)
        elif c == "}":
            if stack:
                start = stack.pop()
                if i + 1 - start <= _MAX_OBJECT_CHARS:
                    spans.append((start, i + 1))
        elif c in "\"'" and stack:
            in_str = c
        i += 1
    spans.sort()
    return [text[s:e] for s, e in spans]


_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _loads_lenient(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        pass
    fixed = _TRAILING_COMMA.sub(r"\1", s)
    if '"' not in fixed:
        fixed = fixed.replace("'", '"')
    fixed = re.sub(r"\bNone\b", "null", fixed)
    fixed = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", fixed))
    # Unquoted keys: {latitude: 1.0, longitude: 2.0}
    fixed = re.sub(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:", r'\1"\2":', fixed)
    try:
        return json.loads(fixed)
    except ValueError:
        return None


def _norm_key(k: str) -> str:
    return re.sub(r"[^a-z]", "", k.lower())


def _latlon_from_obj(obj: Any, depth: int = 0) -> LatLon | None:
    if depth > 6:
        return None
    if isinstance(obj, dict):
        lat = lon = None
        for k, v in obj.items():
            if not isinstance(k, str):
                continue
            nk = _norm_key(k)
            if nk in _LAT_KEYS and lat is None:
                lat = parse_coordinate(v)
            elif nk in _LON_KEYS and lon is None:
                lon = parse_coordinate(v)
        if lat is not None and lon is not None and valid_latlon(lat, lon):
            return lat, lon
        for v in obj.values():
            if isinstance(v, dict | list):
                found = _latlon_from_obj(v, depth + 1)
                if found is not None:
                    return found
    elif isinstance(obj, list):
        for v in reversed(obj):
            found = _latlon_from_obj(v, depth + 1)
            if found is not None:
                return found
    return None


#: JSON objects tried, from the end of the reply.
_MAX_OBJECTS = 200


def _from_json(text: str) -> LatLon | None:
    for chunk in reversed(_json_objects(text)[-_MAX_OBJECTS:]):  # the last answer wins
        obj = _loads_lenient(chunk)
        if obj is None:
            continue
        ll = _latlon_from_obj(obj)
        if ll is not None:
            return ll
    return None


# ---------------------------------------------------------------------------------------------
# Prose
# ---------------------------------------------------------------------------------------------


def _from_labelled(text: str) -> LatLon | None:
    found: LatLon | None = None
    lat: float | None = None
    lon: float | None = None
    for m in _LABELLED.finditer(text):
        value = float(m.group("num"))
        hemi = m.group("hemi")
        is_lat = m.group("label").lower().startswith("lat")
        if hemi:
            axis, sign = _hemi_sign(hemi)
            if (axis == "lat") != is_lat:
                continue
            value = sign * abs(value)
        if is_lat:
            lat = value
        else:
            lon = value
        if lat is not None and lon is not None:
            if valid_latlon(lat, lon):
                found = (lat, lon)
            lat = lon = None
    return found


def _hemi_tokens(text: str, pattern: re.Pattern[str]) -> list[tuple[int, int, str, float]]:
    """(start, end, axis, signed value) of every hemisphere-tagged coordinate."""
    tokens: list[tuple[int, int, str, float]] = []
    for m in pattern.finditer(text):
        axis, sign = _hemi_sign(m.group("hemi"))
        value = sign * _dms(m.group("deg"), m.group("min"), m.group("sec"))
        tokens.append((m.start(), m.end(), axis, value))
    return tokens


def _from_hemispheres(text: str) -> LatLon | None:
    # "48.85 N, 2.35 E" and "N 48.85, E 2.35" read differently ("48.85, E" is not a longitude
    # of 48.85): try the suffix reading first, the prefix reading if it finds no pair.
    for pattern in (_HEMI_AFTER, _HEMI_BEFORE):
        tokens = _hemi_tokens(text, pattern)
        found: LatLon | None = None
        for i, (_start, end, axis, value) in enumerate(tokens[:-1]):
            s2, e2, axis2, value2 = tokens[i + 1]
            if s2 - end > 40 or axis == axis2:
                continue
            lat, lon = (value, value2) if axis == "lat" else (value2, value)
            if valid_latlon(lat, lon):
                found = (lat, lon)
        if found is not None:
            return found
    return None


def _from_pairs(text: str) -> LatLon | None:
    found: LatLon | None = None
    for m in _PAIR.finditer(text):
        lat, lon = float(m.group("lat")), float(m.group("lon"))
        if valid_latlon(lat, lon):
            found = (lat, lon)
    return found


def parse_latlon(text: str | None) -> LatLon | None:
    """The (latitude, longitude) in degrees that an LLM reply gives, or None.

    See the module docstring for the accepted forms and their precedence.
    """
    if not text:
        return None
    body = _THINK.sub(" ", text)[-_MAX_CHARS:].translate(_MINUS)
    # One space or one newline between tokens: the patterns' optional whitespace then cannot
    # backtrack over long runs (a reply of 20,000 spaces would otherwise take seconds).
    body = _NEWLINES.sub("\n", _SPACES.sub(" ", body))
    for extract in (_from_json, _from_labelled, _from_hemispheres, _from_pairs):
        found = extract(body)
        if found is not None:
            return found
    return None
