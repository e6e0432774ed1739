"""Nothing lost, nothing crashes: process kills, corrupt intermediates and concurrent writers,
against a real Dagster instance (a DAGSTER_HOME in tmp_path holding the repo's dagster.yaml).

* `test_sigkill_mid_inventory_and_mid_embedding_then_rerun` - the daemon-less CLI
  (`python -m orchestration.cli run`) is SIGKILLed (whole process group, inventory workers
  included) in the middle of shard 2's raw_inventory step, rerun and SIGKILLed again in the middle of
  shard 3's image_embeddings step (after >= 1 chunk was written), then rerun to completion. Every
  output equals an uninterrupted run's, completed chunks and completed shards are never rewritten, and
  the dead runs are failed with their `gpu` pool slots freed.
* `test_sigkill_mid_embedding_then_reexecute_from_failure` - the same kill on a run launched with
  `dg.execute_job`; the dead run is failed by `reap_dead_cli_runs` (freeing its `gpu` slot) and
  re-executed with `ReexecutionOptions.from_failure`: the finished steps do not run again.
* `test_corrupt_upstream_file_is_deleted_wiped_and_recomputed` - a truncated upstream Parquet fails
  the reading step with a Failure naming the file; the file is gone, the partition is wiped in the
  instance (so it shows as missing), and materialising the missing partitions restores the outputs.
* `test_two_concurrent_runs_of_one_partition_do_not_corrupt_the_output` - two processes materialise
  the same raw_inventory partition at once while the test keeps reading the file back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from tests.conftest import mnist_digits, write_real_images
from tests.photo_corpus import photo

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

SHARD_SIZE = 8
CHUNK_SIZE = 2  # embedding rows per resumable chunk (EMBEDDER_CHUNK_SIZE)
STAGES = ("raw_inventory", "dedup_clusters", "dedup_index", "curated_images", "image_embeddings",
          "image_classifications")
# Measured wall-clock times: the only columns that legitimately differ between two runs.
VOLATILE = {"decode_ms"}


# ------------------------------------------------------------------------------------------ corpus


def big_png(path: Path, side: int = 3000) -> None:
    """A real photo upscaled to side x side: several hundred ms of decoding + hashing per file, so
    that the inventory step of a shard of these is long enough to be killed in the middle."""
    img = photo("astronaut").convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    img.save(path, "PNG", compress_level=1)


def build_corpus(src: Path, n_big: int = SHARD_SIZE) -> None:
    """a/: SHARD_SIZE sprites (shard 1), b/: `n_big` large PNGs (shard 2, slow to inventory),
    c/: SHARD_SIZE other sprites (shard 3)."""
    write_real_images(src / "a", SHARD_SIZE, prefix="a")
    (src / "b").mkdir(parents=True)
    big_png(src / "b" / "big_00.png")
    for i in range(1, n_big):  # byte copies: dedup keeps one, the inventory decodes every one
        shutil.copyfile(src / "b" / "big_00.png", src / "b" / f"big_{i:02d}.png")
    write_real_images(src / "c", SHARD_SIZE, prefix="c", start=SHARD_SIZE)


def build_fewshot(dst: Path) -> None:
    X, y = mnist_digits(2000)
    for label in (0, 1):
        for i in np.flatnonzero(y == label)[:3]:
            (dst / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(X[i]).resize((64, 64)).save(dst / str(label) / f"{i}.png")


# ------------------------------------------------------------------------------------ processes


def cli_env(home: Path, out: Path, fewshot: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATION_", "DAGSTER_", "EMBEDDER_"))}
    env.update(DAGSTER_HOME=str(home), CURATION_DEPLOYMENT="local", CURATION_OUTPUT_ROOT=str(out),
               CURATION_FEWSHOT_URI=str(fewshot), EMBEDDER_CHUNK_SIZE=str(CHUNK_SIZE), EMBEDDER_DEVICE="cpu",
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


def start_cli(env: dict[str, str], src: Path, log: Path) -> subprocess.Popen:
    """`curate run` in its own session (process group = its pid), output to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "run", "--source", f"t={src}", "--shard-size", str(SHARD_SIZE),
         "--no-summary"],
        cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def run_cli(env: dict[str, str], src: Path, log: Path, timeout: float = 300) -> None:
    proc = start_cli(env, src, log)
    rc = proc.wait(timeout=timeout)
    assert rc == 0, log.read_text()[-4000:]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f and int(f[2]) == pgid and f[0] != "Z":
                pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        f = _stat_fields(pid)
        if f:
            total += (int(f[11]) + int(f[12])) / tick  # utime + stime
    return total


