"""Property-based fuzzing of the whole HTTP surface of ``geofast serve`` from its OpenAPI schema
with Schemathesis (examples, coverage and fuzzing phases; bounded in examples and time), against
a real server on 127.0.0.1 with the tiny backbone: no 5xx, no traceback in any answer, every
status, content type, header and body as the schema declares, and the server alive afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serve_support import start_server, stop

#: Checks that hold for any request, valid or not (the ones about accepting or rejecting data are
#: left out: e.g. top_k's range is checked by the server, not declared in the schema).
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


@pytest.mark.slow
def test_schemathesis_finds_nothing(tiny_clip_dir, cache_dir, geolocator, tmp_path):
    base, _, proc = start_server(cache_dir, tiny_clip_dir)
    har = tmp_path / "fuzz.har"
    try:
        cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json", "--checks", CHECKS]
        cmd += ["--max-examples", "25", "--seed", "20", "--request-timeout", "60", "--workers", "1"]
        cmd += ["--report", "har", "--report-har-path", str(har)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=540, cwd=tmp_path)
        alive = httpx.get(base + "/healthz", timeout=10).status_code
    finally:
        stop(proc)
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, tail
    assert alive == 200 and proc.returncode in (0, 130), tail  # 130: stopped by the test's SIGINT
    entries = json.loads(Path(har).read_text())["log"]["entries"]
    assert len(entries) >= 50, len(entries)  # it really ran
    for entry in entries:
        text = entry["response"]["content"].get("text") or ""
        assert "Traceback" not in text and 'File "' not in text, text[:300]
        assert entry["response"]["status"] < 500, (entry["request"]["url"], entry["response"]["status"], text[:300])
    print(f"schemathesis: {len(entries)} requests, statuses {sorted({e['response']['status'] for e in entries})}")
