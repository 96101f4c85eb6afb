"""The complete schema: importing this registers every feature's tables on the metadata.

Used by migrations (and the drift check) only; features import their own models.
"""

from __future__ import annotations

import re
from typing import Any

import clinicguard.audit.models
import clinicguard.auth.models
import clinicguard.clinic.models
import clinicguard.crypto.models  # noqa: F401  (registers the tables)
from clinicguard.store.base import Base

metadata = Base.metadata

#: PostgreSQL's monthly partitions of the audit trail (created by ``cg_audit_partition``,
#: not by models): the partitioned table ``audit_events`` stands for them all.
AUDIT_PARTITION = re.compile(r"audit_events_(\d{4}_\d{2}|default)")


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's filter: leave the trail's partitions out of comparisons."""
    del obj, reflected, compare_to
    return not (type_ == "table" and name is not None and AUDIT_PARTITION.fullmatch(name))
