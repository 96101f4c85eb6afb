"""The operator's entry point: ``clinicguard …`` (also ``python -m clinicguard …``)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape
from uvicorn.supervisors import Multiprocess

from clinicguard.auth.passwords import Argon2PasswordHasher
from clinicguard.clinic.demo import DemoRefused, database_is_empty, seed_demo
from clinicguard.core.errors import ConfigurationError
from clinicguard.preflight import preflight
from clinicguard.settings import Settings, load_settings
from clinicguard.store.db import Database
from clinicguard.store.migrate import upgrade_to_head

app = typer.Typer(
    help="clinicguard: security- and privacy-first backend for clinics.",
    no_args_is_help=True,
    add_completion=False,
)
demo_app = typer.Typer(help="The demo data set (development and test only).", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
out = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        out.print(f"[red]invalid configuration:[/red]\n{escape(str(exc))}")
        raise typer.Exit(2) from exc


class TLS13Config(uvicorn.Config):
    """uvicorn's config with the TLS context pinned to TLS 1.3 (older versions refused)."""

    def load(self) -> None:
        super().load()
        if self.ssl is not None:
            self.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
            self.ssl.maximum_version = ssl.TLSVersion.TLSv1_3


async def _check_startup(settings: Settings) -> None:
    db = Database.from_url(settings.database_url, hide_parameters=True)
    try:
        await preflight(settings, db)
    finally:
        await db.dispose()


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default CLINICGUARD_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default CLINICGUARD_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain (TLS 1.3 only).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key.")] = None,
) -> None:
    """Serve the API (after the start-up checks pass)."""
    settings = _settings()
    tls_cert = tls_cert or settings.tls_cert_file
    tls_key = tls_key or settings.tls_key_file
    if (tls_cert is None) != (tls_key is None):
        out.print("[red]--tls-cert and --tls-key go together[/red]")
        raise typer.Exit(2)
    try:
        asyncio.run(_check_startup(settings))
    except ConfigurationError as exc:
        out.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    bind_host = host or settings.host
    bind_port = port if port is not None else settings.port
    scheme = "https" if tls_cert else "http"
    base = f"{scheme}://{bind_host}:{bind_port}"
    out.print(f"clinicguard {settings.env} serving on [bold]{base}[/bold] with {workers} worker(s)")
    out.print(f"  API       {base}/api/v1   health {base}/healthz   ready {base}/readyz")
    if not settings.is_production:
        out.print(f"  API docs  {base}/api/docs  (OpenAPI {base}/api/openapi.json)")
    config = TLS13Config(
        "clinicguard.app:create_app_from_env",
        factory=True,
        host=bind_host,
        port=bind_port,
        workers=workers,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        proxy_headers=False,  # the pipeline resolves client IPs from its own trusted list
        server_header=False,
        date_header=True,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    if workers > 1:
        sock = config.bind_socket()
        Multiprocess(
            config, sockets=[sock]
        ).run()  # uvicorn >= 0.54: workers build their own Server
    else:
        server.run()


@app.command()
def migrate() -> None:
    """Bring the database schema to the newest version (as the schema owner)."""
    settings = _settings()
    upgrade_to_head(settings.migration_database_url, settings.database_url)
    out.print("database schema is up to date")


async def _seed(settings: Settings, out_file: Path, if_empty: bool) -> dict[str, Any] | None:
    db = Database.from_url(settings.database_url, hide_parameters=True)
    hasher = Argon2PasswordHasher()
    try:
        if if_empty and not await database_is_empty(db):
            return None
        return await seed_demo(db, hasher, production=settings.is_production)
    finally:
        hasher.close()
        await db.dispose()


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


@demo_app.command("seed")
def demo_seed(
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the credentials JSON.")],
    if_empty: Annotated[
        bool, typer.Option(help="Do nothing when the database holds data.")
    ] = False,
) -> None:
    """Create the demo clinics and write their credentials (mode 0600). Refused in production."""
    settings = _settings()
    if settings.is_production:
        out.print("[red]refused: the demo data set is never created in production[/red]")
        raise typer.Exit(2)
    try:
        creds = asyncio.run(_seed(settings, out_file, if_empty))
    except DemoRefused as exc:
        out.print(f"[red]refused: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    if creds is None:
        out.print(
            f"demo data already present; its credentials are in {out_file}"
            if out_file.exists()
            else "the database already holds data; nothing seeded"
        )
        return
    _write_private(out_file, creds)
    clinics = ", ".join(c["name"] for c in creds["clinics"])
    out.print(f"demo clinics created ({clinics}); credentials written to [bold]{out_file}[/bold]")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