def wait_for(cond, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None,
             interval: float = 0.02):
    """Poll `cond()` until it returns something truthy; fail if `proc` exits first or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n"
                        + (log.read_text()[-4000:] if log else ""))
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}" + (f":\n{log.read_text()[-4000:]}" if log else ""))


def sigkill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI and every process of its group (inventory workers, forkserver), and wait
    until none of them is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    wait_for(lambda: not group_pids(proc.pid), "the killed process group to be gone", 30)


# ------------------------------------------------------------------------------------- instance


def open_instance(home: Path, monkeypatch) -> dg.DagsterInstance:
    """The instance at `home` as the CLI sees it (dagster.yaml reads DAGSTER_HOME)."""
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return dg.DagsterInstance.from_config(str(home))


def runs_of(instance: dg.DagsterInstance, shard: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": shard})))


def step_started(instance: dg.DagsterInstance, run_id: str, step: str) -> bool:
    return any(e.step_key == step for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START))


def step_succeeded(instance: dg.DagsterInstance, run_id: str, step: str) -> bool:
    return any(e.step_key == step for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (inode, mtime_ns)} of every file: an atomic rewrite changes the inode."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_mtime_ns)
    return out


def stage_frame(out: Path, stage: str, shard: str) -> pl.DataFrame:
    df = pl.read_parquet(out / stage / f"{shard}.parquet")
    return df.drop([c for c in df.columns if c in VOLATILE])


def assert_same_outputs(out: Path, ref: Path, shards: list[str]) -> None:
    for shard in shards:
        for stage in STAGES:
            got, want = stage_frame(out, stage, shard), stage_frame(ref, stage, shard)
            assert got.equals(want), f"{stage}[{shard}] differs from the uninterrupted run"
        manifest = pl.read_parquet(out / "registry" / "manifests" / f"{shard}.parquet")
        inventory = pl.read_parquet(out / "raw_inventory" / f"{shard}.parquet")
        # nothing lost: exactly one inventory row per manifest entry
        assert inventory["image_id"].sort().to_list() == manifest["image_id"].sort().to_list()


# ---------------------------------------------------------------------------------------- tests


def test_sigkill_mid_inventory_and_mid_embedding_then_rerun(tmp_path, monkeypatch):
    src, fewshot = tmp_path / "src", tmp_path / "fewshot"
    build_corpus(src)
    build_fewshot(fewshot)
    s1, s2, s3 = "t-000001", "t-000002", "t-000003"

    # The uninterrupted reference, in its own instance and output root.
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    run_cli(cli_env(tmp_path / "home_ref", ref, fewshot), src, tmp_path / "ref.log")
    t_ref = time.monotonic() - t0
    with open_instance(tmp_path / "home_ref", monkeypatch) as ref_instance:
        assert ref_instance.get_materialized_partitions(dg.AssetKey("shard_report")) == {s1, s2, s3}

    home, out, log = tmp_path / "home", tmp_path / "out", tmp_path / "cli.log"
    env = cli_env(home, out, fewshot)
    instance = open_instance(home, monkeypatch)

    # --- kill 1: shard 1 done, shard 2 in the middle of raw_inventory --------------------------------
    proc = start_cli(env, src, log)

    def inventory_mid_way():
        runs = runs_of(instance, s2)
        if not runs or not step_started(instance, runs[0].run_id, "raw_inventory"):
            return False
        # the inventory workers (children in the CLI's process group) have done real decoding work
        workers = [p for p in group_pids(proc.pid) if p != proc.pid]
        return workers and cpu_seconds(workers) >= 1.5

    wait_for(inventory_mid_way, "shard 2's inventory to be under way", 240, proc, log)
    sigkill_group(proc)
    (killed_inv,) = runs_of(instance, s2)
    assert killed_inv.status == dg.DagsterRunStatus.STARTED  # nobody told the instance
    assert not step_succeeded(instance, killed_inv.run_id, "raw_inventory")
    assert not (out / "raw_inventory" / f"{s2}.parquet").exists()  # killed mid-way, nothing half-written
    assert not list((out / "raw_inventory").glob(f".{s2}*"))
    assert instance.get_materialized_partitions(dg.AssetKey("shard_report")) == {s1}
    shard1_files = {k: v for k, v in snapshot(out).items() if s1 in k}
    assert any("image_embeddings_chunks" in k for k in shard1_files)

    # --- kill 2: rerun; shard 2 completes, shard 3 killed after >= 1 embedding chunk ---------------------
    chunk_dir = out / "image_embeddings_chunks" / s3
    proc = start_cli(env, src, log)
    wait_for(lambda: list(chunk_dir.glob("chunk-*.parquet")), "a first embedding chunk of shard 3", 240, proc, log)
    sigkill_group(proc)
    chunks_done = {k: v for k, v in snapshot(chunk_dir).items() if k.startswith("chunk-")}
    n_chunks = -(-pl.read_parquet(ref / "curated_images" / f"{s3}.parquet")["keep"].sum() // CHUNK_SIZE)
    assert 1 <= len(chunks_done) < n_chunks, (len(chunks_done), n_chunks)  # really mid-way
    assert not (out / "image_embeddings" / f"{s3}.parquet").exists()
    killed_emb = next(r for r in runs_of(instance, s3))
    assert killed_emb.status == dg.DagsterRunStatus.STARTED
    assert step_started(instance, killed_emb.run_id, "image_embeddings")
    assert not step_succeeded(instance, killed_emb.run_id, "image_embeddings")
    assert instance.get_run_by_id(killed_inv.run_id).status == dg.DagsterRunStatus.FAILURE  # reaped by run 2
    gpu = instance.event_log_storage.get_concurrency_info("gpu")
    # the killed embedding step still holds the `gpu` pool's only slot: every later GPU step would wait
    assert {s.run_id for s in gpu.claimed_slots} == {killed_emb.run_id}
    shard2_files = {k: v for k, v in snapshot(out).items() if s2 in k}

    # --- the final rerun completes everything ------------------------------------------------------
    t0 = time.monotonic()
    run_cli(env, src, log)
    t_rerun = time.monotonic() - t0
    assert "marked 1 run(s) of dead CLI processes failed and freed their pool slots" in log.read_text()

    assert_same_outputs(out, ref, [s1, s2, s3])
    after = snapshot(out)
    # completed embedding chunks were reused, not recomputed (an atomic rewrite changes the inode)
    assert {k: after[f"image_embeddings_chunks/{s3}/{k}"] for k in chunks_done} == chunks_done
    # completed shards were not recomputed: their files untouched and no new run for them
    assert {k: after[k] for k in shard1_files} == shard1_files
    assert {k: after[k] for k in shard2_files} == shard2_files
    assert len(runs_of(instance, s1)) == 1 and len(runs_of(instance, s2)) == 2 and len(runs_of(instance, s3)) == 2
    assert instance.get_materialized_partitions(dg.AssetKey("shard_report")) == {s1, s2, s3}

    # the dead runs are failed with the reason, and hold no pool slot
    for run_id in (killed_inv.run_id, killed_emb.run_id):
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert failure and "is gone (killed?)" in failure[-1].message
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    statuses = [r.status for r in instance.get_runs()]
    shard_statuses = [r.status for r in instance.get_runs() if "curation/shard" in r.tags]  # not the probe's run
    assert shard_statuses.count(dg.DagsterRunStatus.SUCCESS) == 3 and dg.DagsterRunStatus.STARTED not in statuses
    print(f"\nreference run {t_ref:.1f} s; final rerun {t_rerun:.1f} s; chunks reused {len(chunks_done)}/{n_chunks}; "
          "the killed run's gpu slot was freed")


JOB_DRIVER = """
import os, socket, sys
import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

