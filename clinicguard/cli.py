"""The operator's entry point: ``clinicguard …`` (also ``python -m clinicguard …``)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy.exc import DBAPIError
from uvicorn.supervisors import Multiprocess

from clinicguard.audit.checkpoints import seal_chains
from clinicguard.audit.retention import AuditRetention, RetentionReport
from clinicguard.audit.trail import PLATFORM
from clinicguard.audit.verify import Verification, verify_all, verify_chain
from clinicguard.auth.mfa import TotpSeeds
from clinicguard.auth.users import create_user
from clinicguard.authz.engine import PolicyEngine
from clinicguard.authz.interfaces import Condition, PolicyContext, PolicyError
from clinicguard.authz.matrix import permission_matrix
from clinicguard.clinic.demo import DemoRefused, database_is_empty, seed_demo
from clinicguard.clinic.maintenance import (
    clinic_ids,
    reencrypt,
    row_count,
    shred_patient,
    version_counts,
)
from clinicguard.core.errors import (
    ConfigurationError,
    FieldError,
    NotFound,
    ProblemError,
    ValidationFailed,
)
from clinicguard.core.events import Outcome, SecurityEvent, SecurityEventType, Severity
from clinicguard.crypto.keyring import FIELD, INDEX
from clinicguard.crypto.keys import create_key_provider
from clinicguard.preflight import preflight
from clinicguard.settings import Settings, load_settings
from clinicguard.store.db import Database
from clinicguard.store.migrate import upgrade_to_head
from clinicguard.wiring import Services, build_services

app = typer.Typer(
    help="clinicguard: security- and privacy-first backend for clinics.",
    no_args_is_help=True,
    add_completion=False,
)
demo_app = typer.Typer(help="The demo data set (development and test only).", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
keys_app = typer.Typer(
    help="Keys: data keys (field encryption) and token signing keys.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
users_app = typer.Typer(help="User accounts.", no_args_is_help=True)
app.add_typer(users_app, name="users")
sessions_app = typer.Typer(help="Sign-in sessions.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
policy_app = typer.Typer(help="The authorization policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
audit_app = typer.Typer(
    help="The audit trail: verification, signed checkpoints, the signing key.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")
retention_app = typer.Typer(help="Retention of the audit trail.", no_args_is_help=True)
app.add_typer(retention_app, name="retention")
T = TypeVar("T")
out = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except (ConfigurationError, ValueError, OSError) as exc:  # incl. an unreadable secrets.json
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
    if workers > 1 and not settings.redis_url:
        # The in-process store is per process: sessions, revocations and limits would not
        # be shared between workers (a logout on one would not end the session on another).
        out.print("[red]--workers above 1 needs CLINICGUARD_REDIS_URL (shared sessions)[/red]")
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
    out.print(f"  sign in   POST {base}/api/v1/auth/login   keys {base}/.well-known/jwks.json")
    if not settings.is_production:
        out.print(f"  API docs  {base}/api/docs  (OpenAPI {base}/api/openapi.json)")
        credentials = settings.data_dir / "demo-credentials.json"
        if credentials.exists():
            out.print(f"  demo      accounts, passwords and TOTP secrets in {credentials}")
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
    try:
        key = settings.master_key_bytes() if settings.master_key.get_secret_value() else None
        provider = (
            create_key_provider(settings.key_provider, key, settings.kek_file) if key else None
        )
        upgrade_to_head(settings.migration_database_url, settings.database_url, key, provider)
    except (ValueError, RuntimeError, ConfigurationError) as exc:
        out.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    out.print("database schema is up to date")


async def _seed(settings: Settings, if_empty: bool) -> dict[str, Any] | None:
    services = build_services(settings)
    try:
        if if_empty and not await database_is_empty(services.db):
            return None
        return await seed_demo(
            services.db,
            services.passwords,
            TotpSeeds(settings.master_key_bytes()),
            services.fields,
            production=settings.is_production,
        )
    finally:
        await services.close()


def _run_with_services(
    action: Callable[[Services], Awaitable[T]], *, shared_state: bool = False
) -> T:
    """Run one async operator action against the configured backends. Domain errors and
    configuration mistakes are printed (never a traceback) and exit non-zero.

    ``shared_state``: the action changes what the running servers hold in the key-value
    store (sessions, locks), which the in-process store of a CLI process cannot reach."""
    settings = _settings()
    if shared_state and not settings.redis_url:
        out.print(
            "[red]this command acts on the servers' shared state: set CLINICGUARD_REDIS_URL "
            "(the in-process store belongs to the server process; restart it instead)[/red]"
        )
        raise typer.Exit(2)

    async def run() -> T:
        services = build_services(settings)
        try:
            return await action(services)
        finally:
            await services.close()

    try:
        return asyncio.run(run())
    except ProblemError as exc:
        details = "".join(f"\n  {e.field}: {e.message}" for e in exc.errors)
        out.print(f"[red]{escape(exc.detail + details)}[/red]")
        raise typer.Exit(1) from exc
    except (ValueError, ConfigurationError) as exc:  # e.g. a bad master key or KEK file
        out.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc


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
        creds = asyncio.run(_seed(settings, if_empty))
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


ClinicOption = Annotated[
    str | None, typer.Option("--clinic", help="One clinic's id (default: every clinic).")
]


def _clinics(services: Services, clinic: str | None) -> Awaitable[list[uuid.UUID]]:
    async def pick() -> list[uuid.UUID]:
        every = await clinic_ids(services.db)
        if clinic is None:
            return every
        try:
            wanted = uuid.UUID(clinic)
        except ValueError as exc:
            raise ValidationFailed(errors=[FieldError("--clinic", "Not a clinic id.")]) from exc
        if wanted not in every:
            raise NotFound("No such clinic.")
        return [wanted]

    return pick()


@keys_app.command("rotate")
def keys_rotate(
    clinic: ClinicOption = None,
    index: Annotated[
        bool, typer.Option("--index", help="Rotate the blind-index keys instead.")
    ] = False,
) -> None:
    """A new data key version, active for writes at once; `keys reencrypt` then moves the
    stored values (or, with --index, the blind indexes) onto it."""
    purpose = INDEX if index else FIELD

    async def rotate(services: Services) -> list[tuple[uuid.UUID, int]]:
        done = []
        for clinic_id in await _clinics(services, clinic):
            version = await services.fields.ring.rotate(clinic_id, purpose)
            await services.events.record(
                SecurityEvent(
                    type=SecurityEventType.CRYPTO_KEY_ROTATED,
                    outcome=Outcome.SUCCESS,
                    severity=Severity.MEDIUM,
                    clinic_id=clinic_id,
                    details={"purpose": purpose, "version": version, "by": "operator"},
                )
            )
            done.append((clinic_id, version))
        return done

    for clinic_id, version in _run_with_services(rotate):
        out.print(f"clinic {clinic_id}: {purpose} key v{version} is active")
    out.print("run `clinicguard keys reencrypt` to move stored values onto the new keys")


@keys_app.command("reencrypt")
def keys_reencrypt(
    clinic: ClinicOption = None,
    batch: Annotated[int, typer.Option(min=1, max=5000, help="Rows per transaction.")] = 200,
) -> None:
    """Re-encrypt every value not under its target key (resumable: run it again after an
    interruption; finished rows are skipped, none is sealed twice)."""

    async def run(services: Services) -> Any:
        clinics = await _clinics(services, clinic)
        total = sum([await row_count(services.db, c) for c in clinics])
        with Progress(
            TextColumn("re-encrypting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            console=out,
        ) as bar:
            task = bar.add_task("rows", total=total, rate="0")
            started = time.monotonic()
            seen = 0

            def advance(rows: int) -> None:
                nonlocal seen
                seen += rows
                rate = seen / max(time.monotonic() - started, 1e-6)
                bar.update(task, advance=rows, rate=f"{rate:,.0f}")

            report = await reencrypt(
                services.db, services.fields, batch=batch, progress=advance, clinics=clinics
            )
        elapsed = time.monotonic() - started
        return report, elapsed

    report, elapsed = _run_with_services(run)
    rate = report.examined / elapsed if elapsed else 0.0
    out.print(
        f"examined {report.examined} rows in {elapsed:.1f} s ({rate:,.0f} rows/s); "
        f"re-encrypted {report.rewritten}, skipped {report.skipped_changed} changed meanwhile "
        f"(run again for those); patient keys rewrapped: {report.subject_keys_rewrapped}"
    )


@keys_app.command("status")
def keys_status(clinic: ClinicOption = None) -> None:
    """Data key versions per clinic, rows under each, and keys due for rotation."""

    async def run(services: Services) -> Any:
        clinics = await _clinics(services, clinic)
        keys = await services.fields.ring.status(clinics)
        counts = {c: await version_counts(services.db, c) for c in clinics}
        return keys, counts

    keys, counts = _run_with_services(run)
    table = Table("clinic", "purpose", "version", "KEK", "created", "encryptions", "state")
    for k in keys:
        state = ("active" if k.active else "retired") + (", DUE for rotation" if k.due else "")
        table.add_row(
            str(k.clinic_id),
            k.purpose,
            str(k.version),
            k.kek_id,
            f"{k.created_at:%Y-%m-%d}",
            f"{k.encryptions:,}",
            state,
        )
    out.print(table)
    rows = Table("clinic", "table", "column", "key", "rows")
    for clinic_id, per in counts.items():
        for (tbl, column, key), n in sorted(per.items()):
            rows.add_row(str(clinic_id), tbl, column, key, f"{n:,}")
    out.print(rows)
    if any(k.due for k in keys):
        raise typer.Exit(1)


@keys_app.command("rewrap")
def keys_rewrap() -> None:
    """After a new active KEK (key file or KMS): rewrap every data key under it. No stored
    value is re-encrypted."""

    async def run(services: Services) -> int:
        return await services.fields.ring.rewrap(await clinic_ids(services.db))

    out.print(f"data keys rewrapped under the active KEK: {_run_with_services(run)}")


@keys_app.command("shred-patient")
def keys_shred_patient(
    clinic: Annotated[str, typer.Option("--clinic", help="The patient's clinic id.")],
    patient: Annotated[str, typer.Option("--patient", help="The patient's id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
) -> None:
    """Crypto-shred one patient: destroy their own key, so their clinical content cannot
    be read again — here or in any copy of the database. Cannot be undone."""
    if not yes:
        out.print("[red]this destroys the patient's clinical content for good: add --yes[/red]")
        raise typer.Exit(2)
    try:
        clinic_id, patient_id = uuid.UUID(clinic), uuid.UUID(patient)
    except ValueError as exc:
        out.print("[red]--clinic and --patient take ids (UUIDs)[/red]")
        raise typer.Exit(2) from exc

    async def run(services: Services) -> bool:
        return await shred_patient(services.fields, services.events, clinic_id, patient_id)

    if not _run_with_services(run):
        out.print("[red]no key for that patient (never written, or already shredded)[/red]")
        raise typer.Exit(1)
    out.print(f"patient {patient_id}: key destroyed; their clinical content is unrecoverable")


@keys_app.command("rotate-signing")
def keys_rotate_signing() -> None:
    """New token signing keys take over at once; old ones verify until their tokens expire."""

    async def rotate(services: Services) -> list[str]:
        kids = await services.signing_keys.rotate()
        await services.events.record(
            SecurityEvent(
                type=SecurityEventType.AUTH_SIGNING_KEY_ROTATED,
                outcome=Outcome.SUCCESS,
                severity=Severity.MEDIUM,
                details={"new_kids": ",".join(kids), "by": "operator"},
            )
        )
        return kids

    kids = _run_with_services(rotate)
    out.print("new signing keys: " + ", ".join(kids))


@keys_app.command("revoke-signing")
def keys_revoke_signing(kid: Annotated[str, typer.Argument(help="The key id (kid).")]) -> None:
    """Stop a (leaked) signing key verifying now; its tokens die at once."""

    async def revoke(services: Services) -> bool:
        found = await services.signing_keys.revoke(kid)
        if found:
            await services.events.record(
                SecurityEvent(
                    type=SecurityEventType.AUTH_SIGNING_KEY_ROTATED,
                    outcome=Outcome.SUCCESS,
                    severity=Severity.HIGH,
                    details={"revoked_kid": kid, "by": "operator"},
                )
            )
        return found

    if not _run_with_services(revoke):
        out.print(f"[red]no signing key {escape(kid)}[/red]")
        raise typer.Exit(1)
    out.print(
        f"signing key {escape(kid)} revoked: refused from now on (running instances pick"
        " this up within their 30 s key cache)"
    )


@users_app.command("unlock")
def users_unlock(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """Clear an account's sign-in lock and failure counters."""
    settings = _settings()
    if not settings.secret_key.get_secret_value():
        # Lock keys are keyed hashes of the email under the servers' secret: without it this
        # process would compute other keys and clear nothing.
        out.print("[red]this command needs the servers' CLINICGUARD_SECRET_KEY[/red]")
        raise typer.Exit(2)
    _run_with_services(lambda s: s.auth.unlock(None, email=email), shared_state=True)
    out.print(f"unlocked {escape(email)}")


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="Login email.")],
    name: Annotated[str, typer.Option(help="Full name.")],
    role: Annotated[str, typer.Option(help="Role at the clinic (or platform_admin).")],
    clinic: Annotated[str | None, typer.Option(help="Clinic id (not for platform_admin).")] = None,
) -> None:
    """Create an account with a one-time password (changed at first sign-in)."""

    async def create(services: Services) -> str:
        return await create_user(
            services.db,
            services.passwords,
            email=email,
            full_name=name,
            role=role,
            clinic_id=clinic,
        )

    password = _run_with_services(create)
    out.print(f"created {escape(email)}; one-time password (must be changed at first sign-in):")
    print(password)  # noqa: T201  (the operator needs it on stdout, once)


