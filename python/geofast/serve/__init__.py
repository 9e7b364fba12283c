"""``geofast serve``: the HTTP API (FastAPI + uvicorn) with micro-batched inference.

>>> from geofast.serve import ServeConfig, create_app      # doctest: +SKIP
>>> app = create_app(ServeConfig())                        # any ASGI server can run it
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from geofast.serve.config import API_KEY_ENV, ServeConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from geofast.predict.types import Predictor


def create_app(config: ServeConfig, predictor: Predictor | None = None) -> FastAPI:
    """See :func:`geofast.serve.app.create_app`."""
    from geofast.serve.app import create_app as _create_app

    return _create_app(config, predictor)


def run(config: ServeConfig, *, log_level: str = "info") -> None:
    """Serve until interrupted. Cheap checks (binding without a key, method options, database)
    raise before anything loads; a model that fails to load stops the server and is raised here."""
    import uvicorn

    from geofast.serve.app import create_app as _create_app
    from geofast.serve.guard import header_timeout_protocol
    from geofast.serve.security import required_key

    required_key(config)
    config.method.check()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    serve_log = logging.getLogger("geofast.serve")
    if not serve_log.handlers:
        serve_log.addHandler(handler)
    serve_log.setLevel(log_level.upper())

    app = _create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=log_level == "debug",
            lifespan="on",
            timeout_graceful_shutdown=5,
            server_header=False,
            # Slowloris: idle keep-alive connections close after keep_alive_s, a request head
            # must be complete within header_timeout_s, and at most max_connections are served.
            http=header_timeout_protocol(config.header_timeout_s),
            timeout_keep_alive=max(1, round(config.keep_alive_s)),
            limit_concurrency=config.max_connections,
            h11_max_incomplete_event_size=64 * 1024,
        )
    )
    state = app.state.geofast

    def fatal(_error: Exception) -> None:
        server.should_exit = True

    state.on_fatal = fatal
    server.run()
    if state.load_error is not None:
        raise state.load_error


__all__ = ["API_KEY_ENV", "ServeConfig", "create_app", "run"]
