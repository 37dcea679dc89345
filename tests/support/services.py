"""Real PostgreSQL and Redis servers for the tests, on private ports in a temporary directory."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from support.ports import free_port
from support.waiting import WaitTimeout, wait_for


class ServiceUnavailable(RuntimeError):
    """A server could not be found or started; the message says why."""


def terminate(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 20 s; returns once the process is gone."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def wait_port(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0, host: str = "127.0.0.1"
) -> None:
    """Wait until `process` listens on `host:port`; `ServiceUnavailable` (with its log) if it exits
    first or does not listen within `timeout` seconds."""

    def listening() -> bool:
        if process.poll() is not None:
            raise ServiceUnavailable(f"exited with {process.returncode}: {_log_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_for(f"a listener on {host}:{port}", listening, timeout, interval=0.1)
    except WaitTimeout as exc:
        raise ServiceUnavailable(f"{exc}: {_log_tail(log)}") from None


@dataclass
class Server:
    """A running server process and how to reach it."""

    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]
    directory: Path
    remove: bool = False
    """Delete `directory` after stopping (it is not under pytest's temporary root)."""

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        terminate(self.process)
        if self.remove:
            shutil.rmtree(self.directory, ignore_errors=True)


def create_database(server: Server, name: str) -> str:
    """A new, empty database on a PostgreSQL `server` (dropped first if it exists); its URL."""
    import psycopg

    with psycopg.connect(server.url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise ServiceUnavailable("PostgreSQL is not installed (run tools/install-system-deps.sh)")
    return Path(found[-1]).parent


def _as_postgres_user() -> list[str]:
    """Prefix that runs a command as the `postgres` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def start_postgres(directory: Path, *, host: str = "127.0.0.1", clients: str | None = None) -> Server:
    """initdb and start a PostgreSQL server; the database `agentplane` exists, user `postgres`.

    `host`: the address it listens on (beside loopback); `clients`: a CIDR trusted to connect there
    (the pods of the test cluster's real node)."""
    bindir = _postgres_bin()
    prefix = _as_postgres_user()
    if prefix:
        # pytest's temporary directories are private to root; the postgres user needs its own.
        directory = Path(tempfile.mkdtemp(prefix="agentplane-postgres-"))
        shutil.chown(directory, "postgres", "postgres")
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    log = directory / "postgres.log"
    initdb = subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
    )
    if initdb.returncode != 0:
        raise ServiceUnavailable(f"initdb failed: {initdb.stderr.strip()[-2000:]}")
    if clients is not None:
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {clients} trust\n")
    listen = "127.0.0.1" if host == "127.0.0.1" else f"127.0.0.1,{host}"
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *prefix,
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(directory),
                "-c",
                f"listen_addresses={listen}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(
        "postgresql",
        f"postgresql://postgres@{host}:{port}/agentplane",
        port,
        process,
        directory,
        remove=bool(prefix),
    )
    try:
        wait_port(port, process, log, host=host)
        refusal = ""

        def database_created() -> bool:
            nonlocal refusal
            psql = [
                str(bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "CREATE DATABASE agentplane",
            ]
            try:
                created = subprocess.run(psql, capture_output=True, text=True, timeout=10)
            except subprocess.TimeoutExpired:
                refusal = "psql did not answer within 10 s"
                return False
            refusal = created.stderr
            return created.returncode == 0

        try:
            wait_for("the agentplane database to be created", database_created, 30.0)
        except WaitTimeout:
            raise ServiceUnavailable(f"cannot create the database: {refusal}") from None
    except BaseException:
        server.stop()
        raise
    return server


def start_redis(directory: Path, *, host: str = "127.0.0.1", tls: bool = False) -> Server:
    """Start a Redis server with persistence off, on loopback (and `host`, for the real node's pods).
    With `tls`, it serves TLS only, with a certificate for 127.0.0.1 from a throwaway CA (its URL
    names the CA, `rediss://...?ssl_ca_certs=<directory>/pki/ca.crt`), and on a Unix socket too
    (`<directory>/redis.sock`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is not installed (run tools/install-system-deps.sh)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    listen = ["--port", str(port)]
    url = f"redis://{host}:{port}/0"
    if tls:
        from support.cluster import Pki

        pki = Pki(directory / "pki")
        pair = pki.issue("redis", "127.0.0.1", server=True, ips=["127.0.0.1"])
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(pair.cert),
                  "--tls-key-file", str(pair.key), "--tls-ca-cert-file", str(pki.ca.cert),
                  "--tls-auth-clients", "no", "--unixsocket", str(directory / "redis.sock"),
                  "--unixsocketperm", "700"]  # fmt: skip
        url = f"rediss://{host}:{port}/0?ssl_ca_certs={pki.ca.cert}"
    log = directory / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                *listen,
                "--bind",
                "127.0.0.1" if host == "127.0.0.1" else f"127.0.0.1 {host}",
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes" if host == "127.0.0.1" else "no",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server("redis", url, port, process, directory)
    try:
        wait_port(port, process, log, host=host)
    except BaseException:
        server.stop()
        raise
    return server
