"""The authorization matrix's model: what each clinic data route should answer, derived from
the policy engine (never from a hand-written table), and a runner that calls the API and
collects every difference.

A route's expected answer follows the steps the service takes, in order:

1. a route for people only (``FullPerson``) refuses an API key (403 ``insufficient-scope``,
   an authentication answer, not a policy decision);
2. a permission the role can never hold (``could_allow`` false) is a 403 before anything is
   looked up, so it says nothing about what exists;
3. a row the principal may not know exists is a 404: another clinic's, another patient's
   (for a patient), a clinical row off the clinician's care team without a grant;
4. the engine decides with the request's facts: 2xx, or 403.

Facts are computed here from what the test built (who is on which care team, which grants
are open, whether the clinic is open now), truthfully for every role: the engine decides
which of them matter. Every 403 must leave one ``authz:access:denied`` event naming the
deciding rule, and every answer allowed by a reviewed or high-audit rule one
``authz:emergency:access`` event; answers shaped by obligations must have each hidden field
absent, each masked field masked and every other field in plain.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from clinicguard.audit.models import AuditEvent
from clinicguard.authz.engine import PolicyEngine
from clinicguard.authz.interfaces import (
    AuditLevel,
    Condition,
    Decision,
    Permission,
    PolicyContext,
)
from clinicguard.authz.service import API_KEY_SCOPE_RULE, DEFAULT_DENY
from clinicguard.clinic.cpf import normalize_cpf
from clinicguard.core.events import SecurityEventType
from clinicguard.core.masking import mask
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld
from tests.factories.clinical import STAFF, ClinicSet, new_cpf

ENGINE = PolicyEngine.load()
CLINICIAN_ROLES = frozenset({"physician", "nurse"})
CLINICAL_PATIENT_FIELDS = frozenset({"allergies", "medications", "medical_conditions"})
PATIENT_FIELDS = (
    "full_name",
    "cpf",
    "birth_date",
    "phone",
    "email",
    "address",
    "allergies",
    "medications",
    "medical_conditions",
)
RECORD_FIELDS = ("kind", "diagnosis", "notes", "treatment")
PRESCRIPTION_FIELDS = ("medication", "dosage", "instructions")
APPOINTMENT_FIELDS = ("reason",)
CLINIC_ZONE = ZoneInfo("America/Sao_Paulo")
JUSTIFICATION = "Paciente inconsciente no pronto atendimento, sem acompanhante"
DENIED = str(SecurityEventType.AUTHZ_ACCESS_DENIED)
GRANTED = str(SecurityEventType.AUTHZ_EMERGENCY_GRANTED)
#: Routes that touch patient data: every answer they give with success is one event.
PATIENT_DATA = ("/api/v1/patients", "/api/v1/records/", "/api/v1/appointments", "/emergency-access")


def hours_excluding(now: datetime) -> tuple[int, int]:
    """Opening hours (minutes after local midnight) that do not contain ``now``."""
    local = now.astimezone(CLINIC_ZONE)
    minute = local.hour * 60 + local.minute
    opens, closes = (minute + 60, minute + 120) if minute + 120 <= 24 * 60 else (60, 120)
    assert not opens <= minute < closes
    return opens, closes


# --- who, where, which patient -------------------------------------------------------------


@dataclass
class Site:
    """A clinic of the matrix: ``open`` (24 h), ``closed`` (now outside its hours) or the
    ``other`` clinic nobody of the matrix belongs to."""

    label: str
    clinic: ClinicSet
    open_now: bool
    booked: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)
    """(patient, professional) of the appointments the matrix booked."""

    def care_team(self, patient_id: uuid.UUID) -> set[uuid.UUID]:
        """The factory's care teams (the physician for every patient) and whoever has a
        non-cancelled appointment with the patient."""
        team = {self.clinic.people["physician"].id}
        team |= {
            a.professional_id
            for a in self.clinic.appointments
            if a.patient_id == patient_id and a.status != "cancelled"
        }
        team |= {pro for patient, pro in self.booked if patient == patient_id}
        return team


@dataclass(frozen=True)
class Target:
    """One of a site's three patients (with their record and prescription), or an id that
    names nothing at all (``missing``)."""

    label: str
    site: Site
    index: int = 0
    missing: bool = False
    absent_id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def patient_id(self) -> uuid.UUID:
        return self.absent_id if self.missing else self.site.clinic.patients[self.index].id

    @property
    def record_id(self) -> uuid.UUID:
        return self.absent_id if self.missing else self.site.clinic.records[self.index].id


@dataclass
class Actor:
    """One column of the matrix signed in at one site (a platform admin belongs to none)."""

    column: str
    role: str
    site: Site | None
    user_id: uuid.UUID
    headers: dict[str, str]
    scopes: frozenset[str] | None = None
    """An API key's scopes (None: a person)."""
    grants: set[uuid.UUID] = field(default_factory=set)
    """Patients this actor holds an open break-glass grant for."""

    @property
    def name(self) -> str:
        return f"{self.column}@{self.site.label if self.site else 'platform'}"

    def member_of(self, site: Site) -> bool:
        return self.site is not None and self.site.clinic.clinic_id == site.clinic.clinic_id