repo = ReconstructableRepository.for_module("orchestration.definitions", "defs", working_directory=os.getcwd())
job = repo.get_reconstructable_job("curate_shard")
# tagged like `curate run`'s runs, so that reap_dead_cli_runs fails it if this process dies
tags = {"curation/launched_by": "cli", "curation/cli_pid": str(os.getpid()), "curation/cli_host": socket.gethostname()}
with dg.DagsterInstance.get() as instance:
    if sys.argv[1] == "run":
        options = None
        tags["dagster/partition"] = sys.argv[2]
    else:
        options = dg.ReexecutionOptions.from_failure(sys.argv[2], instance)
        # tags given here replace the parent's: keep the partition, or the steps run unpartitioned
        tags["dagster/partition"] = instance.get_run_by_id(sys.argv[2]).tags["dagster/partition"]
    with dg.execute_job(job, instance, tags=tags, reexecution_options=options) as result:
        print("RUN_ID", result.run_id, flush=True)
        sys.exit(0 if result.success else 1)
"""


def start_job(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", JOB_DRIVER, *args], cwd=ROOT, env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_sigkill_mid_embedding_then_reexecute_from_failure(tmp_path, monkeypatch):
    """The launched-run path: `dg.execute_job` on the reconstructable job, SIGKILLed after the first
    embedding chunk, then `ReexecutionOptions.from_failure`: only the unfinished steps run again."""
    from orchestration.cli import reap_dead_cli_runs
    from partitions.discovery import discover_all
    from partitions.shards import SHARDS, ShardRegistry

    src, fewshot = tmp_path / "src", tmp_path / "fewshot"
    write_real_images(src, 8)
    build_fewshot(fewshot)
    outs = {}
    for name in ("ref", "out"):
        home, out = tmp_path / f"home_{name}", tmp_path / name
        env = cli_env(home, out, fewshot)
        env["CURATION_SOURCES"] = f"t={src}"
        (shard,) = [s.key for s in discover_all(ShardRegistry(str(out)), "t", str(src), shard_size=100)]
        instance = open_instance(home, monkeypatch)
        instance.add_dynamic_partitions(SHARDS.name, [shard])
        outs[name] = (env, home, out, instance)

    env, home, ref, _ = outs["ref"]
    assert start_job(env, tmp_path / "ref.log", "run", shard).wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]

    env, home, out, instance = outs["out"]
    log = tmp_path / "job.log"
    chunk_dir = out / "image_embeddings_chunks" / shard
    proc = start_job(env, log, "run", shard)
    wait_for(lambda: list(chunk_dir.glob("chunk-*.parquet")), "a first embedding chunk", 240, proc, log)
    sigkill_group(proc)
    (killed,) = instance.get_runs()
    chunks_done = {k: v for k, v in snapshot(chunk_dir).items() if k.startswith("chunk-")}
    assert 1 <= len(chunks_done) < 4 and not (out / "image_embeddings" / f"{shard}.parquet").exists()
    assert {s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots} == {killed.run_id}
    upstream = {k: v for k, v in snapshot(out).items() if k.split("/")[0] in ("raw_inventory", "dedup_clusters",
                                                                               "dedup_index", "curated_images")}
    assert len(upstream) == 4

    # from_failure needs the parent run to be finished: the reaper fails it and frees its slot
    assert reap_dead_cli_runs(instance) == [killed.run_id]
    assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []

    assert start_job(env, log, "reexecute", killed.run_id).wait(timeout=300) == 0, log.read_text()[-3000:]
    runs = instance.get_runs()
    assert len(runs) == 2
    rerun = next(r for r in runs if r.run_id != killed.run_id)
    assert rerun.status == dg.DagsterRunStatus.SUCCESS and rerun.parent_run_id == killed.run_id
    started = {e.step_key for e in instance.all_logs(rerun.run_id, of_type=dg.DagsterEventType.STEP_START)}
    # only what had not finished ran again: embeddings and everything after them
    assert "image_embeddings" in started and "shard_report" in started
    assert not started & {"raw_inventory", "dedup_clusters", "curated_images"}, started
    after = snapshot(out)
    assert {k: after[k] for k in upstream} == upstream  # completed steps' outputs untouched
    assert {k: after[f"image_embeddings_chunks/{shard}/{k}"] for k in chunks_done} == chunks_done
    for stage in STAGES:
        assert stage_frame(out, stage, shard).equals(stage_frame(ref, stage, shard)), stage
    assert instance.get_materialized_partitions(dg.AssetKey("shard_report")) == {shard}


def asset_def(key: str) -> dg.AssetsDefinition:
    """The asset as its module defines it (the Definitions' copy has its resources bound already)."""
    from assets import classifications, dedup, embeddings, inventory, quality

    for module in (inventory, dedup, quality, embeddings, classifications):
        if hasattr(module, key):
            return getattr(module, key)
    raise KeyError(key)


def _materialize(instance, keys: list[str], shard: str, resources: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset_def(k) for k in keys], partition_key=shard, instance=instance,
                          resources=resources, raise_on_error=False)


