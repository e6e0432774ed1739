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


# --- `curate` (orchestration/cli.py): settings checked once, one line, exit status 2 -----------------


def test_bad_env_does_not_stop_the_code_location_loading(cli_env):
    """CURATION_SHARD_SIZE=abc used to take the code location down with a bare ValueError; now it
    loads and every run or tick reports the setting (tests/unit/test_settings.py)."""
    proc = dagster("definitions", "validate", "-m", "orchestration.definitions",
                   env={**cli_env, "CURATION_SHARD_SIZE": "abc", "EMBEDDER_BATCH_SIZE": "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture
def curate_env(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    for k in list(os.environ):
        if k.startswith(("CURATION_", "DAGSTER_", "EMBEDDER_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("CURATION_OUTPUT_ROOT", str(tmp_path / "outputs"))
    src = tmp_path / "src"
    build_photo_corpus(src)
    return monkeypatch, src


def curate(capsys, *args: str) -> tuple[int, str, str]:
    from orchestration import cli

    rc = cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("case", ["zero", "negative", "non-numeric", "env-zero", "env-non-numeric", "missing-folder",
                                  "not-a-folder", "unreadable-folder", "bad-s3-uri", "bad-source-name",
                                  "unknown-model", "unknown-kind", "no-dagster-home", "bad-dagster-home"])
def test_bad_setting_is_one_line_and_exit_2(case, curate_env, capsys, tmp_path):
    mp, src = curate_env
    args = ["run", "--source", f"t={src}"]
    expect = {
        "zero": (["--shard-size", "0"], "--shard-size='0': a whole number >= 1"),
        "negative": (["--shard-size", "-3"], "--shard-size='-3': a whole number >= 1"),
        "non-numeric": (["--shard-size", "abc"], "--shard-size='abc': a whole number >= 1"),
        "env-zero": ([], "CURATION_SHARD_SIZE='0': a whole number >= 1"),
        "env-non-numeric": ([], "CURATION_SHARD_SIZE='abc': a whole number >= 1"),
        "missing-folder": ([], f"--source[gone]='{tmp_path / 'nope'}': an existing folder"),
        "not-a-folder": ([], "--source[file]="),
        "unreadable-folder": ([], f"--source[t]='{src}': a folder this process can list (Permission denied)"),
        "bad-s3-uri": ([], "--source='s3:/bucket/raw': a local folder or s3://bucket/prefix with a valid S3 bucket"),
        "bad-source-name": ([], "--source='Cam': a source name"),
        "unknown-model": ([], "EMBEDDER_MODEL='ViT-Nope': an open_clip architecture"),
        "unknown-kind": ([], "EMBEDDER_KIND='resnet': one of 'open_clip', 'efficientnet_lite0'"),
        "no-dagster-home": ([], "DAGSTER_HOME='': a folder holding dagster.yaml"),
        "bad-dagster-home": ([], f"DAGSTER_HOME='{tmp_path / 'nohome'}': an existing folder"),
    }
    extra, line = expect[case]
    if case == "env-zero":
        mp.setenv("CURATION_SHARD_SIZE", "0")
    elif case == "env-non-numeric":
        mp.setenv("CURATION_SHARD_SIZE", "abc")
    elif case == "missing-folder":
        args += ["--source", f"gone={tmp_path / 'nope'}"]
    elif case == "not-a-folder":
        (tmp_path / "f.png").write_bytes(b"x")
        args += ["--source", f"file={tmp_path / 'f.png'}"]
    elif case == "unreadable-folder":
        real = os.scandir
        # as root, chmod 0 does not stop reading: refuse as the kernel does for another user
        mp.setattr(os, "scandir", lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                   if Path(p) == src else real(p))
        src.chmod(0)
    elif case == "bad-s3-uri":
        args += ["--source", "s3=s3:/bucket/raw"]
    elif case == "bad-source-name":
        args += ["--source", "Cam=/data"]
    elif case == "unknown-model":
        mp.setenv("EMBEDDER_KIND", "open_clip")
        mp.setenv("EMBEDDER_MODEL", "ViT-Nope")
    elif case == "unknown-kind":
        mp.setenv("EMBEDDER_KIND", "resnet")
    elif case == "no-dagster-home":
        mp.delenv("DAGSTER_HOME")
    elif case == "bad-dagster-home":
        mp.setenv("DAGSTER_HOME", str(tmp_path / "nohome"))
    try:
        rc, out, err = curate(capsys, *args, *extra)
    finally:
        src.chmod(0o755)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("curate: ") and line in err, err
    assert not out  # nothing registered, nothing run
    assert not (tmp_path / "outputs").exists()


def test_bad_setting_in_a_real_process_is_one_line(cli_env):
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--shard-size", "0"], cwd=ROOT,
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "curate: --shard-size='0': a whole number >= 1\n" and proc.stdout == ""


def test_cli_builds_resources_and_leaves_the_environment_alone(curate_env, capsys, tmp_path):
    import math

    from orchestration.cli import _parse_args, build_resources, run_config_for
    from orchestration.definitions import defs
    from partitions.shards import ShardRegistry

    _, src = curate_env
    out = tmp_path / "elsewhere"
    before = dict(os.environ)
    rc, stdout, err = curate(capsys, "register", "--source", f"t={src}", "--shard-size", "4", "--output-root", str(out))
    assert rc == 0, err
    assert dict(os.environ) == before
    n = sum(1 for p in src.rglob("*") if p.is_file())
    keys = ShardRegistry(str(out)).keys()
    assert len(keys) == math.ceil(n / 4) and f"{len(keys)} shard(s) registered" in stdout
    with dg.DagsterInstance.get() as instance:
        assert sorted(instance.get_dynamic_partitions("shards")) == sorted(keys)

    # the resources every run gets: the flags' values, accepted by each job's config schema
    resources = build_resources(_parse_args(["run", "--source", f"t={src}", "--shard-size", "4",
                                             "--output-root", str(out)]))
    run_config = run_config_for(resources)
    for job in ("curate_shard", "semantic_dedup", "curation_summary_job"):
        resolved = dg.validate_run_config(defs.resolve_job_def(job), run_config)
        corpus = resolved["resources"]["corpus"]["config"]
        assert corpus["shard_size"] == 4 and corpus["output_root"] == str(out) and corpus["sources"] == {"t": str(src)}
    assert dict(os.environ) == before


def test_curate_console_script_is_declared():
    import tomllib

    from orchestration import cli

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["curate"].split(":")
    assert module == "orchestration.cli" and getattr(cli, func) is cli.main


# --- `curate run`'s console: one line per stage per shard, Dagster at INFO in a short format --------


def test_curate_run_console_shape(cli_env, tmp_path):
    """A small real run, piped (as in `make demo`): the console is the registration lines, one line
    per stage per shard (rows, time, rate), a line per finished shard, the summary stage and the
    final line; Dagster's records are short `HH:MM:SS LEVEL step: message` lines at INFO, with no
    DEBUG event and no line printed twice. `--verbose` adds the DEBUG events, still short."""
    import re

    from curation.stages import CURATE, SHARD_STAGES, SUMMARY, stages_in
    from tests.conftest import write_real_images

    src = tmp_path / "sprites"
    write_real_images(src, 12)
    env = {**cli_env, "CURATION_FEWSHOT_URI": ""}
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--source", f"t={src}",
                           "--shard-size", "6"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    log = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR|DEBUG)\s+\S+: ")
    records = [ln for ln in lines if log.match(ln)]
    own = [ln for ln in lines if not log.match(ln)]
    shards = ["t-000001", "t-000002"]
    stage_line = re.compile(r"^(t-\d{6}|corpus)\s+([a-z_]+)(\s|$)")
    stage_rows = [stage_line.match(ln) for ln in own]
    per_stage = sorted((m.group(1), m.group(2)) for m in stage_rows if m)
    from orchestration.definitions import defs
    from orchestration.jobs import JOB_OF

    job_assets = {k.to_user_string() for k in defs.resolve_job_def(JOB_OF[CURATE]).asset_layer.selected_asset_keys}
    assert set(SHARD_STAGES) <= job_assets
    corpus_stages = [("corpus", s.name) for s in stages_in(SUMMARY)]  # curation_summary, corpus_manifest
    assert per_stage == sorted([(k, s) for k in shards for s in job_assets] + corpus_stages), own
    assert own[0] == "source t: 2 new shard(s) ['t-000001', 't-000002']"
    assert own[1] == "2 shard(s); 2 to materialise"
    done = [ln for ln in own if ln.startswith("shard ")]
    assert len(done) == 2 and all(re.match(rf"^shard {k} done \({i}/2, \d+ s so far\)$", ln)
                                  for i, (k, ln) in enumerate(zip(shards, done), 1)), done
    assert "corpus summary: 2 shard(s)" in own
    assert re.match(r"^curate: 2 of 2 shard\(s\) materialised in \d+ s; failed: none$", own[-2]), own[-2:]
    assert own[-1].startswith("corpus report: ")
    # exactly these lines and nothing else of our own
    assert len(own) == 2 + len(per_stage) + len(shards) + 1 + 2, own
    # Dagster's records: INFO and above, short, each once (the assets' progress lines included)
    assert records and all(" DEBUG " not in ln for ln in records), records
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    assert not [ln for ln in lines if uuid.search(ln) or " - dagster - " in ln], lines  # no long Dagster prefix
    assert len(set(records)) == len(records), [r for r in records if records.count(r) > 1]
    assert any("inventory: starting, 6 images" in r for r in records), records
    inventory = next(ln for ln in own if ln.startswith("t-000001") and " raw_inventory " in ln)
    assert re.search(r" 6 rows +[\d.]+ s .*decoded=6 errors=0$", inventory), inventory
    assert re.search(r" kept=6 rejected=0$", next(ln for ln in own if " curated_images " in ln))
    assert len(lines) < 60, proc.stdout

    # --verbose: every Dagster event, in the same short format (the summary job still runs)
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "run", "--source", f"t={src}",
                           "--shard-size", "6", "--verbose"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    debug = [ln for ln in proc.stdout.splitlines() if log.match(ln) and " DEBUG " in ln]
    assert any("STEP_SUCCESS" in ln or "Finished execution of step" in ln for ln in debug), proc.stdout[-3000:]
    assert "2 shard(s); 0 to materialise" in proc.stdout


def test_curate_run_skips_a_shard_with_an_active_run(curate_env, capsys):
    """A shard whose run is already under way (e.g. the automatic retry the daemon launched) is not run a
    second time beside it: `curate run` says which run holds it and leaves it alone."""
    from dagster._core.storage.dagster_run import DagsterRun

    mp, src = curate_env
    mp.setenv("CURATION_FEWSHOT_URI", "")
    rc, out, err = curate(capsys, "register", "--source", f"t={src}", "--shard-size", "100")
    assert rc == 0, err
    with dg.DagsterInstance.get() as instance:
        queued = DagsterRun(job_name="curate_shard", status=dg.DagsterRunStatus.STARTING,
                            tags={"dagster/partition": "t-000001", "dagster/will_retry": "false"})
        instance.add_run(queued)
    rc, out, err = curate(capsys, "run", "--source", f"t={src}", "--shard-size", "100", "--no-summary")
    assert rc == 0, err
    assert f"shard t-000001: skipped, run {queued.run_id} is already queued or running for it" in out, out
    assert "1 shard(s); 0 to materialise" in out
    with dg.DagsterInstance.get() as instance:  # nothing ran beside the queued run
        assert [r.run_id for r in instance.get_runs()] == [queued.run_id]
