"""The code location through the `dagster` CLI, as an operator would drive it: validate the
definitions, then materialise raw_inventory for one registered demo shard."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.photo_corpus import build_photo_corpus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def cli_env(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATION_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), CURATION_DEPLOYMENT="local", CURATION_OUTPUT_ROOT=str(tmp_path / "outputs"),
               PYTHONPATH=str(ROOT))
    return env


def dagster(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dagster")
    return subprocess.run([str(exe), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_definitions_validate(cli_env):
    proc = dagster("definitions", "validate", "-m", "orchestration.definitions", env=cli_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "success" in (proc.stdout + proc.stderr).lower()

    # and it does fail on a broken location (so the check above means something)
    proc = dagster("definitions", "validate", "-m", "orchestration.no_such_module", env=cli_env)
    assert proc.returncode != 0


def test_materialise_raw_inventory_of_one_demo_shard(cli_env, tmp_path, monkeypatch):
    from curation.sources import list_source
    from partitions.shards import ShardRegistry

    src = tmp_path / "demo_corpus"
    written = build_photo_corpus(src)
    cli_env["CURATION_SOURCES"] = f"demo={src}"
    out = cli_env["CURATION_OUTPUT_ROOT"]

    # Register the shard the way the sensor does: manifest in the registry, then the dynamic partition.
    files, exhausted = list_source(str(src))
    assert exhausted
    (shard,) = ShardRegistry(out).register("demo", files, shard_size=1000)
    monkeypatch.setenv("DAGSTER_HOME", cli_env["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("shards", [shard.key])

    proc = dagster("asset", "materialize", "-m", "orchestration.definitions", "--select", "raw_inventory",
                   "--partition", shard.key, env=cli_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    inventory = pl.read_parquet(Path(out) / "raw_inventory" / f"{shard.key}.parquet")
    assert len(inventory) == len(written)
    with dg.DagsterInstance.get() as instance:
        ev = instance.get_latest_materialization_event(dg.AssetKey("raw_inventory"))
        assert ev is not None and ev.dagster_event.partition == shard.key
        assert ev.asset_materialization.metadata["dagster/row_count"].value == len(written)
        (run,) = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
        assert run.tags["dagster/partition"] == shard.key

    # An unregistered shard is refused, not silently created.
    proc = dagster("asset", "materialize", "-m", "orchestration.definitions", "--select", "raw_inventory",
                   "--partition", "demo-999999", env=cli_env)
    assert proc.returncode != 0
    assert "demo-999999" in proc.stdout + proc.stderr
