"""Fixtures of the live pipeline's real servers on loopback: Debian's clickhouse-server and redis-server.

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
CLICKHOUSE_PASSWORD = "live-test-pw"  # a throwaway for the test server; must never show up in logs

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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a redis-server on loopback (no persistence), stopped by pid afterwards."""
    binary = _binary("redis-server")
    root = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = root / "redis.log"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(root), "--logfile", str(log), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(process, port, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process, 20)
