"""The complete schema: importing this registers every feature's tables on the metadata.

Used by migrations (and the drift check) only; features import their own models.
"""

from __future__ import annotations

import clinicguard.audit.models
import clinicguard.auth.models
import clinicguard.clinic.models
import clinicguard.crypto.models  # noqa: F401  (registers the tables)
from clinicguard.store.base import Base

metadata = Base.metadata
