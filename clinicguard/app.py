"""The application factory: ``create_app(settings)`` wires everything, once.

No module-level app, engine or settings: uvicorn calls :func:`create_app_from_env` as a
factory in each worker process.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from clinicguard import __version__
from clinicguard.audit import api as audit_api
from clinicguard.auth import api as auth_api
from clinicguard.clinic import api as clinic_api
from clinicguard.core.clock import Clock
from clinicguard.core.logging import configure_logging
from clinicguard.http import api as health_api
from clinicguard.http.headers import ProfileTable, docs_profile
from clinicguard.http.pipeline import pipeline_middleware
from clinicguard.http.problems import install_exception_handlers
from clinicguard.preflight import preflight
from clinicguard.settings import Settings, load_settings
from clinicguard.store.db import Database
from clinicguard.store.interfaces import KeyValueStore
from clinicguard.wiring import build_services

OPENAPI_URL = "/api/openapi.json"
DOCS_URL = "/api/docs"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _docs_page() -> tuple[bytes, list[str]]:
    """The Swagger UI page and the sha256 hashes of its inline scripts (for the CSP)."""
    page = get_swagger_ui_html(openapi_url=OPENAPI_URL, title="clinicguard API").body
    scripts = _INLINE_SCRIPT.findall(bytes(page).decode())
    hashes = [base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in scripts]
    return bytes(page), hashes


def create_app(
    settings: Settings,
    *,
    database: Database | None = None,
    kv: KeyValueStore | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """Build the service. ``database``, ``kv`` and ``clock`` may be passed in (tests, bench);
    otherwise they are created from ``settings``."""
    services = build_services(settings, database=database, kv=kv, clock=clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await preflight(settings, services.db)
        await services.start()
        try:
            yield
        finally:
            await services.close()

    docs_html, docs_hashes = _docs_page()
    profiles = ProfileTable(
        [] if settings.is_production else [(DOCS_URL, docs_profile(docs_hashes))]
    )
    app = FastAPI(
        title="clinicguard",
        version=__version__,
        openapi_url=OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        middleware=pipeline_middleware(
            settings,
            profiles=profiles,
            multipart_paths=[clinic_api.UPLOAD_PATH],
            # a file plus the multipart framing around it
            large_bodies=[(clinic_api.UPLOAD_PATH, settings.upload_max_bytes + 64 * 1024)],
        ),
        debug=False,
    )
    app.state.settings = settings
    app.state.services = services
    app.state.database = services.db
    app.state.kv = services.kv
    install_exception_handlers(app)
    app.include_router(health_api.router)
    app.include_router(auth_api.router)
    app.include_router(auth_api.wellknown)
    app.include_router(clinic_api.router)
    app.include_router(clinic_api.security)
    app.include_router(audit_api.security)
    app.include_router(audit_api.patients)

    if not settings.is_production:

        @app.get(DOCS_URL, include_in_schema=False)
        async def api_docs() -> HTMLResponse:
            return HTMLResponse(docs_html)

    return app


def create_app_from_env() -> FastAPI:
    """The uvicorn factory: settings from the environment."""
    settings = load_settings()
    configure_logging(
        json_logs=settings.is_production, level=logging.DEBUG if settings.debug else logging.INFO
    )
    return create_app(settings)