@sessions_app.command("revoke")
def sessions_revoke(
    user: Annotated[str, typer.Option("--user", help="The account's email.")],
) -> None:
    """End every session of a user at once (tokens stop working on every instance)."""
    count = _run_with_services(lambda s: s.auth.revoke_user_sessions(user), shared_state=True)
    out.print(f"ended {count} session(s) of {escape(user)}")


@policy_app.command("explain")
def policy_explain(
    role: Annotated[str, typer.Option(help="A role (physician, nurse, …).")],
    permission: Annotated[str, typer.Option(help="resource:action, e.g. records:read.")],
    context: Annotated[
        str, typer.Option(help='Facts that hold, as JSON: {"care_team": true, …}.')
    ] = "{}",
) -> None:
    """Print the decision for a role and permission, and the rules that made it."""
    try:
        raw = json.loads(context)
        if not isinstance(raw, dict) or not all(isinstance(v, bool) for v in raw.values()):
            raise TypeError('the context must be a JSON object of booleans: {"care_team": true}')
        facts = {Condition(name): value for name, value in raw.items()}
    except (ValueError, TypeError) as exc:
        out.print(f"[red]invalid --context: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    try:
        engine = PolicyEngine.load()
    except PolicyError as exc:
        out.print(f"[red]the policy is invalid: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    decision, steps = engine.explain(role, permission, PolicyContext(facts))
    verdict = "ALLOW" if decision.allowed else "DENY"
    typer.echo(
        f"{verdict} {role} {permission}: {decision.reason}"
        + (f" ({decision.rule})" if decision.rule else "")
    )
    for step in steps:
        mark = "*" if step.rule == decision.rule else "-"
        typer.echo(f"  {mark} {step.effect:5} {step.rule}: {step.why}")
    if decision.allowed:
        ob = decision.obligations
        typer.echo(
            f"  obligations: hide={sorted(ob.hide)} mask={sorted(ob.mask)} "
            f"audit={ob.audit} review={ob.review}"
        )
    if not decision.allowed:
        raise typer.Exit(1)


@policy_app.command("matrix")
def policy_matrix() -> None:
    """Print the permission matrix (docs/permission-matrix.md) as Markdown."""
    typer.echo(permission_matrix(PolicyEngine.load()), nl=False)


# --- audit trail ---------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(
    clinic: Annotated[
        str | None,
        typer.Option(
            "--clinic",
            help=f"One clinic's id ({PLATFORM} for the platform's chain; default: every chain).",
        ),
    ] = None,
) -> None:
    """Verify the audit chains (links, hashes, signed checkpoints). Exit 0 when every
    chain holds; otherwise 1, naming the first broken event of each broken chain."""

    async def run(services: Services) -> dict[uuid.UUID, Verification]:
        # Only keys the master key vouches for: a key added to the table behind our back
        # cannot vouch for a rewritten chain.
        keys = await services.audit_sealer.signer.keys.trusted_keys()
        if clinic is None:
            return await verify_all(services.db, keys=keys)
        try:
            wanted = uuid.UUID(clinic)
        except ValueError as exc:
            raise ValidationFailed(errors=[FieldError("--clinic", "Not a clinic id.")]) from exc
        if wanted != PLATFORM and wanted not in await clinic_ids(services.db):
            raise NotFound("No such clinic.")
        return {wanted: await verify_chain(services.db, wanted, keys=keys)}

    results = _run_with_services(run)
    broken = {c: r for c, r in results.items() if not r.ok}
    for clinic_id, result in broken.items():
        event, seq = result.first_broken_event_id or "-", result.first_broken_seq
        typer.echo(
            f"BROKEN clinic {clinic_id}: first broken event {event} (seq {seq}): {result.reason}"
        )
    events = sum(r.checked for r in results.values())
    if broken:
        typer.echo(f"{len(broken)} of {len(results)} chain(s) broken ({events} events checked)")
        raise typer.Exit(1)
    typer.echo(f"{len(results)} chain(s) verified, {events} events: intact")


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a checkpoint at the head of every chain with events after its last one, now."""

    async def run(services: Services) -> dict[uuid.UUID, int]:
        return await seal_chains(
            services.db, services.audit_sealer.signer, services.clock, every=None
        )

    signed = _run_with_services(run)
    for clinic_id, seq in signed.items():
        typer.echo(f"clinic {clinic_id}: checkpoint signed at seq {seq}")
    typer.echo(f"{len(signed)} checkpoint(s) signed")


@audit_app.command("rotate-key")
def audit_rotate_key() -> None:
    """A new checkpoint signing key signs from now on; the old one is retired and keeps
    verifying the checkpoints it signed."""

    async def run(services: Services) -> str:
        key_id = await services.audit_sealer.signer.keys.rotate()
        await services.events.record(
            SecurityEvent(
                type=SecurityEventType.CRYPTO_KEY_ROTATED,
                outcome=Outcome.SUCCESS,
                severity=Severity.MEDIUM,
                details={"purpose": "audit-checkpoint", "key_id": key_id, "by": "operator"},
            )
        )
        return key_id

    typer.echo(f"new checkpoint signing key: {_run_with_services(run)}")


#: Retention reads whole partitions and drops them: far longer than a request may take.
RETENTION_STATEMENT_TIMEOUT_MS = 30 * 60 * 1000


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be removed; change nothing.")
    ] = False,
) -> None:
    """Remove the audit trail's months older than CLINICGUARD_AUDIT_RETENTION_DAYS (as the
    schema owner): each only after its chains verify and are anchored by a signed
    retention checkpoint. Exit 1 when a month was refused."""

    async def run(services: Services) -> RetentionReport:
        owner = Database.from_url(
            services.settings.migration_database_url,
            statement_timeout_ms=RETENTION_STATEMENT_TIMEOUT_MS,
            hide_parameters=True,
        )
        try:
            job = AuditRetention(
                owner=owner,
                db=services.db,
                recorder=services.audit,
                signer=services.audit_sealer.signer,
                clock=services.clock,
                retention_days=services.settings.audit_retention_days,
            )
            return await job.run(dry_run=dry_run)
        finally:
            await owner.dispose()

    try:
        report = _run_with_services(run)
    except DBAPIError as exc:
        # Most likely the application's role: it may not create or drop partitions.
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
        out.print(
            "[red]retention runs as the schema owner: set CLINICGUARD_MIGRATION_DATABASE_URL"
            f" (the database refused: {escape(reason)})[/red]"
        )
        raise typer.Exit(2) from exc
    _print_retention(report)
    if report.refused is not None:
        raise typer.Exit(1)


def _print_retention(report: RetentionReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    typer.echo(
        ("[dry run] " if report.dry_run else "")
        + f"retention: months that ended by {report.cut:%Y-%m-%d %H:%M} UTC go"
    )
    for part in report.removed:
        per_chain = ", ".join(f"clinic {c.clinic_id}: {c.events}" for c in part.chains)
        typer.echo(
            f"{verb} {part.label} ({part.month:%Y-%m}): {part.events} event(s)"
            + (f" ({per_chain})" if per_chain else "")
        )
    if report.refused is not None:
        refusal = report.refused
        typer.echo(
            f"REFUSED {refusal.slice.label} ({refusal.slice.month:%Y-%m}): clinic"
            f" {refusal.clinic_id}: {refusal.reason}"
            + (f" (event {refusal.event_id or '-'}, seq {refusal.seq})" if refusal.seq else "")
        )
        for part in report.held_back:
            typer.echo(f"kept {part.label} ({part.month:%Y-%m}): an older month was refused")
    created = "missing, would be created" if report.dry_run else "created ahead"
    if report.partitions_created:
        typer.echo(f"partitions {created}: {', '.join(report.partitions_created)}")
    for problem in report.partition_problems:
        typer.echo(f"warning: {problem}")
    if report.default_rows:
        typer.echo(
            f"warning: {report.default_rows} event(s) in audit_events_default (their months"
            " were not created ahead; retention cannot remove them by month)"
        )
    typer.echo(
        f"{verb} {len(report.removed)} month(s), {report.events_removed} event(s);"
        f" {report.checkpoints} retention checkpoint(s) signed,"
        f" {report.subjects_deleted} patient index row(s) deleted"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
