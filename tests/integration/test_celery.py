"""The several-machines path for real, on loopback: a private Redis broker, Celery workers on the
`cpu` and `gpu` queues (separate processes, as on separate hosts), the Postgres instance, and runs
launched with `dagster job execute` (CURATION_DEPLOYMENT=celery), several shards per run as backfills
do. The cluster is started once for the module and stopped at its end."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import polars as pl
import pytest

from tests.celery_cluster import (
    Cluster,
    step_intervals,
    step_success_counts,
    step_workers,
)
from tests.conftest import write_real_images
from tests.pgdb import pg_database  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
SHARD_SIZE = 3
VISIBILITY_TIMEOUT_S = 60  # above the longest step here (a cold model load on a busy CI machine)
STAGES = ("raw_inventory", "dedup_clusters", "curated_images", "image_embeddings", "image_classifications")

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)


def run_config(output_root: Path | None = None) -> dict:
    resources = {"settings": {"config": {"inventory_workers": 1}}, "embedder": {"config": {"device": "cpu"}},
                 "classifier": {"config": {"fewshot_uri": ""}}}
    if output_root is not None:
        resources["corpus"] = {"config": {"output_root": str(output_root)}}
    return {"resources": resources}


@pytest.fixture(scope="module")
def cluster(pg_database, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("celery")
    home = work / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "deploy" / "dagster-prod.yaml", home / "dagster.yaml")
    src = work / "src"
    write_real_images(src, 6 * SHARD_SIZE, prefix="sprite")
    env = {**pg_database.env(), "DAGSTER_HOME": str(home), "DAGSTER_COMPUTE_LOG_DIR": str(work / "compute_logs"),
           "CURATION_DEPLOYMENT": "celery", "CURATION_OUTPUT_ROOT": str(work / "out"),
           "CURATION_SOURCES": f"r={src}", "CURATION_SHARD_SIZE": str(SHARD_SIZE),
           "CURATION_CELERY_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S)}
    cl = Cluster(work, env)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setenv("CURATION_CELERY_BROKER", cl.broker)
        try:
            cl.start_broker()
            for name, queue in (("cpu-a", "cpu"), ("cpu-b", "cpu"), ("gpu-a", "gpu")):
                cl.start_worker(name, queue)
            yield cl, src, work
        finally:
            cl.close()


def _instance():
    import dagster as dg

    return dg.DagsterInstance.get()


def _register(src: Path, output_root: Path) -> list[str]:
    from partitions.discovery import discover_all
    from resources.corpus import CorpusResource

    corpus = CorpusResource(output_root=str(output_root), sources={"r": str(src)}, shard_size=SHARD_SIZE)
    keys = [s.key for s in discover_all(corpus.registry(), "r", str(src), shard_size=SHARD_SIZE)]
    with _instance() as instance:
        instance.add_dynamic_partitions("shards", [k for k in keys if not instance.has_dynamic_partition("shards", k)])
    return keys


def _run_of(instance, tag: str):
    import dagster as dg

    runs = instance.get_runs(filters=dg.RunsFilter(tags={"curation/test-run": tag}))
    assert len(runs) == 1, (tag, runs)
    return runs[0]


def _wait(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [p.wait(max(1.0, deadline - time.monotonic())) for p in procs]


def _host(worker: str) -> str:
    return worker.split("@")[0]


def _stage_frames(out: Path, keys: list[str]) -> dict[tuple[str, str], pl.DataFrame]:
    """Every stage's table per shard, less the per-image decode timing (the only clock in them)."""
    frames = {(s, k): pl.read_parquet(out / s / f"{k}.parquet") for s in STAGES for k in keys}
    return {name: df.drop("decode_ms", strict=False) for name, df in frames.items()}


@pytest.fixture(scope="module")
def backfill(cluster):
    """A 6-shard backfill, as the backfill policy cuts it (two shards per run, three runs at once),
    with the broker restarted while its steps are queued and running."""
    cl, src, work = cluster
    keys = _register(src, work / "out")
    assert len(keys) == 6
    procs = [cl.launch(keys[i:i + 2], run_config(), f"bf{i}") for i in range(0, 6, 2)]
    with _instance() as instance:
        deadline = time.monotonic() + 120
        while not any(step_success_counts(instance, r.run_id) for r in instance.get_runs()):
            assert time.monotonic() < deadline, "no step finished within 120 s"
            assert all(p.poll() is None for p in procs), "a run ended before any step finished"
            time.sleep(0.5)
    cl.restart_broker(down_s=3.0)
    codes = _wait(procs, 300)
    assert codes == [0, 0, 0], [(work / f"run-bf{i}.log").read_text()[-2000:] for i in (0, 2, 4)]
    return keys


