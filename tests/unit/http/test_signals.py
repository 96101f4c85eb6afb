"""Input attack signals: the detectors catch attacks in their encoded forms and stay quiet
on clinical Portuguese; the pipeline step never changes a request and never stores input.

The step is exercised here on a bare Starlette app with the real in-process limiter and
key-value store and a list as the event sink; tests/api/test_input_signals.py runs it
through the real application.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from structlog.testing import capture_logs

from clinicguard.core.events import Outcome, SecurityEvent, SecurityEventType, Severity
from clinicguard.http.middleware import BodyLimitMiddleware, RequestContextMiddleware
from clinicguard.http.signals import (
    DETECTOR_NAMES,
    DETECTORS,
    UNMATCHED_ROUTE,
    Findings,
    InputSignalsMiddleware,
    normalized,
    safe_name,
    scan,
)
from clinicguard.ratelimit.service import MemorySlidingWindowLimiter
from clinicguard.store.interfaces import DatabaseUnavailable, KeyValueUnavailable
from clinicguard.store.kv import MemoryKeyValueStore

# --- detectors ------------------------------------------------------------------------------

ATTACKS: list[tuple[str, str]] = [
    # SQL injection
    ("' OR 1=1 --", "sqli.tautology"),
    ("' or 'a'='a", "sqli.tautology"),
    ('" or "x"="x', "sqli.tautology"),
    ("'or''='", "sqli.tautology"),
    ("admin' OR true--", "sqli.tautology"),
    ("x' || 1=1", "sqli.tautology"),
    ("1' and 2>1", "sqli.tautology"),
    ("1 OR 1=1", "sqli.tautology"),
    ("1) or (1=1", "sqli.tautology"),
    ("' /**/or/**/ 1=1", "sqli.tautology"),
    ("admin'--", "sqli.comment_terminator"),
    ("admin' #", "sqli.comment_terminator"),
    ("1')--", "sqli.comment_terminator"),
    ("x'/*", "sqli.comment_terminator"),
    ("1' UNION SELECT NULL,NULL--", "sqli.union_select"),
    ("1 UNION ALL SELECT username, password FROM users", "sqli.union_select"),
    ("1/**/UNION/**/SELECT/**/1,2", "sqli.union_select"),
    ("0 union(select 1)", "sqli.union_select"),
    ("1; DROP TABLE patients", "sqli.stacked_query"),
    ("'; DROP TABLE patients; --", "sqli.stacked_query"),
    ("1; delete from users", "sqli.stacked_query"),
    ("1; update users set role='admin'", "sqli.stacked_query"),
    ("1;shutdown--", "sqli.stacked_query"),
    ("1 AND SLEEP(5)", "sqli.time_delay"),
    ("1; SELECT pg_sleep(10)", "sqli.time_delay"),
    ("1'; WAITFOR DELAY '0:0:5'--", "sqli.time_delay"),
    ("1 and benchmark(5000000,md5(1))", "sqli.time_delay"),
    ("' UNION SELECT table_name FROM information_schema.tables--", "sqli.schema_probe"),
    ("1 and (select count(*) from pg_catalog.pg_tables)>0", "sqli.schema_probe"),
    ("' and @@version--", "sqli.schema_probe"),
    ("'; exec xp_cmdshell 'dir'--", "sqli.os_access"),
    ("1 union select 1 into outfile '/tmp/x'", "sqli.os_access"),
    ("1; copy t from program 'id'", "sqli.os_access"),
    # cross-site scripting
    ("<script>alert(1)</script>", "xss.script_tag"),
    ("<ScRiPt src=//evil.example>", "xss.script_tag"),
    ("</script><img>", "xss.script_tag"),
    ("javascript:alert(document.cookie)", "xss.js_url"),
    ("JaVaScRiPt:alert(1)", "xss.js_url"),
    ("vbscript:msgbox(1)", "xss.js_url"),
    ("<img src=x onerror=alert(1)>", "xss.event_handler"),
    ("<svg/onload=alert(1)>", "xss.event_handler"),
    ("<body onload=alert(1)>", "xss.event_handler"),
    ('" onmouseover="alert(1)', "xss.event_handler"),
    ("<a href=# onclick = 'x()'>", "xss.event_handler"),
    ('<iframe src="https://evil.example"></iframe>', "xss.frame_tag"),
    ("<object data=x>", "xss.frame_tag"),
    ("<embed src=x>", "xss.frame_tag"),
    ("data:text/html;base64,PHNjcmlwdD4=", "xss.data_url"),
    ("data:image/svg+xml,<svg/>", "xss.data_url"),
    # path traversal
    ("../../etc/passwd", "traversal.dot_dot"),
    ("../../etc/passwd", "traversal.sensitive_file"),
    ("..\\..\\windows\\win.ini", "traversal.dot_dot"),
    ("files/....//....//secret", "traversal.dot_dot"),
    ("/proc/self/environ", "traversal.sensitive_file"),
]

ENCODED: list[tuple[str, str]] = [
    ("%27%20OR%201%3D1", "sqli.tautology"),
    ("%2527%2520OR%25201%253D1", "sqli.tautology"),  # percent-encoded twice
    ("'+OR+1=1--", "sqli.tautology"),  # form encoding: + is a blank
    ("&#39; OR 1=1", "sqli.tautology"),
    ("UNION%0aSELECT%0anull", "sqli.union_select"),
    ("&lt;script&gt;alert(1)&lt;/script&gt;", "xss.script_tag"),
    ("&amp;lt;script&amp;gt;", "xss.script_tag"),  # entities twice
    ("%3Cscript%3E", "xss.script_tag"),
    ("%253Cscript%253E", "xss.script_tag"),
    ("&#x3C;script&#x3E;", "xss.script_tag"),
    ("＜script＞alert(1)＜/script＞", "xss.script_tag"),  # full-width forms (NFKC)
    ("<ſcript>", "xss.script_tag"),  # long s folds to s
    ("<scr\x00ipt>", "xss.script_tag"),  # NUL dropped
    ("jav&#x09;ascript:alert(1)", "xss.js_url"),
    ("java\tscript&colon;alert(1)", "xss.js_url"),
    ("ｊａｖａｓｃｒｉｐｔ：alert(1)", "xss.js_url"),
    ("..%2f..%2fetc%2fpasswd", "traversal.dot_dot"),
    ("%2e%2e%2f%2e%2e%2f", "traversal.dot_dot"),
    ("%252e%252e%252f", "traversal.dot_dot"),
    ("..%5c..%5cboot.ini", "traversal.dot_dot"),
]

#: Clinical Portuguese (and the English that shows up in it) that must raise nothing.
BENIGN = [
    "Paciente relata dor -- melhora com repouso",
    "Retorno em 30 dias -- ou antes se piora",
    "Paciente refere 'dor forte' -- medicado com dipirona",
    'Paciente diz "não sei" -- ansiosa',
    "Observação: 'não' ou 'sim' -- confirmar",
    "Teste de caminhada 6' -- 450 m",
    "copo d'água -- tomar em jejum",
    "Select the option that best describes the pain",
    "Union of fracture confirmed; select cases reviewed",
    "O'Brien",
    "João D'Ávila",
    "Ana O'Neill-D'Souza",
    "Sra. D'Ávila or Dr. O'Brien",
    "Hipótese: 'tensional' and 'migrânea'",
    "e-mail d'avila@clinica.com.br",
    "1=1 dose",
    "Fórmula: 1+1=2",
    "a or b",
    "Dose: 1 comprimido; repetir se necessário",
    "Paciente ansiosa; drop de pressão ao levantar",
    "Update: paciente estável; update cadastro",
    "Delete from list? não",
    "PA 120/80 mmHg; FC 72 bpm; SpO2 98%",
    "Taxa de 50% de melhora; 100%",
    "50%+ de melhora",
    "Glicemia < 100 mg/dL e > 70",
    "Criança <2 anos: dose 5 mg/kg",
    "dor <moderada onset=ontem",
    "Alergia a penicilina (reação: urticária)",
    "Tomar 1 comprimido às 8h e 20h & beber água",
    "Tratamento: ácido 5% & creme",
    "Menor de 18 anos && acompanhante",
    "Paciente com HAS || DM2",
    "Exame de 12/03/2024 – ver laudo anterior...",
    "dor.../noite",
    "Prescrição: amoxicilina 500mg 8/8h (7 dias)",
    "Sleep study (polissonografia) em 2 semanas",
    "Usar script de orientação",
    "Nota: <b>importante</b>",
    "Ver <https://example.com/laudo?id=1&tipo=2>",
    "data: 12/03/2024",
    "Escala de dor 7/10 (moderada); reavaliar",
    "Sistema de agendamento; versão 2",
    "C:\\Users\\laudos\\exame.pdf",
    "maria.silva+clinica@example.com",
    "/api/v1/patients/3f1e2d3c-0000-4000-8000-000000000000",
    "Ｓｅｌｅｃｔ",
    "#1 prioridade",
    "--",
    "''",
    "",
]


@pytest.mark.parametrize(("text", "detector"), ATTACKS + ENCODED)
def test_attacks_are_signalled(text: str, detector: str) -> None:
    assert detector in scan(text)


@pytest.mark.parametrize("text", BENIGN)
def test_clinical_text_raises_no_signal(text: str) -> None:
    assert scan(text) == []


def test_every_detector_has_an_attack_that_trips_it() -> None:
    tripped = {detector for _, detector in ATTACKS + ENCODED}
    assert tripped == set(DETECTOR_NAMES)


def test_detector_names_are_unique_and_namespaced() -> None:
    assert len(set(DETECTOR_NAMES)) == len(DETECTORS)
    for detector in DETECTORS:
        kind, _, what = detector.name.partition(".")
        assert kind in {"sqli", "xss", "traversal"}
        assert what
        assert detector.description
        assert detector.needles


def test_names_come_back_in_detector_order() -> None:
    assert scan("'; DROP TABLE x; SELECT pg_sleep(5) <script>") == [
        "sqli.stacked_query",
        "sqli.time_delay",
        "xss.script_tag",
    ]


def test_normalization_decodes_then_folds() -> None:
    assert normalized("Plain") == ["plain"]
    assert normalized("%253Cb%253E") == ["%253cb%253e", "<b>"]
    assert normalized("&amp;lt;b&amp;gt;") == ["&amp;lt;b&amp;gt;", "<b>"]
    assert normalized("ＳＥＬＥＣＴ") == ["select"]
    assert normalized("a\x00b\x7fc") == ["abc"]
    # MySQL reads /**/ as a blank and runs the body of a versioned comment.
    assert normalized("UNION/*!50000SELECT*/") == ["union select "]


def test_a_quote_that_closes_a_quoted_phrase_is_prose() -> None:
    assert scan("disse 'sim' --") == []
    assert scan("disse sim' --") == ["sqli.comment_terminator"]


@given(st.text(max_size=300))
def test_scan_never_fails_and_names_only_detectors(text: str) -> None:
    names = scan(text)
    assert names == [n for n in DETECTOR_NAMES if n in names]


PROSE = string.ascii_letters + string.digits + "áàâãéêíóôõúüçÁÀÂÃÉÊÍÓÔÕÚÇ ,.-"


@given(st.text(alphabet=PROSE, max_size=200))
def test_prose_without_quotes_tags_or_operators_raises_nothing_but_keywords(text: str) -> None:
    # Without quotes, brackets, operators or separators only the keyword-shaped detectors
    # could fire ("union select 1", "sysobjects"); prose never trips the others.
    assert set(scan(text)) <= {"sqli.union_select", "sqli.schema_probe"}


def test_long_runs_are_scanned_in_linear_time() -> None:
    # Regression guard for catastrophic backtracking: each would take minutes if any
    # pattern backtracked quadratically over the run. (No timing assertion: the test
    # suite's timeout is the bound.)
    for run in (".", "'", " ", "(", "<a ", "' or ", "1 or ", "/*", "j a v a ", "; select a,"):
        scan(run * 20_000 + "!")


# --- findings over one request ----------------------------------------------------------------


def test_json_fields_are_named_by_path_never_by_value() -> None:
    findings = Findings()
    findings.scan_json(
        json.dumps(
            {
                "name": "Ana",
                "contacts": [{"note": "ok"}, {"note": "<script>alert(1)</script>"}],
                "<img src=x onerror=alert(1)>": "key as payload",
                "tags": ["a", "' OR 1=1 --"],
            }
        ).encode()
    )
    details = findings.details()
    assert details == {
        "detectors": "sqli.tautology,xss.script_tag,xss.event_handler",
        "where": "body",
        "field": "contacts[1].note,?,tags[1]",
        "values": 3,
    }


def test_query_names_and_values_are_scanned() -> None:
    findings = Findings()
    findings.scan_query(b"q=%27%20OR%201%3D1%20--&page=2&%3Cscript%3E=1")
    assert findings.details() == {
        "detectors": "sqli.tautology,xss.script_tag",
        "where": "query",
        "field": "q,?",
        "values": 2,
    }


def test_a_root_string_body_is_named_dollar() -> None:
    findings = Findings()
    findings.scan_json(b'"<script>"')
    assert findings.details()["field"] == "$"


def test_bodies_that_are_not_json_or_too_deep_are_left_to_the_route() -> None:
    for body in (b"{not json", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b"1" * 5000):
        findings = Findings()
        findings.scan_json(body)
        assert not findings


def test_nesting_past_the_depth_bound_is_not_walked() -> None:
    deep: Any = "<script>"
    for _ in range(100):
        deep = [deep]
    findings = Findings()
    findings.scan_json(json.dumps(deep).encode())
    assert not findings


def test_the_field_list_is_truncated() -> None:
    findings = Findings()
    findings.scan_json(json.dumps({f"field_{i:03d}": "<script>" for i in range(50)}).encode())
    assert len(str(findings.details()["field"])) == 100
    assert findings.details()["values"] == 50


def test_scanning_stops_at_the_budget() -> None:
    findings = Findings(budget=1000)
    findings.scan_json(json.dumps(["a" * 999, "<script>"]).encode())
    assert not findings
    findings = Findings(budget=1000)
    findings.scan_json(json.dumps(["a" * 900, "<script>"]).encode())
    assert findings


@given(st.text(max_size=80))
def test_names_shown_are_plain_identifiers_or_a_question_mark(name: str) -> None:
    shown = safe_name(name)
    assert shown in (name, "?")
    assert set(shown) <= set(string.ascii_letters + string.digits + "_-?")
    assert len(shown) <= 64


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(document=json_values, payload=st.sampled_from([a for a, _ in ATTACKS]))
def test_details_never_carry_the_payload(document: Any, payload: str) -> None:
    findings = Findings()
    findings.scan_json(json.dumps({"wrapper": document, "x": payload}).encode())
    details = findings.details()
    assert "x" in str(details["field"]).split(",")
    for value in details.values():
        assert payload not in str(value)


# --- the pipeline step ----------------------------------------------------------------------


@dataclass
class ListSink:
    events: list[SecurityEvent] = field(default_factory=list)
    error: Exception | None = None

    async def record(self, event: SecurityEvent) -> None:
        if self.error is not None:
            raise self.error
        self.events.append(event)


class FailingLimiter(MemorySlidingWindowLimiter):
    async def hit(self, key: str, *, limit: int, window: float) -> Any:
        raise KeyValueUnavailable()


@dataclass
class FakeServices:
    events: ListSink = field(default_factory=ListSink)
    limiter: MemorySlidingWindowLimiter = field(default_factory=MemorySlidingWindowLimiter)
    kv: MemoryKeyValueStore = field(default_factory=MemoryKeyValueStore)


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type", "text/plain"))


async def boom(request: Request) -> Response:
    raise RuntimeError("route failed")


def build(
    services: FakeServices | None = None, *, max_bytes: int = 1 << 20, **options: Any
) -> Starlette:
    app = Starlette(
        routes=[Route("/echo/{item}", echo, methods=["GET", "POST"]), Route("/boom", boom)]
    )
    # Outermost last: context, body limit, signals (the pipeline's order).
    app.add_middleware(InputSignalsMiddleware, **options)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes)
    app.add_middleware(RequestContextMiddleware, trusted_proxies=[])
    if services is not None:
        app.state.services = services
    return app


def http_client(app: Starlette, ip: str = "198.51.100.7") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 5000)), base_url="http://t"
    )


async def test_a_signal_records_one_event_after_the_answer_and_changes_nothing() -> None:
    services = FakeServices()
    body = json.dumps({"patient": {"notes": ["ok", "<script>alert(1)</script>"]}}).encode()
    async with http_client(build(services)) as client:
        response = await client.post(
            "/echo/%27%20OR%201%3D1?q=%3Cscript%3E",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 200
    assert response.content == body
    [event] = services.events.events
    assert event.type is SecurityEventType.INPUT_ATTACK_SUSPECTED
    assert event.outcome is Outcome.FAILURE
    assert event.severity is Severity.MEDIUM
    assert event.details == {
        "detectors": "sqli.tautology,xss.script_tag",
        "where": "path,query,body",
        "field": "path,q,patient.notes[1]",
        "values": 3,
        "method": "POST",
        "route": "/echo/{item}",
        "suppressed": 0,
    }


async def test_benign_requests_record_nothing() -> None:
    services = FakeServices()
    async with http_client(build(services)) as client:
        response = await client.post(
            "/echo/x?q=João+D%27Ávila",
            json={"note": "Paciente relata dor -- melhora com repouso", "dose": "1=1"},
        )
    assert response.status_code == 200
    assert services.events.events == []


async def test_a_chunked_body_reaches_the_app_message_for_message() -> None:
    seen: list[Message] = []

    async def recording_app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if not message.get("more_body", False):
                break
        await JSONResponse({"ok": True})(scope, receive, send)

    chunks = [b'{"note": "<scr', b'ipt>", ', b'"n": 1}']
    sent = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> Message:
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    services = FakeServices()
    app = Starlette()
    app.state.services = services
    middleware = InputSignalsMiddleware(recording_app)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "app": app,
    }
    answers: list[Message] = []

    async def send(message: Message) -> None:
        answers.append(message)

    await middleware(scope, receive, send)
    assert [m["body"] for m in seen] == chunks
    assert [m["more_body"] for m in seen] == [True, True, False]
    assert answers[0]["status"] == 200
    [event] = services.events.events
    assert event.details["field"] == "note"


async def test_the_body_limit_still_answers_413_for_a_long_chunked_body() -> None:
    services = FakeServices()

    async def chunks() -> Any:
        yield b'{"note": "'
        yield b"<script>" * 200
        yield b'"}'

    async with http_client(build(services, max_bytes=100)) as client:
        response = await client.post(
            "/echo/x", content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert services.events.events == []  # a refused body is not scanned


async def test_non_json_bodies_are_not_buffered_or_scanned() -> None:
    services = FakeServices()
    async with http_client(build(services)) as client:
        response = await client.post(
            "/echo/x", content=b"<script>", headers={"content-type": "text/plain"}
        )
    assert response.content == b"<script>"
    assert services.events.events == []


async def test_events_are_capped_per_ip_and_the_suppressed_are_counted() -> None:
    services = FakeServices()
    app = build(services, events_per_ip=3, window=60)
    async with http_client(app) as client, http_client(app, "198.51.100.8") as other:
        for _ in range(7):
            assert (await client.get("/echo/x?q=<script>")).status_code == 200
        assert (await other.get("/echo/x?q=<script>")).status_code == 200
        assert len(services.events.events) == 4  # 3 from the first address, 1 from the other
        await services.limiter.reset("signals:ip:198.51.100.7")  # the window passes
        await client.get("/echo/x?q=<script>")
    assert [e.details["suppressed"] for e in services.events.events] == [0, 0, 0, 0, 4]


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda s: setattr(s.events, "error", DatabaseUnavailable()), id="sink"),
        pytest.param(lambda s: setattr(s, "limiter", FailingLimiter()), id="limiter"),
    ],
)
async def test_an_event_that_cannot_be_stored_is_logged_and_the_answer_stands(
    break_it: Callable[[FakeServices], None],
) -> None:
    services = FakeServices()
    break_it(services)
    async with http_client(build(services)) as client:
        with capture_logs() as logs:
            response = await client.post("/echo/x", json={"q": "' OR 1=1 --"})
    assert response.status_code == 200
    assert response.json() == {"q": "' OR 1=1 --"}
    [line] = [entry for entry in logs if entry["event"] == "input_signal_not_recorded"]
    assert line["log_level"] == "warning"
    assert line["detectors"] == "sqli.tautology"
    assert "' OR 1=1" not in json.dumps(line)
    assert services.events.events == []


async def test_an_unexpected_sink_error_is_logged_not_raised() -> None:
    services = FakeServices()
    services.events.error = RuntimeError("bug")
    async with http_client(build(services)) as client:
        with capture_logs() as logs:
            response = await client.get("/echo/x?q=<script>")
    assert response.status_code == 200
    assert any(e["event"] == "input_signal_not_recorded" for e in logs)


async def test_a_failing_route_is_still_signalled_and_its_error_propagates() -> None:
    services = FakeServices()
    async with http_client(build(services)) as client:
        with pytest.raises(RuntimeError, match="route failed"):
            await client.get("/boom?q=<script>")
    [event] = services.events.events
    assert event.details["route"] == "/boom"


async def test_an_unmatched_path_is_not_reported() -> None:
    services = FakeServices()
    async with http_client(build(services)) as client:
        response = await client.get("/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd")
    assert response.status_code == 404
    [event] = services.events.events
    assert event.details["detectors"] == "traversal.dot_dot,traversal.sensitive_file"
    assert event.details["where"] == "path"
    assert event.details["route"] == UNMATCHED_ROUTE
    assert "passwd" not in json.dumps(dict(event.details))


async def test_without_services_the_signal_is_logged() -> None:
    async with http_client(build(None)) as client:
        with capture_logs() as logs:
            response = await client.get("/echo/x?q=<script>")
    assert response.status_code == 200
    assert [e["reason"] for e in logs if e["event"] == "input_signal_not_recorded"] == [
        "no_services"
    ]


async def test_lifespan_and_websocket_scopes_pass_through() -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])

    middleware = InputSignalsMiddleware(app)

    async def never() -> Message:
        raise AssertionError

    async def discard(message: Message) -> None:
        raise AssertionError

    await middleware({"type": "lifespan"}, never, discard)
    await middleware({"type": "websocket", "path": "/<script>"}, never, discard)
    assert calls == ["lifespan", "websocket"]
