"""The daemon keeps the corpus-level assets fresh, for real: `dagster-daemon run` against a temporary
DAGSTER_HOME with the repo's dagster.yaml, the `curation_automation` sensor started the way an
operator does (`dagster sensor start`). A shard curated outside the daemon is followed by the
daemon's own runs of that shard's `semantic_duplicates` and of `curation_summary`, and nothing
for the shard that was not curated; a further tick with nothing new launches nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import dagster as dg
import pytest
from dagster._core.scheduler.instigation import TickStatus

from tests.browser import kill_group
from tests.conftest import arcade_sprites
from tests.integration.test_ui import BIN, ROOT, cli, kill_leftovers, start

pytestmark = pytest.mark.slow
SENSOR = "curation_automation"


def finished_ticks(instance) -> list:
    states = [s for s in instance.all_instigator_state() if s.name == SENSOR]
    if not states:
        return []
    ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id)
    return [t for t in ticks if t.status != TickStatus.STARTED]


def wait(what: str, ok, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; daemon log:\n{log.read_text()[-4000:]}")


def materialized(instance, asset: str, partition: str | None = None) -> bool:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1).records
    return bool(records)


def test_the_daemon_follows_a_new_shard_with_its_semantic_pass_and_the_summary(tmp_path, monkeypatch):
    from orchestration.definitions import build_definitions
    from orchestration.jobs import JOB_OF
    from resources.classifier import ClassifierSettings
    from resources.corpus import CorpusResource, StageSettings
    from resources.models import EmbedderResource

    home, src, out = tmp_path / "home", tmp_path / "src", tmp_path / "out"
    home.mkdir()
    src.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    for i, p in enumerate(arcade_sprites()[::25][:8]):
        shutil.copyfile(p, src / f"a{i:02d}{p.suffix}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATION_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), CURATION_DEPLOYMENT="local", CURATION_OUTPUT_ROOT=str(out),
               CURATION_SOURCES=f"d={src}", CURATION_FEWSHOT_URI="", CURATION_SHARD_SIZE="4",
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    reg = cli("register", env=env)  # creates the instance's storage and the two shards
    assert "2 shard(s) registered" in reg.stdout, reg.stdout
    keys = ["d-000001", "d-000002"]
    resources = {"corpus": CorpusResource(output_root=str(out), sources={"d": str(src)}, shard_size=4),
                 "settings": StageSettings(inventory_workers=1), "embedder": EmbedderResource(device="cpu"),
                 "classifier": ClassifierSettings(fewshot_uri="")}
    defs = build_definitions(resources)
    log = tmp_path / "daemon.log"
    daemon = None
    try:
        daemon = start([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, log)
        started = subprocess.run([str(BIN / "dagster"), "sensor", "start", SENSOR, "-w", "workspace.yaml"],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        with dg.DagsterInstance.get() as instance:
            wait("the sensor's first tick", lambda: finished_ticks(instance), 180, log)
            assert instance.get_runs_count() == 0
            result = defs.resolve_job_def(JOB_OF["curate"]).execute_in_process(instance=instance, partition_key=keys[0])
            assert result.success
            ours = {result.run_id}
            wait("the daemon's semantic pass and summary",
                 lambda: materialized(instance, "semantic_duplicates", keys[0])
                 and materialized(instance, "curation_summary"), 420, log)
            # a run reports SUCCESS after its last materialisation: wait for the daemon's runs to end
            wait("the daemon's runs to finish",
                 lambda: all(r.is_finished for r in instance.get_runs() if r.run_id not in ours), 120, log)
            runs = [r for r in instance.get_runs() if r.run_id not in ours]
            assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]
            launched = set().union(*(r.asset_selection or set() for r in runs))
            assert {k.to_user_string() for k in launched} <= {
                "semantic_duplicates", "semantic_index", "semantic_center", "curation_summary", "corpus_manifest"}, launched
            assert not materialized(instance, "semantic_duplicates", keys[1])  # shard 2 was never curated
            assert (out / "reports" / "corpus" / "report.html").exists()
            # nothing new: the next two ticks launch nothing
            n_ticks, n_runs = len(finished_ticks(instance)), instance.get_runs_count()
            wait("two more ticks", lambda: len(finished_ticks(instance)) >= n_ticks + 2, 150, log)
            assert instance.get_runs_count() == n_runs
    finally:
        kill_group(daemon, grace_s=15)
        leftovers = kill_leftovers(str(home))
    assert not leftovers, f"processes outlived the daemon's process group (killed now): {leftovers}"
