"""``clinicguard serve`` as a real server process (API.md, "Running it" and "CLI").

Each test starts ``python -m clinicguard serve`` on a free loopback port with a migrated
SQLite database under tmp_path, waits for ``/healthz`` and always stops the process
(SIGTERM, then SIGKILL) whatever the outcome.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clinicguard.store.migrate import upgrade_to_head
from tests.services import process_env, redis_or_skip

pytestmark = pytest.mark.slow

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "clinicguard.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{path}")
    return path


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful), then SIGKILL to the process group this test created."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
    # Workers left behind by a crashed supervisor share its process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _get(port: int, path: str, context: ssl.SSLContext | None = None) -> http.client.HTTPResponse:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("localhost", port, timeout=5, context=context)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


@contextlib.contextmanager
def serve(
    tmp_path: Path,
    env: dict[str, str],
    *args: str,
    context: ssl.SSLContext | None = None,
) -> Iterator[Server]:
    """Start ``serve``, wait until ``/healthz`` answers 200, and always stop it."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clinicguard",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *args,
            ],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so workers can be reaped too
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{server.output()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if _get(port, "/healthz", context).status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"/healthz did not answer within {START_TIMEOUT_SECONDS}s:\n{server.output()}"
                )
            time.sleep(0.1)
        yield server
    finally:
        _stop(process)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (its own trust anchor)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "server.crt"
    key_file = directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def client_context(cafile: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A verifying client that offers exactly one TLS version."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.minimum_version = version
    context.maximum_version = version
    return context


def test_tls_serves_tls13_only(tmp_path: Path, database: Path) -> None:
    """With --tls-cert/--tls-key the server speaks TLS 1.3 and refuses TLS 1.2 and older."""
    cert, key = self_signed_certificate(tmp_path)
    tls13 = client_context(cert, ssl.TLSVersion.TLSv1_3)
    env = process_env(tmp_path, database)
    with serve(tmp_path, env, "--tls-cert", str(cert), "--tls-key", str(key), context=tls13) as srv:
        old = ssl.create_default_context(cafile=str(cert))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw,
            pytest.raises(ssl.SSLError),
        ):
            old.wrap_socket(raw, server_hostname="localhost")

        conn = http.client.HTTPSConnection("localhost", srv.port, timeout=5, context=tls13)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            body = response.read()
            assert conn.sock is not None
            version = conn.sock.version()  # type: ignore[attr-defined]
        finally:
            conn.close()
        assert response.status == 200
        assert body == b'{"status":"ok"}'
        assert version == "TLSv1.3"


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.redis
def test_workers_run_as_separate_processes(tmp_path: Path, database: Path) -> None:
    """--workers 2 starts two worker processes under the serve process; both serve, and
    stopping the server stops its workers (none left behind). Workers share sessions
    through Redis, so several workers need it."""
    env = process_env(tmp_path, database, CLINICGUARD_REDIS_URL=redis_or_skip())
    with serve(tmp_path, env, "--workers", "2") as srv:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            workers = [c for c in _children(srv.process.pid) if "spawn_main" in _cmdline(c)]
            if len(workers) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(workers) == 2, ([_cmdline(c) for c in _children(srv.process.pid)], srv.output())
        for _ in range(10):
            assert _get(srv.port, "/healthz").status == 200
        assert _get(srv.port, "/readyz").status == 200
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while any(_is_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_is_running(w) for w in workers)


def test_several_workers_without_redis_are_refused(tmp_path: Path, database: Path) -> None:
    """Without a shared store each worker would keep its own sessions (a logout on one
    would not end the session on another), so ``serve --workers 2`` refuses to start."""
    result = subprocess.run(
        [sys.executable, "-m", "clinicguard", "serve", "--workers", "2", "--port", "1"],
        env=process_env(tmp_path, database),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CLINICGUARD_REDIS_URL" in result.stdout + result.stderr


def test_production_refuses_to_start_naming_every_problem(tmp_path: Path, database: Path) -> None:
    """In production, a weak configuration stops ``serve`` before it listens, and the
    operator sees every problem at once (not one per attempt)."""
    seed = subprocess.run(
        [
            sys.executable,
            "-m",
            "clinicguard",
            "demo",
            "seed",
            "--out",
            str(tmp_path / "demo-credentials.json"),
        ],
        env=process_env(tmp_path, database),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert seed.returncode == 0, seed.stderr

    port = free_port()
    env = process_env(
        tmp_path,
        database,
        CLINICGUARD_ENV="production",
        CLINICGUARD_SECRET_KEY="too-short-secret",
        CLINICGUARD_DEBUG="true",
        CLINICGUARD_CORS_ORIGINS="*",
        CLINICGUARD_CORS_ALLOW_CREDENTIALS="true",
        COLUMNS="400",  # rich would otherwise wrap the problem list at 80 columns
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "clinicguard", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        raw, _ = process.communicate(timeout=60)
    finally:
        _stop(process)
    output = " ".join(raw.decode(errors="replace").split())
    assert process.returncode != 0, output
    assert "serving on" not in output
    expected = {
        "secret": "CLINICGUARD_SECRET_KEY is shorter than",
        "debug": "CLINICGUARD_DEBUG is on",
        "sqlite": "CLINICGUARD_DATABASE_URL is SQLite",
        "redis": "CLINICGUARD_REDIS_URL is missing",
        "cors": "CORS allows any origin ('*') together with credentials",
        "demo data": "the demo data set is present in the database",
    }
    missing = {what: text for what, text in expected.items() if text not in output}
    assert not missing, f"not named: {sorted(missing)}\n{output}"
    for secret in ("too-short-secret", env["CLINICGUARD_MASTER_KEY"]):
        assert secret not in output  # problems are named, secrets never printed
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass


def test_real_server_hides_its_software_and_tags_requests(tmp_path: Path, database: Path) -> None:
    """Through the real HTTP server: no ``server`` header (no software/version disclosure)
    and every answer carries an X-Request-ID for correlation."""
    with serve(tmp_path, process_env(tmp_path, database)) as srv:
        for path in ("/healthz", "/readyz", "/api/v1/does-not-exist"):
            response = _get(srv.port, path)
            headers = {k.lower(): v for k, v in response.getheaders()}
            assert "server" not in headers, path
            assert headers.get("x-request-id"), path
            assert "uvicorn" not in str(response.getheaders()).lower()
        ids = {_get(srv.port, "/healthz").getheader("x-request-id") for _ in range(3)}
        assert len(ids) == 3
