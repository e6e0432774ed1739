"""The code location against PostgreSQL with the production instance config (deploy/dagster-prod.yaml)
in a fresh database: storage, run queue limits and pools load as configured, one shard of a small
real-photo corpus materialises, a run that failed on a bad setting is re-executed from failure, and
the run history and materialisations read back from PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tests.pgdb import pg_database, prod_home  # noqa: F401  (fixtures)
from tests.photo_corpus import build_photo_corpus

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("raw_inventory", "dedup_clusters", "dedup_index", "curated_images")  # dedup_index: written by the dedup step
pytestmark = pytest.mark.timeout(600)


def test_production_instance_config_loads_on_postgres(prod_home):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        cfg = instance.get_concurrency_config()
        limits = cfg.run_queue_config.tag_concurrency_limits
        assert {"key": "dagster/backfill", "value": {"applyLimitPerUniqueValue": True}, "limit": 4} in limits
        assert any(lim["key"] == "curation/stage" for lim in limits)
        assert cfg.pool_config.pool_granularity.value == "op" and cfg.pool_config.default_pool_limit == 1
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        # the connection really goes to the fresh database
        assert os.environ["DAGSTER_PG_DB"] in instance.run_storage.postgres_url

    # The command the Helm hook runs sets the gpu pool in PostgreSQL.
    proc = subprocess.run([sys.executable, "-m", "dagster", "instance", "concurrency", "set", "gpu", "2"],
                          env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with dg.DagsterInstance.get() as instance:
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 2


def _recon_job():
    # The code location reads its settings (CURATION_OUTPUT_ROOT, ...) when it loads, as a code server
    # does at start-up; this test changed them, so load it afresh (the in-process executor runs the
    # job in this process, where an earlier test may have imported it with other settings).
    import importlib

    from dagster._core.definitions.reconstruct import ReconstructableRepository

    import orchestration.definitions

    importlib.reload(orchestration.definitions)
    repo = ReconstructableRepository.for_module("orchestration.definitions", "defs", working_directory=str(ROOT))
    return repo.get_reconstructable_job("curate_shard")


def _step_starts(instance, run_id) -> list[str]:
    return sorted(e.step_key for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))


def test_one_shard_fails_on_a_bad_setting_then_reexecutes_from_failure(prod_home, tmp_path, monkeypatch):
    from curation.sources import list_source
    from partitions.shards import ShardRegistry

    src, out = tmp_path / "corpus", tmp_path / "outputs"
    written = build_photo_corpus(src)
    monkeypatch.setenv("CURATION_OUTPUT_ROOT", str(out))
    monkeypatch.setenv("CURATION_SOURCES", f"demo={src}")
    files, _ = list_source(str(src))
    (shard,) = ShardRegistry(str(out)).register("demo", files, shard_size=100)
    assert shard.n_files == len(written)

    selection = [dg.AssetKey(s) for s in STAGES]
    execution: dict = {}
    # a bad value: the typed settings validate it when the run's resources are set up, before any
    # step runs (one line naming the setting, never retried); the fix is re-executed from failure
    bad = {**execution, "resources": {"settings": {"config": {"quality": {"photo_min_edge": 5.0}}}}}

    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("shards", [shard.key])
        first = dg.execute_job(_recon_job(), instance, run_config=bad, asset_selection=selection,
                               tags={"dagster/partition": shard.key, "curation/stage": "curate"},
                               raise_on_error=False)  # no `with`: its resources cannot be set up again
        assert not first.success
        first_id = first.run_id
        assert instance.get_run_by_id(first_id).status == dg.DagsterRunStatus.FAILURE
        init = instance.all_logs(first_id, of_type=dg.DagsterEventType.RESOURCE_INIT_FAILURE)
        assert init and "photo_min_edge" in init[0].dagster_event.event_specific_data.error.to_string()
        assert not instance.all_logs(first_id, of_type=dg.DagsterEventType.STEP_START)  # nothing ran
        assert not (out / "raw_inventory" / f"{shard.key}.parquet").exists()

        # Fix the setting and re-execute from failure.
        # (execute_job does not copy the parent's tags as the UI and the run-retry daemon do: pass them)
        options = dg.ReexecutionOptions.from_failure(first_id, instance)
        parent_tags = instance.get_run_by_id(first_id).tags
        tags = {k: parent_tags[k] for k in ("dagster/partition", "curation/stage")}
        with dg.execute_job(_recon_job(), instance, run_config=execution, reexecution_options=options,
                            tags=tags) as second:
            assert second.success
            second_id = second.run_id
        started = _step_starts(instance, second_id)
        assert {"raw_inventory", "dedup_clusters", "curated_images"} <= set(started), started
        run = instance.get_run_by_id(second_id)
        assert run.parent_run_id == first_id and run.root_run_id == first_id
        assert run.tags["dagster/partition"] == shard.key
        assert (out / "curated_images" / f"{shard.key}.parquet").exists()

        # History read back from PostgreSQL.
        records = instance.get_run_records(dg.RunsFilter(run_ids=[first_id, second_id]))
        assert {r.dagster_run.run_id: r.dagster_run.status for r in records} == {
            first_id: dg.DagsterRunStatus.FAILURE, second_id: dg.DagsterRunStatus.SUCCESS}
        for stage, run_id in (("raw_inventory", second_id), ("dedup_clusters", second_id), ("curated_images", second_id)):
            res = instance.fetch_materializations(dg.AssetKey(stage), limit=10)
            mats = [r for r in res.records if r.run_id in (first_id, second_id)]
            assert [(m.run_id, m.partition_key) for m in mats] == [(run_id, shard.key)], stage
            assert shard.key in instance.get_materialized_partitions(dg.AssetKey(stage))
        inv = instance.get_latest_materialization_event(dg.AssetKey("raw_inventory")).asset_materialization
        assert inv.metadata["dagster/row_count"].value == len(written)
        assert inv.metadata["errors"].value >= 1  # the truncated JPEG is accounted for, not dropped
        cur = instance.get_latest_materialization_event(dg.AssetKey("curated_images")).asset_materialization
        assert cur.metadata["kept"].value < len(written)  # the exact copy at least is not kept


def test_run_queue_limits_per_backfill_and_per_stage(prod_home):
    """The daemon's queue, one tick at a time, with the production limits and a launcher that only
    records what it was asked to start (launched runs stay in progress, so they keep counting)."""
    import yaml
    from dagster._core.test_utils import create_run_for_test, create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    cfg = yaml.safe_load((prod_home / "dagster.yaml").read_text())
    cfg["run_launcher"] = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
    (prod_home / "dagster.yaml").write_text(yaml.safe_dump(cfg))

    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("image_curation"), "__repository__"),
                             "curate_shard")
    with dg.DagsterInstance.get() as instance:
        def enqueue(n, **tags):
            return [create_run_for_test(instance, job_name="curate_shard", status=dg.DagsterRunStatus.QUEUED,
                                        remote_job_origin=origin, tags=tags).run_id for _ in range(n)]

        backfill_a = enqueue(6, **{"dagster/backfill": "bfa", "curation/stage": "curate"})
        backfill_b = enqueue(2, **{"dagster/backfill": "bfb", "curation/stage": "curate"})
        summary = enqueue(3, **{"curation/stage": "summary"})
        created = backfill_a + backfill_b + summary
        try:
            def tick():
                with create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as ctx:
                    list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(ctx))
                return {r.run_id for r in instance.run_launcher.queue()}

            launched = tick()
            assert len(launched & set(backfill_a)) == 4  # per backfill: 4
            assert launched & set(backfill_b) == set(backfill_b)
            assert len(launched & set(summary)) == 1  # the roll-up runs alone
            # new-shard runs from the sensor share the per-stage budget of 8 with the backfills
            sensor = enqueue(4, **{"curation/stage": "curate", "curation/shard": "x"})
            created += sensor
            launched = tick()
            assert len(launched & set(sensor)) == 2
            assert len(launched & set(backfill_a + backfill_b + sensor)) == 8
            queued = instance.get_runs(dg.RunsFilter(run_ids=created, statuses=[dg.DagsterRunStatus.QUEUED]))
            assert len(queued) == len(created) - len(launched)
        finally:
            for run_id in created:
                instance.delete_run(run_id)
