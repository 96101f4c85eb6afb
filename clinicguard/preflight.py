"""Start-up checks: in production the process refuses to start, naming every problem."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from clinicguard.clinic.demo import has_demo_data
from clinicguard.core.errors import ConfigurationError
from clinicguard.core.logging import get_logger
from clinicguard.settings import Settings, production_problems, unknown_variables
from clinicguard.store.db import Database, connection_role_problems
from clinicguard.store.interfaces import DatabaseUnavailable

log = get_logger("clinicguard.preflight")


async def preflight(settings: Settings, db: Database) -> None:
    """Raise ConfigurationError listing every reason not to serve. Outside production, the
    database-role findings are logged as warnings instead."""
    problems = production_problems(settings)
    for name in unknown_variables():
        if settings.is_production:
            problems.append(f"{name} is not a clinicguard setting (misspelt?)")
        else:
            log.warning("unknown_setting_variable", variable=name)
    role_problems: list[str] = []
    try:
        role_problems = await connection_role_problems(db)
        if settings.is_production and await has_demo_data(db):
            problems.append(
                "the demo data set is present in the database (demo clinics are for "
                "development only)"
            )
    except DatabaseUnavailable:
        if settings.is_production:
            problems.append("the database does not answer")
    except DBAPIError as exc:
        if settings.is_production:
            problems.append(
                "the application's database role lacks privileges on the schema (grants: see "
                "docs/operations.md)"
                if "permission denied" in str(exc.orig).lower()
                else "the database schema is missing or old: run `clinicguard migrate`"
            )
    if settings.is_production:
        problems.extend(role_problems)
    else:
        for finding in role_problems:
            log.warning("database_role_bypasses_rls", finding=finding)
    if problems:
        raise ConfigurationError(problems)