def facts_for(actor: Actor, target: Target) -> dict[Condition, bool]:
    if target.missing or not actor.member_of(target.site):
        return {Condition.WITHIN_CLINIC_HOURS: target.site.open_now}
    patient = target.site.clinic.patients[target.index]
    return {
        Condition.SELF: actor.role == "patient" and patient.user_id == actor.user_id,
        Condition.CARE_TEAM: actor.user_id in target.site.care_team(patient.id),
        Condition.WITHIN_CLINIC_HOURS: target.site.open_now,
        Condition.EMERGENCY_GRANT: patient.id in actor.grants,
    }


def _exists_for(actor: Actor, target: Target) -> bool:
    return not target.missing and actor.member_of(target.site)


def patient_visible(actor: Actor, target: Target, facts: Mapping[Condition, bool]) -> bool:
    """The clinic's patients; for a patient, only their own."""
    return _exists_for(actor, target) and (
        actor.role != "patient" or facts.get(Condition.SELF, False)
    )


def clinical_visible(actor: Actor, target: Target, facts: Mapping[Condition, bool]) -> bool:
    """Clinical rows: oversight sees the clinic's; a clinician on the care team or with a
    grant; a patient their own; nobody else."""
    if not _exists_for(actor, target):
        return False
    if actor.role == "compliance_officer":
        return True
    if actor.role in CLINICIAN_ROLES:
        return facts[Condition.CARE_TEAM] or facts[Condition.EMERGENCY_GRANT]
    return actor.role == "patient" and facts[Condition.SELF]


# --- expected answers ----------------------------------------------------------------------


def decide(
    actor: Actor, permission: Permission, facts: Mapping[Condition, bool] | None = None
) -> Decision:
    if actor.scopes is not None and permission not in actor.scopes:
        return Decision(False, permission, actor.role, API_KEY_SCOPE_RULE, "scope")
    return ENGINE.decide(actor.role, permission, PolicyContext(dict(facts or {})))


def could_allow(actor: Actor, permission: Permission) -> bool:
    if actor.scopes is not None and permission not in actor.scopes:
        return False
    return ENGINE.could_allow(actor.role, permission)


@dataclass(frozen=True)
class Expected:
    status: int
    why: str
    decision: Decision | None = None
    person_only: bool = False
    """A 403 because an API key called a route for people (no policy decision)."""

    @property
    def denial_rule(self) -> str | None:
        if self.status != 403 or self.decision is None:
            return None
        return self.decision.rule or DEFAULT_DENY

    @property
    def reviewed(self) -> bool:
        d = self.decision
        return bool(
            d and d.allowed and (d.obligations.review or d.obligations.audit is AuditLevel.HIGH)
        )

    @property
    def granted(self) -> Decision:
        assert self.decision is not None
        return self.decision


