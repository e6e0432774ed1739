"""A fresh PostgreSQL database per test session (127.0.0.1:5432, trust auth, user postgres), and a
DAGSTER_HOME whose dagster.yaml is the production one (deploy/dagster-prod.yaml) pointed at it.

Import the fixtures into a test module: `from tests.pgdb import pg_database, prod_home  # noqa: F401`.
Set CURATION_TEST_PG_DSN to use another server (a libpq DSN without dbname).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PgDatabase:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    def env(self) -> dict[str, str]:
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_DB": self.dbname,
                "DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password}


def _admin_connect():
    psycopg2 = pytest.importorskip("psycopg2")
    dsn = os.environ.get("CURATION_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    try:
        conn = psycopg2.connect(dsn, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {dsn!r}: {exc}")
    conn.autocommit = True
    return conn, conn.get_dsn_parameters()


@pytest.fixture(scope="session")
def pg_database():
    conn, params = _admin_connect()
    name = f"curation_test_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PgDatabase(params.get("host", "127.0.0.1"), int(params.get("port", 5432)), params.get("user", "postgres"),
                         os.environ.get("PGPASSWORD", ""), name)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def prod_home(pg_database, tmp_path, monkeypatch) -> Path:
    """DAGSTER_HOME with deploy/dagster-prod.yaml as dagster.yaml; its env vars point at the test DB."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "deploy" / "dagster-prod.yaml", home / "dagster.yaml")
    for k, v in pg_database.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_DIR", str(tmp_path / "compute_logs"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