@pytest.mark.parametrize("corrupt, reader", [("raw_inventory", "dedup_clusters"),
                                             ("dedup_clusters", "curated_images")])
def test_corrupt_upstream_file_is_deleted_wiped_and_recomputed(tmp_path, monkeypatch, corrupt, reader):
    from dagster._core.storage.partition_status_cache import AssetPartitionStatus

    from orchestration.cli import shards_done
    from partitions.discovery import discover_all
    from partitions.shards import SHARDS
    from resources.corpus import CorpusResource, StageSettings

    src, out, home = tmp_path / "src", tmp_path / "out", tmp_path / "home"
    write_real_images(src, 8)
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    corpus = CorpusResource(output_root=str(out), sources={"t": str(src)}, shard_size=100)
    resources = {"corpus": corpus, "settings": StageSettings(inventory_workers=1)}
    (shard,) = [s.key for s in discover_all(corpus.registry(), "t", str(src), shard_size=100)]
    stages = ["raw_inventory", "dedup_clusters", "curated_images"]

    with open_instance(home, monkeypatch) as instance:
        instance.add_dynamic_partitions(SHARDS.name, [shard])
        assert _materialize(instance, stages, shard, resources).success
        good = {s: stage_frame(out, s, shard) for s in stages}
        assert shards_done(instance, [shard], stages) == {shard}

        path = out / corrupt / f"{shard}.parquet"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # truncated: the Parquet footer is gone

        res = _materialize(instance, [reader], shard, resources)
        assert not res.success
        (failure,) = [e for e in res.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        message = failure.step_failure_data.user_failure_data.description
        assert str(path) in message and "will be recomputed" in message and shard in message
        # not retried (the input is gone until the upstream partition is recomputed)
        assert not [e for e in res.all_events if e.event_type == dg.DagsterEventType.STEP_RESTARTED]
        assert not path.exists()  # never read silently again
        assert shards_done(instance, [shard], stages) == set()  # `curate run` will redo this shard
        # the instance no longer counts the corrupt partition as materialised: Dagster OSS's event log
        # cannot wipe one partition, so it is recorded as FAILED (what "backfill failed and missing" selects)
        status = instance.get_status_by_partition(dg.AssetKey(corrupt), [shard], SHARDS)
        assert status == {shard: AssetPartitionStatus.FAILED}, status
        planned = [e.dagster_event.event_specific_data for e in
                   instance.all_logs(res.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)]
        assert [(p.asset_key, p.partition) for p in planned if p.asset_key == dg.AssetKey(corrupt)] == [
            (dg.AssetKey(corrupt), shard)]
        logged = [e.user_message for e in instance.all_logs(res.run_id) if e.level >= 40 and not e.dagster_event]
        assert any(str(path) in m for m in logged), logged

        # what a backfill of failed and missing partitions does: recompute it and everything downstream
        statuses = instance.get_status_by_partition(dg.AssetKey(corrupt), instance.get_dynamic_partitions(SHARDS.name),
                                                    SHARDS)
        todo = {k for k, st in statuses.items() if st in (None, AssetPartitionStatus.FAILED)}
        assert todo == {shard}
        assert _materialize(instance, stages[stages.index(corrupt):], shard, resources).success
        for s in stages:
            assert stage_frame(out, s, shard).equals(good[s]), s
        assert instance.get_status_by_partition(dg.AssetKey(corrupt), [shard], SHARDS) == {
            shard: AssetPartitionStatus.MATERIALIZED}
        assert shards_done(instance, [shard], stages) == {shard}


DRIVER = """
import sys
import dagster as dg
from assets.inventory import raw_inventory
from resources.corpus import CorpusResource, StageSettings
with dg.DagsterInstance.get() as instance:
    res = dg.materialize([raw_inventory], partition_key=sys.argv[1], instance=instance,
                         resources={"corpus": CorpusResource(), "settings": StageSettings(inventory_workers=1)})
    sys.exit(0 if res.success else 1)
"""


def test_two_concurrent_runs_of_one_partition_do_not_corrupt_the_output(tmp_path, monkeypatch):
    from partitions.discovery import discover_all
    from partitions.shards import SHARDS
    from resources.corpus import CorpusResource

    src, out, home = tmp_path / "src", tmp_path / "out", tmp_path / "home"
    write_real_images(src / "a", 6)
    (src / "b").mkdir(parents=True)
    big_png(src / "b" / "big_0.png", side=2000)
    for i in range(1, 4):
        shutil.copyfile(src / "b" / "big_0.png", src / "b" / f"big_{i}.png")
    fewshot = tmp_path / "fewshot"
    env = cli_env(home, out, fewshot)
    corpus = CorpusResource(output_root=str(out), sources={"t": str(src)}, shard_size=100)
    (shard,) = [s.key for s in discover_all(corpus.registry(), "t", str(src), shard_size=100)]
    with open_instance(home, monkeypatch) as instance:
        instance.add_dynamic_partitions(SHARDS.name, [shard])
    env["CURATION_SOURCES"] = f"t={src}"

    target = out / "raw_inventory" / f"{shard}.parquet"
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, shard], cwd=ROOT, env=env, stdout=open(lg, "wb"),
                              stderr=subprocess.STDOUT) for lg in logs]
    reads = 0
    while any(p.poll() is None for p in procs):  # read back continuously while both write
        if target.exists():
            pl.read_parquet(target)  # a reader never sees a half-written file
            reads += 1
        time.sleep(0.01)
    for p, lg in zip(procs, logs):
        assert p.returncode == 0, lg.read_text()[-3000:]
    concurrent = stage_frame(out, "raw_inventory", shard)
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left

    with open_instance(home, monkeypatch) as instance:
        mats = instance.fetch_materializations(dg.AssetKey("raw_inventory"), limit=10).records
        assert len(mats) == 2 and {m.partition_key for m in mats} == {shard}
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        # the two runs really overlapped
        spans = []
        for r in runs:
            st = instance.get_run_stats(r.run_id)
            spans.append((st.start_time, st.end_time))
        (a0, a1), (b0, b1) = sorted(spans)
        assert b0 < a1, "the two runs did not overlap"

    # equals a single run in a fresh output root and instance
    from resources.corpus import StageSettings

    single = tmp_path / "single"
    shutil.copytree(out / "registry", single / "registry")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, [shard])
        assert dg.materialize([asset_def("raw_inventory")], partition_key=shard, instance=instance,
                              resources={"corpus": CorpusResource(output_root=str(single), sources={"t": str(src)}),
                                         "settings": StageSettings(inventory_workers=1)}).success
    assert concurrent.equals(stage_frame(single, "raw_inventory", shard))
    assert concurrent.height == 10 and concurrent["error_code"].is_null().all()
    print(f"\nread the output back {reads} times while two runs wrote it")