def _report_summary(out: Path, key: str) -> dict:
    """The shard report's summary less its clocks and its own path."""
    summary = json.loads((out / "reports" / "shards" / key / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in ("generated_at", "timings", "report")}


def test_backfill_spreads_over_workers_gpu_steps_only_on_gpu_and_survives_a_broker_restart(cluster, backfill):
    import dagster as dg

    work = cluster[2]
    keys = backfill
    with _instance() as instance:
        runs = [_run_of(instance, f"bf{i}") for i in range(0, 6, 2)]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        mats = instance.fetch_materializations(dg.AssetKey("shard_report"), limit=100).records
        assert sorted(m.partition_key for m in mats) == keys
        seen: dict[str, set[str]] = {}
        for r in runs:
            for step, workers in step_workers(instance, r.run_id).items():
                seen.setdefault(step, set()).update(_host(w) for w in workers)
        assert seen["image_embeddings"] == {"gpu-a"}
        cpu_hosts = set().union(*(hosts for step, hosts in seen.items() if step != "image_embeddings"))
        assert cpu_hosts == {"cpu-a", "cpu-b"}  # CPU steps on both CPU workers, never on the GPU one
        # the `gpu` pool (limit 1) holds across the three runs: their GPU steps never overlap
        spans = sorted(step_intervals(instance, [r.run_id for r in runs], "image_embeddings"))
        assert len(spans) == 3
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    for k in keys:
        assert (work / "out" / "reports" / "shards" / k / "report.html").exists()


def test_a_worker_killed_mid_step_the_step_is_redelivered_and_outputs_match_an_uninterrupted_run(cluster, backfill):
    import dagster as dg

    cl, src, work = cluster
    out = work / "out_killed"
    keys = _register(src, out)[:2]
    target = "shard_report"  # the longest warm step (seconds): a kill lands mid-step
    proc = cl.launch(keys, run_config(out), "kill")
    killed = None
    with _instance() as instance:
        deadline = time.monotonic() + 240
        while killed is None:
            assert time.monotonic() < deadline and proc.poll() is None, (work / "run-kill.log").read_text()[-2000:]
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"curation/test-run": "kill"}))
            workers = step_workers(instance, runs[0].run_id).get(target, []) if runs else []
            if workers:
                killed = _host(workers[0])
                assert not step_success_counts(instance, runs[0].run_id)[target]
                cl.kill_worker(killed)  # SIGKILL the whole worker mid-step
            time.sleep(0.2)
        assert proc.wait(300) == 0, (work / "run-kill.log").read_text()[-3000:]
        run = _run_of(instance, "kill")
        assert run.status == dg.DagsterRunStatus.SUCCESS
        deliveries = step_workers(instance, run.run_id)
        successes = step_success_counts(instance, run.run_id)
    # the killed step ran again on the other CPU worker; every other step ran exactly once
    assert [_host(w) for w in deliveries[target]] == [killed, ({"cpu-a", "cpu-b"} - {killed}).pop()]
    assert all(len(ws) == 1 for step, ws in deliveries.items() if step != target), deliveries
    assert all(n == 1 for n in successes.values()) and len(successes) == len(deliveries), successes
    cl.start_worker(killed, "cpu")  # back to three workers for the next test

    # the backfill's first run covered the same shards with one delivery per step: same outputs
    with _instance() as instance:
        ref_deliveries = step_workers(instance, _run_of(instance, "bf0").run_id)
    assert set(ref_deliveries) == set(deliveries) and all(len(ws) == 1 for ws in ref_deliveries.values())
    assert keys == backfill[:2]
    got, want = _stage_frames(out, keys), _stage_frames(work / "out", keys)
    for name in got:
        assert got[name].equals(want[name]), name
    for k in keys:
        assert _report_summary(out, k) == _report_summary(work / "out", k), k


def test_a_worker_with_another_code_version_refuses_the_step_and_says_so(cluster):
    import dagster as dg

    cl, src, work = cluster
    out = work / "out_stale"
    keys = _register(src, out)[:1]
    cl.stop_worker("gpu-a")
    cl.start_worker("gpu-stale", "gpu", extra_env={"CURATION_CODE_VERSION": "stale-0000"})
    try:
        proc = cl.launch(keys, run_config(out), "stale")
        assert proc.wait(240) != 0
    finally:
        cl.stop_worker("gpu-stale")
        cl.start_worker("gpu-a", "gpu")
    with _instance() as instance:
        run = _run_of(instance, "stale")
        assert run.status == dg.DagsterRunStatus.FAILURE
        events = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
        refusals = [e.event_log_entry.dagster_event.message for e in events
                    if "refused step image_embeddings" in (e.event_log_entry.dagster_event.message or "")]
        assert refusals and all("gpu-stale@" in m and "stale-0000" in m for m in refusals), refusals
        assert "image_embeddings" not in step_workers(instance, run.run_id)  # never executed
        assert not step_success_counts(instance, run.run_id)["image_embeddings"]
    assert not (out / "image_embeddings" / f"{keys[0]}.parquet").exists()
    assert (out / "curated_images" / f"{keys[0]}.parquet").exists()  # the CPU steps before it ran