def expect(
    actor: Actor,
    permission: Permission,
    *,
    facts: Mapping[Condition, bool] | None = None,
    found: bool = True,
    success: int = 200,
    possible_first: bool = True,
    person_only: bool = False,
) -> Expected:
    """The route's answer, step by step as the module docstring lists them."""
    if person_only and actor.scopes is not None:
        return Expected(403, "API key on a route for people", person_only=True)
    if possible_first and not could_allow(actor, permission):
        return Expected(403, f"{actor.role} never holds {permission}", decide(actor, permission))
    if not found:
        return Expected(404, "not visible to this principal")
    decision = decide(actor, permission, facts)
    if decision.allowed:
        return Expected(success, f"{permission} allowed by {decision.rule}", decision)
    return Expected(403, f"{permission} denied by {decision.rule or DEFAULT_DENY}", decision)


def _facts_text(facts: Mapping[Condition, bool]) -> str:
    return ",".join(c.value for c, held in facts.items() if held) or "no facts"


@dataclass(frozen=True)
class Sent:
    label: str
    request_id: str
    expected: Expected
    audited: bool
    """The route touches patient data: a success is recorded in the trail."""


# --- the runner ----------------------------------------------------------------------------


class Matrix:
    """Calls routes for actors and targets, compares with the model, keeps the differences."""

    def __init__(self, world: AuthWorld, sites: Iterable[Site]) -> None:
        self.world = world
        self.mismatches: list[str] = []
        self.cases = 0
        self._sent: list[tuple[Sent, int]] = []
        self._slot = 0
        self._serial = 0
        self._first_slot = world.clock.now() + timedelta(days=10)
        self._not_found: dict[str, Any] | None = None
        self.patients: dict[str, dict[str, Any]] = {}
        self.patient_clinic: dict[str, uuid.UUID] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.prescriptions: dict[str, dict[str, Any]] = {}
        self.appointments: dict[str, dict[str, Any]] = {}
        for site in sites:
            self._register_site(site)

    def _register_site(self, site: Site) -> None:
        clinic = site.clinic
        for p in clinic.patients:
            self.patients[str(p.id)] = {name: getattr(p, name) for name in PATIENT_FIELDS}
            self.patient_clinic[str(p.id)] = clinic.clinic_id
        for r in clinic.records:
            self.records[str(r.id)] = {
                "patient_id": str(r.patient_id),
                **{name: getattr(r, name) for name in RECORD_FIELDS},
            }
        for rx in clinic.prescriptions:
            self.prescriptions[str(rx.id)] = {
                "patient_id": str(rx.patient_id),
                **{name: getattr(rx, name) for name in PRESCRIPTION_FIELDS},
            }
        for a in clinic.appointments:
            self.appointments[str(a.id)] = {
                "patient_id": str(a.patient_id),
                "clinic_id": clinic.clinic_id,
                "reason": a.reason,
            }

    # --- plumbing ------------------------------------------------------------------------

    def fail(self, label: str, problem: str) -> None:
        self.mismatches.append(f"{label}\n      {problem}")

    def label(self, actor: Actor, route: str, target: Target | None = None) -> str:
        if target is None:
            return f"{actor.name:<30} {route}"
        facts = _facts_text(facts_for(actor, target))
        return f"{actor.name:<30} {route} -> {target.label} [{facts}]"

    def _serial_number(self) -> int:
        self._serial += 1
        return self._serial

    async def send(
        self,
        actor: Actor,
        label: str,
        expected: Expected,
        request: tuple[str, str],
        body: dict[str, Any] | None = None,
    ) -> tuple[httpx.Response, bool]:
        """The answer, and whether its status is the expected one."""
        self.cases += 1
        method, url = request
        response = await self.world.client.request(method, url, json=body, headers=actor.headers)
        request_id = response.headers.get("x-request-id", "")
        audited = any(route in url for route in PATIENT_DATA)
        self._sent.append((Sent(label, request_id, expected, audited), response.status_code))
        if response.status_code != expected.status:
            self.fail(
                label,
                f"expected {expected.status} ({expected.why}), "
                f"got {response.status_code}: {response.text[:300]}",
            )
            return response, False
        if expected.person_only and "insufficient-scope" not in response.json().get("type", ""):
            self.fail(label, f"expected an insufficient-scope refusal, got {response.text[:200]}")
        if response.status_code == 404:
            self._check_not_found(label, response)
        return response, True

    def _check_not_found(self, label: str, response: httpx.Response) -> None:
        """Every 404 is the same answer: another clinic's row, a row the caller may not
        know of and an id that names nothing are indistinguishable."""
        body = {k: v for k, v in response.json().items() if k != "request_id"}
        if self._not_found is None:
            self._not_found = body
        elif body != self._not_found:
            self.fail(label, f"404 body {body} differs from the others' {self._not_found}")

    def check_fields(
        self,
        label: str,
        body: Mapping[str, Any],
        decision: Decision,
        plain: Mapping[str, Any],
        names: Iterable[str],
    ) -> None:
        """Hidden fields absent, masked fields masked, the others in plain."""
        obligations = decision.obligations
        for name in names:
            value = plain[name]
            if name in obligations.hide:
                if name in body:
                    self.fail(label, f"{name} must be hidden ({decision.rule}), got {body[name]!r}")
            elif name in obligations.mask and isinstance(value, str):
                shown = body.get(name)
                if shown == value or shown != mask(name, value):
                    want = mask(name, value)
                    self.fail(label, f"{name} must be masked as {want!r}, got {shown!r}")
            elif name not in body or body[name] != value:
                self.fail(label, f"{name} must be {value!r}, got {body.get(name, '<absent>')!r}")

    def _clinic_patients(self, actor: Actor) -> set[str]:
        assert actor.site is not None
        clinic_id = actor.site.clinic.clinic_id
        return {pid for pid, cid in self.patient_clinic.items() if cid == clinic_id}

    def _check_ids(self, label: str, what: str, got: Iterable[str], want: Iterable[str]) -> None:
        got_set, want_set = set(got), set(want)
        if got_set != want_set:
            self.fail(
                label,
                f"{what}: {len(got_set - want_set)} unexpected, {len(want_set - got_set)} missing",
            )

    def _next_phone(self) -> str:
        return f"+55119876{self._serial_number():05d}"

    # --- clinic-wide reads ----------------------------------------------------------------

    async def list_patients(self, actor: Actor) -> None:
        exp = expect(actor, Permission.PATIENTS_LIST, possible_first=False)
        label = self.label(actor, "GET /patients")
        response, ok = await self.send(actor, label, exp, ("GET", "/api/v1/patients?limit=200"))
        if not (ok and response.is_success):
            return
        items = response.json()["items"]
        self._check_ids(label, "patients", (i["id"] for i in items), self._clinic_patients(actor))
        for item in items:
            if item["id"] in self.patients:
                self.check_fields(
                    label, item, exp.granted, self.patients[item["id"]], PATIENT_FIELDS
                )

    async def list_appointments(self, actor: Actor) -> None:
        # A patient's list is filtered to their own appointments: "self" holds by the filter.
        facts = {Condition.SELF: True} if actor.role == "patient" else {}
        exp = expect(actor, Permission.APPOINTMENTS_READ, facts=facts, possible_first=False)
        label = self.label(actor, "GET /appointments")
        response, ok = await self.send(actor, label, exp, ("GET", "/api/v1/appointments?limit=200"))
        if not (ok and response.is_success) or actor.site is None:
            return
        clinic_id = actor.site.clinic.clinic_id
        own = {str(p.id) for p in actor.site.clinic.patients if p.user_id == actor.user_id}
        want = [
            aid
            for aid, a in self.appointments.items()
            if a["clinic_id"] == clinic_id and (actor.role != "patient" or a["patient_id"] in own)
        ]
        items = response.json()["items"]
        self._check_ids(label, "appointments", (i["id"] for i in items), want)
        for item in items:
            if item["id"] in self.appointments:
                self.check_fields(
                    label, item, exp.granted, self.appointments[item["id"]], APPOINTMENT_FIELDS
                )

    async def list_emergency_grants(self, actor: Actor) -> None:
        exp = expect(actor, Permission.EMERGENCY_READ, possible_first=False, person_only=True)
        label = self.label(actor, "GET /emergency-access")
        response, ok = await self.send(actor, label, exp, ("GET", "/api/v1/emergency-access"))
        if ok and response.is_success:
            clinic = self._clinic_patients(actor)
            foreign = [g for g in response.json()["items"] if g["patient_id"] not in clinic]
            if foreign or not response.json()["items"]:
                self.fail(label, f"{len(foreign)} grants of another clinic, or none at all")

    async def list_users(self, actor: Actor) -> None:
        exp = expect(actor, Permission.USERS_READ, possible_first=False, person_only=True)
        label = self.label(actor, "GET /users")
        response, ok = await self.send(actor, label, exp, ("GET", "/api/v1/users"))
        if ok and response.is_success and actor.site is not None:
            people = actor.site.clinic.people
            want = [str(people[name].id) for name, _ in STAFF]
            self._check_ids(label, "staff", (u["id"] for u in response.json()), want)

    async def list_treatments(self, actor: Actor) -> None:
        exp = expect(actor, Permission.TREATMENTS_READ, possible_first=False)
        label = self.label(actor, "GET /treatments")
        await self.send(actor, label, exp, ("GET", "/api/v1/treatments"))

    # --- one patient's data ---------------------------------------------------------------

    async def get_patient(self, actor: Actor, target: Target) -> None:
        facts = facts_for(actor, target)
        exp = expect(
            actor,
            Permission.PATIENTS_READ,
            facts=facts,
            found=patient_visible(actor, target, facts),
        )
        label = self.label(actor, "GET /patients/{id}", target)
        url = f"/api/v1/patients/{target.patient_id}"
        response, ok = await self.send(actor, label, exp, ("GET", url))
        if ok and response.is_success:
            plain = self.patients[str(target.patient_id)]
            self.check_fields(label, response.json(), exp.granted, plain, PATIENT_FIELDS)

    async def _clinical_list(
        self,
        actor: Actor,
        target: Target,
        *,
        permission: Permission,
        kind: str,
        known: Mapping[str, Mapping[str, Any]],
        names: tuple[str, ...],
    ) -> None:
        facts = facts_for(actor, target)
        exp = expect(actor, permission, facts=facts, found=patient_visible(actor, target, facts))
        label = self.label(actor, f"GET /patients/{{id}}/{kind}", target)
        url = f"/api/v1/patients/{target.patient_id}/{kind}?limit=200"
        response, ok = await self.send(actor, label, exp, ("GET", url))
        if not (ok and response.is_success):
            return
        items = response.json()["items"]
        pid = str(target.patient_id)
        want = [rid for rid, row in known.items() if row["patient_id"] == pid]
        self._check_ids(label, kind, (i["id"] for i in items), want)
        for item in items:
            if item["id"] in known:
                self.check_fields(label, item, exp.granted, known[item["id"]], names)

    async def list_records(self, actor: Actor, target: Target) -> None:
        await self._clinical_list(
            actor,
            target,
            permission=Permission.RECORDS_READ,
            kind="records",
            known=self.records,
            names=RECORD_FIELDS,
        )

    async def list_prescriptions(self, actor: Actor, target: Target) -> None:
        await self._clinical_list(
            actor,
            target,
            permission=Permission.PRESCRIPTIONS_READ,
            kind="prescriptions",
            known=self.prescriptions,
            names=PRESCRIPTION_FIELDS,
        )

    async def get_record(self, actor: Actor, target: Target) -> None:
        facts = facts_for(actor, target)
        exp = expect(
            actor,
            Permission.RECORDS_READ,
            facts=facts,
            found=clinical_visible(actor, target, facts),
        )
        label = self.label(actor, "GET /records/{id}", target)
        url = f"/api/v1/records/{target.record_id}"
        response, ok = await self.send(actor, label, exp, ("GET", url))
        if ok and response.is_success:
            plain = self.records[str(target.record_id)]
            self.check_fields(label, response.json(), exp.granted, plain, RECORD_FIELDS)

    # --- writes ---------------------------------------------------------------------------

    async def create_patient(self, actor: Actor, *, clinical: bool) -> None:
        body: dict[str, Any] = {
            "full_name": "Paciente Novo da Matriz",
            "cpf": new_cpf(),
            "phone": self._next_phone(),
        }
        if clinical:
            body["allergies"] = "Látex"
        exp = expect(
            actor,
            Permission.PATIENTS_CREATE,
            facts={Condition.BASIC_INFO_ONLY: not clinical},
            possible_first=False,
            success=201,
        )
        route = "POST /patients (with allergies)" if clinical else "POST /patients"
        label = self.label(actor, route)
        response, ok = await self.send(actor, label, exp, ("POST", "/api/v1/patients"), body)
        if not response.is_success:
            return
        plain = dict.fromkeys(PATIENT_FIELDS) | body
        plain["cpf"] = normalize_cpf(body["cpf"])
        pid = response.json()["id"]
        self.patients[pid] = plain
        if actor.site is not None:
            self.patient_clinic[pid] = actor.site.clinic.clinic_id
        if not ok:
            return
        # Answered as a read of the new patient would be (the patient's facts are empty).
        read = decide(actor, Permission.PATIENTS_READ, {})
        if read.allowed:
            self.check_fields(label, response.json(), read, plain, PATIENT_FIELDS)
        elif response.json() != {"id": pid}:
            self.fail(label, f"a caller who may not read must get only the id: {response.text}")

    async def update_patient(self, actor: Actor, target: Target, name: str) -> None:
        value = self._next_phone() if name == "phone" else f"Látex ({self._serial_number()})"
        facts = facts_for(actor, target)
        change = {**facts, Condition.BASIC_INFO_ONLY: name not in CLINICAL_PATIENT_FIELDS}
        exp = expect(
            actor,
            Permission.PATIENTS_UPDATE,
            facts=change,
            found=patient_visible(actor, target, facts),
        )
        label = self.label(actor, f"PATCH /patients/{{id}} {{{name}}}", target)
        url = f"/api/v1/patients/{target.patient_id}"
        response, ok = await self.send(actor, label, exp, ("PATCH", url), {name: value})
        plain = self.patients.get(str(target.patient_id))
        if not response.is_success or plain is None:
            return
        plain[name] = value
        if not ok:
            return
        # The answer is shaped as a read would be (just the id when a read is not allowed).
        read = decide(actor, Permission.PATIENTS_READ, facts)
        if read.allowed:
            self.check_fields(label, response.json(), read, plain, PATIENT_FIELDS)
        elif response.json() != {"id": str(target.patient_id)}:
            self.fail(label, f"a caller who may not read must get only the id: {response.text}")

    async def create_record(self, actor: Actor, target: Target, kind: str) -> None:
        permission = (
            Permission.NURSING_NOTES_CREATE if kind == "nursing_note" else Permission.RECORDS_CREATE
        )
        facts = facts_for(actor, target)
        exp = expect(
            actor,
            permission,
            facts=facts,
            found=patient_visible(actor, target, facts),
            success=201,
            person_only=True,
        )
        body = {"kind": kind, "diagnosis": "Cefaleia tensional", "notes": "Repouso e hidratação."}
        label = self.label(actor, f"POST /patients/{{id}}/records {{kind={kind}}}", target)
        url = f"/api/v1/patients/{target.patient_id}/records"
        response, ok = await self.send(actor, label, exp, ("POST", url), body)
        if not response.is_success:
            return
        plain = {"patient_id": str(target.patient_id), "treatment": None, **body}
        self.records[response.json()["id"]] = plain
        if ok:
            self.check_fields(label, response.json(), exp.granted, plain, RECORD_FIELDS)
            if response.json()["author_id"] != str(actor.user_id):
                self.fail(label, f"author must be the caller: {response.text}")

    async def create_prescription(self, actor: Actor, target: Target) -> None:
        facts = facts_for(actor, target)
        exp = expect(
            actor,
            Permission.PRESCRIPTIONS_CREATE,
            facts=facts,
            found=patient_visible(actor, target, facts),
            success=201,
            person_only=True,
        )
        body = {"medication": "Paracetamol 750mg", "dosage": "1 comprimido de 8/8h"}
        label = self.label(actor, "POST /patients/{id}/prescriptions", target)
        url = f"/api/v1/patients/{target.patient_id}/prescriptions"
        response, ok = await self.send(actor, label, exp, ("POST", url), body)
        if not response.is_success:
            return
        plain = {"patient_id": str(target.patient_id), "instructions": None, **body}
        self.prescriptions[response.json()["id"]] = plain
        if ok:
            self.check_fields(label, response.json(), exp.granted, plain, PRESCRIPTION_FIELDS)

    async def create_appointment(self, actor: Actor, target: Target) -> None:
        """Booked with the site's physician (already on every care team, so no fact
        changes), each at its own future hour."""
        site = actor.site or target.site
        professional = site.clinic.people["physician"].id
        starts = self._first_slot + timedelta(hours=self._slot)
        self._slot += 1
        facts = facts_for(actor, target)
        exp = expect(
            actor,
            Permission.APPOINTMENTS_CREATE,
            facts=facts,
            found=patient_visible(actor, target, facts),
            success=201,
        )
        body = {
            "patient_id": str(target.patient_id),
            "professional_id": str(professional),
            "starts_at": starts.isoformat(),
            "ends_at": (starts + timedelta(minutes=30)).isoformat(),
            "reason": "Consulta de retorno",
        }
        label = self.label(actor, "POST /appointments", target)
        response, ok = await self.send(actor, label, exp, ("POST", "/api/v1/appointments"), body)
        if not response.is_success:
            return
        site.booked.append((target.patient_id, professional))
        plain = {"patient_id": body["patient_id"], "clinic_id": site.clinic.clinic_id}
        self.appointments[response.json()["id"]] = plain | {"reason": body["reason"]}
        if ok:
            self.check_fields(label, response.json(), exp.granted, plain | body, APPOINTMENT_FIELDS)

    async def update_appointment(self, actor: Actor, target: Target) -> None:
        """The site's first appointment (its patient is the target)."""
        appointment = target.site.clinic.appointments[0]
        assert appointment.patient_id == target.patient_id
        facts = facts_for(actor, target)
        exp = expect(
            actor,
            Permission.APPOINTMENTS_UPDATE,
            facts=facts,
            found=patient_visible(actor, target, facts),
        )
        reason = f"Curativo, retorno ({self._serial_number()})"
        label = self.label(actor, "PATCH /appointments/{id} {reason}", target)
        url = f"/api/v1/appointments/{appointment.id}"
        response, ok = await self.send(actor, label, exp, ("PATCH", url), {"reason": reason})
        if not response.is_success:
            return
        plain = self.appointments[str(appointment.id)]
        plain["reason"] = reason
        if ok:
            self.check_fields(label, response.json(), exp.granted, plain, APPOINTMENT_FIELDS)

    async def request_emergency(self, actor: Actor, target: Target) -> None:
        facts = facts_for(actor, target)
        exp = expect(
            actor,
            Permission.EMERGENCY_REQUEST,
            found=patient_visible(actor, target, facts),
            success=201,
            person_only=True,
        )
        label = self.label(actor, "POST /patients/{id}/emergency-access", target)
        url = f"/api/v1/patients/{target.patient_id}/emergency-access"
        body = {"justification": JUSTIFICATION}
        response, ok = await self.send(actor, label, exp, ("POST", url), body)
        if not response.is_success:
            return
        actor.grants.add(target.patient_id)
        grant = response.json()
        if ok and not (
            grant["active"]
            and grant["patient_id"] == str(target.patient_id)
            and grant["grantee_id"] == str(actor.user_id)
        ):
            self.fail(label, f"an active grant for the caller expected: {response.text}")

    # --- security events ------------------------------------------------------------------

    async def check_events(self) -> None:
        """One denial event naming the deciding rule per policy 403, none for anything else;
        one trail event per successful answer of a patient-data route and none for a failed
        one; marked for review exactly when a break-glass rule allowed it (or it opened a
        grant), naming that rule."""
        by_request: dict[str | None, list[AuditEvent]] = defaultdict(list)
        for row in await trail_events(self.world.services.db):
            by_request[row.request_id].append(row)
        by_request.pop(None, None)  # set-up, not requests
        for sent, status in self._sent:
            found = by_request.pop(sent.request_id, [])
            denials = [e for e in found if e.event_type == DENIED]
            accesses = [e for e in found if e.event_type != DENIED]
            if status == 403 and not sent.expected.person_only:
                self._check_denial(sent, denials)
            elif denials:
                self.fail(sent.label, f"answered {status} but recorded an access denial")
            if not 200 <= status < 300:
                if accesses:
                    self.fail(
                        sent.label, f"answered {status} but recorded {accesses[0].event_type}"
                    )
                continue
            if len(accesses) != (1 if sent.audited else 0):
                self.fail(
                    sent.label,
                    f"answered {status} with {[e.event_type for e in accesses]} in the trail",
                )
                continue
            if accesses and status == sent.expected.status:
                self._check_access(sent, accesses[0])
        for request_id, rows_left in by_request.items():
            # Signing the actors in leaves authentication events; nothing else may be left.
            kinds = sorted(
                {e.event_type for e in rows_left if not e.event_type.startswith("auth:")}
            )
            if kinds:
                self.fail(f"request {request_id}", f"events of no matrix call: {kinds}")

    def _check_access(self, sent: Sent, event: AuditEvent) -> None:
        if event.event_type == GRANTED:
            if not event.requires_review or event.reason != JUSTIFICATION:
                self.fail(sent.label, "a grant must be reviewed and carry its justification")
            return
        decision = sent.expected.granted
        if event.details.get("rule") != decision.rule:
            self.fail(sent.label, f"recorded rule {event.details.get('rule')}, not {decision.rule}")
        if event.requires_review != decision.obligations.review:
            self.fail(
                sent.label,
                f"allowed by {decision.rule}: requires_review={event.requires_review} in the trail",
            )

    def _check_denial(self, sent: Sent, denials: list[AuditEvent]) -> None:
        if len(denials) != 1:
            self.fail(sent.label, f"403 with {len(denials)} {DENIED} events (one expected)")
            return
        rule = denials[0].details.get("rule")
        want = sent.expected.denial_rule
        if not rule or (want is not None and rule != want):
            self.fail(sent.label, f"{DENIED} names rule {rule!r}, expected {want or 'a rule'!r}")

    def report(self) -> str:
        head = f"{len(self.mismatches)} of {self.cases} matrix cases differ from the policy:"
        return "\n".join([head, *(f"  - {m}" for m in self.mismatches)])
