"""Fixtures of the live pipeline's real servers on loopback: Debian's clickhouse-server and redis-server, and
the suite-wide check that no log line shows their passwords.

Each server gets its own config in a temp folder (free ports, 127.0.0.1 only), is started once per session
and stopped by its pid. A missing binary fails the test with the command that installs it (`make servers`),
never a silent skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nfc.embedded_mongo import free_port
from nfc.processes import stop_process

CLICKHOUSE_USER = "nfc"
# throwaway passwords of the test servers, holding every character that ends a URI's authority or splits its
# user info ('/', '?', '#', '@', ':', '%'): connecting proves the URI parsing, and none may show up in a log
CLICKHOUSE_PASSWORD = "live/te?st#pw@1:%"
REDIS_PASSWORD = "redis/pw?x#y@z:2%"
MONGO_PASSWORD = "mongo/pw?x#y@z:3%"
SUITE_SECRETS = (CLICKHOUSE_PASSWORD, REDIS_PASSWORD, MONGO_PASSWORD)

_CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/server.err.log</errorlog></logger>
  <tcp_port>{tcp_port}</tcp_port>
  <http_port>{http_port}</http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <user_files_path>{root}/user_files/</user_files_path>
  <format_schema_path>{root}/format_schemas/</format_schema_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>16</max_concurrent_queries>
</yandex>
"""

_CLICKHOUSE_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>1000000000</max_memory_usage></default></profiles>
  <users>
    <{user}>
      <password>{password}</password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </{user}>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test of the suite: no log record it made shows a test server's password (the servers' and
    subprocesses' own logs are checked by the tests that read them)."""
    yield
    leaked = [secret for secret in SUITE_SECRETS if secret in caplog.text]
    assert not leaked, f"a log line shows the password(s) {leaked}"


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed; install it with `make servers` "
                    f"(apt-get install -y clickhouse-server redis-server)", pytrace=False)
    return path


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not listen on port {port} within {timeout_s:.0f} s; see {log}")


@dataclass(frozen=True)
class ClickHouseServer:
    port: int
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"clickhouse://{self.user}:{self.password}@127.0.0.1:{self.port}/default"


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """A clickhouse-server (Debian's 18.16) on loopback with its own config, stopped by pid afterwards."""
    binary = _binary("clickhouse-server")
    root = tmp_path_factory.mktemp("clickhouse")
    tcp_port, http_port = free_port(), free_port()
    (root / "config.xml").write_text(_CLICKHOUSE_CONFIG.format(root=root, tcp_port=tcp_port, http_port=http_port))
    (root / "users.xml").write_text(_CLICKHOUSE_USERS.format(user=CLICKHOUSE_USER, password=CLICKHOUSE_PASSWORD))
    log = root / "server.err.log"
    process = subprocess.Popen([binary, f"--config-file={root / 'config.xml'}"], cwd=root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(process, tcp_port, log)
        yield ClickHouseServer(tcp_port, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD)
    finally:
        stop_process(process, 20)


def _redis_server(root: Path, password: str | None) -> Iterator[int]:
    """A redis-server on loopback (no persistence; `password` required when given); yields its port."""
    binary = _binary("redis-server")
    port = free_port()
    log = root / "redis.log"
    auth = ["--requirepass", password] if password else []
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(root), "--logfile", str(log), "--daemonize", "no", *auth],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(process, port, log)
        yield port
    finally:
        stop_process(process, 20)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a redis-server on loopback (no persistence, no password), stopped by pid afterwards."""
    for port in _redis_server(tmp_path_factory.mktemp("redis"), None):
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_password_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a redis-server that requires REDIS_PASSWORD, written unescaped as an operator would."""
    for port in _redis_server(tmp_path_factory.mktemp("redis-auth"), REDIS_PASSWORD):
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
