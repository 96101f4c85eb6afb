"""Input attack signals: pattern detectors for SQL injection, cross-site scripting and path
traversal, and the pipeline step that runs them over each request.

These are **signals for detection, never the defense** (CONVENTIONS.md). SQL is always
parameterized, answers are JSON under ``Content-Security-Policy: default-src 'none'`` and
no route opens files by client-supplied names; none of that depends on what is here. A
match changes nothing about the request: the body reaches the route byte for byte, the
answer is the one it would have been, and one ``input:attack:suspected`` security event
per request names the detectors and the fields (never the input itself, which may be a
payload or patient data).

Detectors run on a normalized copy of each value: percent-decoding (``+`` as a space) and
HTML entities, repeated while they change something (at most three rounds, so double
encoding is seen through), then Unicode NFKC (a full-width less-than sign becomes ``<``)
and case folding. Both the value as sent and the decoded value are checked. Patterns are
written for clinical Portuguese text: a bare ``--``, an apostrophe in a name
(``D'Ávila``), ``1=1`` or the English word "select" match nothing; each one needs the
structure of an attack (a quote that closes a string and then a tautology, ``UNION
SELECT`` followed by a select list, a handler attribute inside a tag). No pattern
backtracks over a run of input, so the time to scan is linear in its length.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clinicguard.core.context import current_request
from clinicguard.core.errors import ServiceUnavailable
from clinicguard.core.events import (
    Outcome,
    SecurityEvent,
    SecurityEventSink,
    SecurityEventType,
    Severity,
)
from clinicguard.core.logging import get_logger
from clinicguard.ratelimit.interfaces import RateLimiter
from clinicguard.store.interfaces import KeyValueStore

log = get_logger("clinicguard.http.signals")

# --- detectors ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Detector:
    """One named pattern, searched in normalized (case-folded) text.

    ``needles``: substrings of which at least one must be present before the pattern runs
    (plain ``in`` tests, so benign text costs almost nothing). ``confirm``, when given,
    must also accept one of the pattern's matches. Patterns begin with a literal or a
    character set rather than a word boundary or an anchor, so the regex engine can skip
    ahead to candidate positions instead of trying every one."""

    name: str
    needles: tuple[str, ...]
    pattern: re.Pattern[str]
    description: str
    confirm: Callable[[re.Match[str]], bool] | None = None

    def matches(self, text: str) -> bool:
        for needle in self.needles:
            if needle in text:
                break
        else:
            return False
        if self.confirm is None:
            return self.pattern.search(text) is not None
        return any(self.confirm(m) for m in self.pattern.finditer(text))


def _closes_a_string(match: re.Match[str]) -> bool:
    # An odd number of quotes up to and including this one: the quote closes a string the
    # input did not open (the query around it did). "'dor forte' --" has two and is prose.
    quote = match["cq"]
    return match.string.count(quote, 0, match.start("cq") + 1) % 2 == 1


def _starts_a_segment(match: re.Match[str]) -> bool:
    # The run of dots must begin a path segment: "../x" or "a/../x", not "dor.../noite".
    start = match.start()
    return match.string[start] != "." or start == 0 or match.string[start - 1] in "\\/ \t\n\"'=:"


# Browser event-handler attributes. A list rather than ``on\w+``, so that clinical
# key=value text such as "onset=ontem" or "online=sim" is not taken for a handler.
_HANDLERS = (
    r"on(?:abort|afterprint|animation[a-z]{0,10}|auxclick|before[a-z]{1,15}|begin|blur|cancel"
    r"|canplay[a-z]{0,7}|change|click|close|contextmenu|copy|cuechange|cut|dblclick"
    r"|drag[a-z]{0,5}|drop|durationchange|emptied|end|ended|error|focus[a-z]{0,3}|formdata"
    r"|fullscreen[a-z]{0,6}|hashchange|input|invalid|key[a-z]{2,5}|load[a-z]{0,10}"
    r"|message[a-z]{0,5}|mouse[a-z]{2,5}|offline|pagehide|pageshow|paste|pause|play[a-z]{0,3}"
    r"|pointer[a-z]{2,18}|popstate|progress|ratechange|repeat|reset|resize|scroll[a-z]{0,3}"
    r"|search|seek[a-z]{2,3}|select[a-z]{0,9}|show|start|stalled|storage|submit|suspend"
    r"|timeupdate|toggle|touch[a-z]{3,6}|transition[a-z]{3,6}|unload|volumechange|waiting"
    r"|wheel)"
)

# Possessive quantifiers (``*+``, ``++``) wherever a repetition is followed by something it
# could also match, so no pattern backtracks over a long run of blanks, dots or quotes.
DETECTORS: tuple[Detector, ...] = (
    Detector(
        "sqli.tautology",
        ("=", "<", ">", "true", "false", "like"),
        re.compile(
            r"""['"`][\s)]*+(?:(?:or|and|xor)(?!\w)|\|\||&&)[\s(]*+
                (?:(?P<tq>['"`]?)(?P<tv>\w{1,30})(?P=tq)\s*+(?:==?|<=>|like(?!\w))\s*+['"`]?(?P=tv)(?!\w)
                  |true(?!\w)|not\s++false(?!\w)|''\s*+=\s*+'|""\s*+=\s*+"
                  |\d{1,10}+\s*+(?:>=?|<=?|<>|!=)\s*+\d{1,10}+(?!\w))
              |(?:or|\|\|)(?<![^\s()]..)[\s(]++(?P<nv>\d{1,10}+)\s*+=\s*+(?P=nv)(?!\w)""",
            re.VERBOSE,
        ),
        "A quote that closes a string, then OR/AND/||/&& and an always-true comparison "
        "(' OR 1=1, ' or 'a'='a, 'or''=', ' or true); or a numeric OR n=n (1 OR 1=1).",
    ),
    Detector(
        "sqli.union_select",
        ("union",),
        re.compile(
            r"""union(?<!\wunion)(?:\s++(?:all|distinct))?[\s(]++select(?!\w)[\s(]*+
                (?:null(?!\w)|\d|\*|@@|['"]|(?:char|concat|group_concat|version|database|user)(?!\w)
                  |[\w.$]++\s*+(?:,|from(?!\w)))""",
            re.VERBOSE,
        ),
        "UNION [ALL] SELECT followed by a select list (NULL, numbers, *, @@, a function, "
        "a column list or FROM).",
    ),
    Detector(
        "sqli.stacked_query",
        (";",),
        re.compile(
            r""";\s*+(?:drop\s++(?:table|database|schema|view|user|role|function|index)(?!\w)
                  |truncate\s++(?:table\s++)?[\w."]
                  |delete\s++from(?!\w)|insert\s++into(?!\w)|update\s++[\w."]++\s++set(?!\w)
                  |alter\s++(?:table|user|role|database|system)(?!\w)
                  |create\s++(?:table|user|role|function|trigger|database)(?!\w)
                  |exec(?:ute)?\s++(?:xp_|sp_|master\.)|declare\s++@
                  |shutdown(?:\s++with\s++nowait)?\s*+(?:--|\#|;|$)
                  |select\s++(?:\*|null(?!\w)|\d|@@|[\w.]++\s*+\(
                              |[\w.]++(?:\s*+,\s*+[\w.]++)++\s++from(?!\w)))""",
            re.VERBOSE,
        ),
        "A semicolon, then a second statement: DROP TABLE, DELETE FROM, INSERT INTO, "
        "UPDATE … SET, EXEC xp_…, SHUTDOWN, SELECT with a select list.",
    ),
    Detector(
        "sqli.comment_terminator",
        ("--", "#", "/*"),
        re.compile(r"""(?P<cq>['"])[\s)]*+;?\s*+(?:--|\#|/\*)[^\n]{0,5}$"""),
        "A quote that closes a string (odd count), then a comment that cuts off the rest of "
        "the query at the end of the input (admin'--, 1')#, x'/*).",
        confirm=_closes_a_string,
    ),
    Detector(
        "sqli.time_delay",
        ("sleep", "benchmark", "waitfor", "dbms_"),
        re.compile(
            r"""pg_sleep\s*+\(|sleep\(\s*+\d|benchmark\(\s*+\d|waitfor\s++(?:delay|time)\s*+['"\d]
              |dbms_(?:pipe\.receive_message|lock\.sleep)""",
            re.VERBOSE,
        ),
        "Time-based blind injection: SLEEP(n) (MySQL allows no blank before the parenthesis), "
        "pg_sleep(, BENCHMARK(n, WAITFOR DELAY '…', DBMS_LOCK.SLEEP.",
    ),
    Detector(
        "sqli.schema_probe",
        ("information_schema", "pg_", "sqlite_", "mysql.", "sys", "@@version", "version("),
        re.compile(
            r"""information_schema|pg_(?:catalog\.|shadow|authid|user(?!\w)|tables(?!\w))
              |sqlite_(?:master|schema)|mysql\.user|@@version|version\(\)
              |sys(?:objects|columns|\.(?:tables|objects|databases))""",
            re.VERBOSE,
        ),
        "Catalog reconnaissance: information_schema, pg_catalog, sqlite_master, @@version.",
    ),
    Detector(
        "sqli.os_access",
        ("xp_cmdshell", "outfile", "dumpfile", "load_file", "lo_import", "program", "utl_"),
        re.compile(
            r"""xp_cmdshell|into\s++(?:out|dump)file|load_file\s*+\(|lo_import\s*+\(
              |copy\s++[^;]{1,80}?(?:from|to)\s++program(?!\w)|utl_(?:http|file)""",
            re.VERBOSE,
        ),
        "Reaching the server's files or shell: xp_cmdshell, INTO OUTFILE, LOAD_FILE(, "
        "COPY … PROGRAM.",
    ),
    Detector(
        "xss.script_tag",
        ("script",),
        re.compile(r"<\s*+/?\s*+script(?!\w)"),
        "A <script> (or </script>) tag.",
    ),
    Detector(
        "xss.js_url",
        (":",),
        re.compile(
            r"(?:j\s*+a\s*+v\s*+a|v\s*+b|l\s*+i\s*+v\s*+e)\s*+s\s*+c\s*+r\s*+i\s*+p\s*+t\s*+:"
        ),
        "A javascript:, vbscript: or livescript: URL (also with blanks between letters, "
        "which browsers ignore).",
    ),
    Detector(
        "xss.event_handler",
        ("=",),
        re.compile(rf"""<[a-z][^<>]*?[\s/"']{_HANDLERS}\s*+=|['"][\s/]*+{_HANDLERS}\s*+="""),
        "An event-handler attribute (onerror=, onload=, onmouseover=…) inside a tag, or "
        "after a quote that breaks out of an attribute.",
    ),
    Detector(
        "xss.frame_tag",
        ("frame", "object", "embed", "applet"),
        re.compile(r"<\s*+(?:i?frame|frameset|object|embed|applet)(?!\w)"),
        "An <iframe>, <frame>, <object>, <embed> or <applet> tag.",
    ),
    Detector(
        "xss.data_url",
        ("data",),
        re.compile(
            r"data\s*+:\s*+(?:text/(?:html|javascript)|application/(?:x-)?(?:java|ecma)script"
            r"|image/svg[+ ]xml)"
        ),
        "A data: URL carrying HTML, script or SVG.",
    ),
    Detector(
        "traversal.dot_dot",
        ("..",),
        # (?<!\.) starts only at the beginning of a run of dots: one pass over each run.
        re.compile(r"(?<!\.)\.{2,}+[\\/]|[\\/]\.\.$"),
        "A ../ or ..\\ path segment (after decoding, so %2e%2e%2f and %252e too).",
        confirm=_starts_a_segment,
    ),
    Detector(
        "traversal.sensitive_file",
        ("etc", ".ini", "proc", "web-inf"),
        re.compile(
            r"""etc[\\/](?:passwd|shadow|group|hosts)(?!\w)|(?:win|boot|system)\.ini(?!\w)
              |proc[\\/]self[\\/]|web-inf[\\/]""",
            re.VERBOSE,
        ),
        "A well-known sensitive file: /etc/passwd, win.ini, /proc/self/, WEB-INF/.",
    ),
)

DETECTOR_NAMES = tuple(d.name for d in DETECTORS)
#: Any detector's needle: text without one is let through by a single search.
_ANY_NEEDLE = re.compile("|".join(re.escape(n) for d in DETECTORS for n in d.needles))
_DECODE_ROUNDS = 3
#: C0 controls other than blanks, and DEL: dropped (``<scr\x00ipt>``).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_INLINE_COMMENT = re.compile(r"/\*!?\d{0,6}|\*/")


def _decoded(text: str) -> str:
    """Percent-decoding and HTML entities, repeated while either changes something."""
    for _ in range(_DECODE_ROUNDS):
        before = text
        if "%" in text or "+" in text:
            text = unquote_plus(text)
        if "&" in text:
            text = html.unescape(text)
        if text == before:
            break
    return text


def _folded(text: str) -> str:
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    text = text.casefold()
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    if "/*" in text and "*/" in text:
        # MySQL reads /**/ as a blank and runs the body of /*!50000 … */: UN/**/ION is
        # not a keyword, but UNION/**/SELECT is two.
        text = _INLINE_COMMENT.sub(" ", text)
    return text


def normalized(text: str) -> list[str]:
    """The forms detectors look at: the value as sent and, when it differs, decoded; both
    NFKC-normalized and case-folded."""
    forms = [_folded(text)]
    decoded = _decoded(text)
    if decoded != text:
        folded = _folded(decoded)
        if folded != forms[0]:
            forms.append(folded)
    return forms


def scan(text: str) -> list[str]:
    """The names of the detectors that match ``text`` (in :data:`DETECTORS` order); empty
    when none does."""
    forms = [form for form in normalized(text) if _ANY_NEEDLE.search(form)]
    if not forms:
        return []
    if len(forms) == 1:
        form = forms[0]
        return [d.name for d in DETECTORS if d.matches(form)]
    sent, decoded = forms
    return [d.name for d in DETECTORS if d.matches(sent) or d.matches(decoded)]


# --- collecting findings over one request ---------------------------------------------------

#: Characters of input scanned per request at most. The body is already bounded by the
#: body-limit step; past this budget the rest goes unscanned (a signal, not a gate).
SCAN_BUDGET_CHARS = 128 * 1024
_MAX_DEPTH = 64
_FIELD_MAX = 100
_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
UNMATCHED_ROUTE = "(unmatched)"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_JSON_MEDIA_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json")


def safe_name(name: str) -> str:
    """A key or parameter name as it may appear in an event: client-chosen names that are
    not plain identifiers (they could be the payload itself) become ``?``."""
    return name if _SAFE_NAME.fullmatch(name) else "?"


@dataclass(slots=True)
class Findings:
    """What the detectors found in one request: detector names, places and field names
    only, never the values."""

    budget: int = SCAN_BUDGET_CHARS
    detectors: set[str] = field(default_factory=set)
    places: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    values: int = 0

    def __bool__(self) -> bool:
        return bool(self.detectors)

    def check(self, text: str, where: str, name: Callable[[], str]) -> None:
        """Scan one value (within the budget); ``name`` gives its field name on a match."""
        if not text or self.budget <= 0:
            return
        text = text[: self.budget]
        self.budget -= len(text)
        matched = scan(text)
        if not matched:
            return
        self.detectors.update(matched)
        self.values += 1
        if where not in self.places:
            self.places.append(where)
        field_name = name()
        if field_name not in self.fields:
            self.fields.append(field_name)

    def scan_path(self, path: str) -> None:
        self.check(path, "path", lambda: "path")

    def scan_query(self, query_string: bytes) -> None:
        if not query_string:
            return
        pairs = parse_qsl(
            query_string.decode("latin-1"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="replace",
        )
        for key, value in pairs:
            self.check(key, "query", partial(safe_name, key))
            self.check(value, "query", partial(safe_name, key))

    def scan_json(self, body: bytes) -> None:
        """Every key and string value of a JSON body, walked without recursion. A body that
        is not JSON is left to the route (which refuses it with a 422)."""
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return
        # (value, path link, depth): a link is (parent link, key), and the field path is
        # spelled out only for what matches. Pushed in reverse, so popped in order. A key
        # is pushed (as a string) just before its value, under the same path.
        stack: list[tuple[Any, Any, int]] = [(document, None, 0)]
        while stack and self.budget > 0:
            value, link, depth = stack.pop()
            if isinstance(value, str):
                self.check(value, "body", partial(_json_path, link))
            elif depth < _MAX_DEPTH and isinstance(value, dict):
                for k, v in reversed(value.items()):
                    stack.append((v, (link, k), depth + 1))
                    if not _SAFE_NAME.fullmatch(k):
                        # Plain identifiers cannot hold a quote, a tag or a separator;
                        # only unusual keys are worth a scan.
                        stack.append((k, (link, k), depth + 1))
            elif depth < _MAX_DEPTH and isinstance(value, list):
                stack.extend((v, (link, i), depth + 1) for i, v in reversed(list(enumerate(value))))

    def details(self) -> dict[str, str | int]:
        return {
            "detectors": ",".join(d for d in DETECTOR_NAMES if d in self.detectors),
            "where": ",".join(self.places),
            "field": ",".join(self.fields)[:_FIELD_MAX],
            "values": self.values,
        }


def _json_path(link: Any) -> str:
    parts: list[str] = []
    while link is not None:
        link, key = link
        parts.append(f"[{key}]" if isinstance(key, int) else f".{safe_name(key)}")
    return "".join(reversed(parts)).lstrip(".") or "$"


# --- the pipeline step ------------------------------------------------------------------------


class SignalServices(Protocol):
    """What the step needs from the app's services (``app.state.services``)."""

    events: SecurityEventSink
    limiter: RateLimiter
    kv: KeyValueStore


def _services_of(scope: Scope) -> SignalServices | None:
    app = scope.get("app")
    state = getattr(app, "state", None)
    services: SignalServices | None = getattr(state, "services", None)
    return services


def _route_of(scope: Scope) -> str:
    """The matched route's template, never the path as sent: a path the client chose may
    be the payload itself, or carry patient data."""
    route = getattr(scope.get("route"), "path", None)
    return route[:_FIELD_MAX] if isinstance(route, str) else UNMATCHED_ROUTE


def _has_json_body(scope: Scope) -> bool:
    has_body, is_json = False, False
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type = value.decode("latin-1").partition(";")[0].strip().lower()
            is_json = _JSON_MEDIA_TYPE.fullmatch(media_type) is not None
        elif (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
            has_body = True
    return has_body and is_json


async def _buffer(receive: Receive) -> tuple[list[Message], Exception | None]:
    """Read the whole body as the app would; whatever ``receive`` raised (the body limit's
    413 while streaming) is returned to be raised to the app at the same point."""
    messages: list[Message] = []
    try:
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                return messages, None
    # Not handled here: kept and raised again to the app, so buffering changes nothing.
    except Exception as exc:  # noqa: BLE001
        return messages, exc


def _replay(messages: list[Message], error: Exception | None, receive: Receive) -> Receive:
    pending = list(reversed(messages))
    failure = [error] if error is not None else []

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        if failure:
            raise failure.pop()
        return await receive()

    return replayed


class InputSignalsMiddleware:
    """Scan the path, the query string (names and values) and JSON bodies (keys and
    string values) with :data:`DETECTORS`; when anything matches, record one
    ``input:attack:suspected`` event after the app has answered.

    Never blocks, never changes the request: the body is buffered and handed to the app
    message for message. At most ``events_per_ip`` events per client IP per ``window``
    seconds (the app's rate limiter); suppressed ones are counted into the next event.
    If the event cannot be recorded, that is logged and the request is unaffected
    (ADR 0032)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        events_per_ip: int = 10,
        window: float = 60.0,
        budget: int = SCAN_BUDGET_CHARS,
    ) -> None:
        self.app = app
        self.events_per_ip = events_per_ip
        self.window = window
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        findings = Findings(self.budget)
        try:
            findings.scan_path(scope["path"])
            findings.scan_query(scope.get("query_string", b""))
        except Exception:
            # A detector bug must never become a failed request.
            log.exception("input_signal_scan_failed")
        if _has_json_body(scope):
            messages, error = await _buffer(receive)
            if error is None:
                try:
                    findings.scan_json(b"".join(m.get("body", b"") for m in messages))
                except Exception:
                    log.exception("input_signal_scan_failed")
            receive = _replay(messages, error, receive)
        try:
            await self.app(scope, receive, send)
        finally:
            if findings:
                # After the answer, so writing the event never delays it (ADR 0032).
                await self._signal(scope, findings)

    async def _signal(self, scope: Scope, findings: Findings) -> None:
        details = findings.details()
        services = _services_of(scope)
        if services is None:
            log.warning("input_signal_not_recorded", reason="no_services", **details)
            return
        ctx = current_request()
        ip = ctx.client_ip if ctx else "unknown"
        suppressed_key = f"cg:{{signals:{ip}}}:suppressed"
        try:
            state = await services.limiter.hit(
                f"signals:ip:{ip}", limit=self.events_per_ip, window=self.window
            )
            if not state.allowed:
                await services.kv.increment(suppressed_key, ttl=3600)
                return
            suppressed = await services.kv.take(suppressed_key)
            method = scope.get("method", "")
            await services.events.record(
                SecurityEvent(
                    type=SecurityEventType.INPUT_ATTACK_SUSPECTED,
                    outcome=Outcome.FAILURE,
                    severity=Severity.MEDIUM,
                    details={
                        **details,
                        "method": method if method in _METHODS else "OTHER",
                        "route": _route_of(scope),
                        "suppressed": int(suppressed) if suppressed else 0,
                    },
                )
            )
        except ServiceUnavailable as exc:
            # A signal must not turn attacks into outages: the request has been answered
            # and the event is logged instead of stored (ADR 0032).
            log.warning("input_signal_not_recorded", reason=type(exc).__name__, **details)
        except Exception:
            log.exception("input_signal_not_recorded", **details)
