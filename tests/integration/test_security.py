"""Security properties of the pipeline, checked against real runs:

* manifest entries that point out of the source root (`..`, an absolute path elsewhere, a sibling
  folder sharing the root's prefix, another bucket or prefix on S3) become `unsafe_path` error rows and
  are never read (no byte of them hashed; on S3 not one request for them reaches the server);
* no pickle anywhere: no project module imports a pickling library or loads torch checkpoints without
  `weights_only=True`, and a real run of every asset hands no output to an IO manager (every asset
  returns a MaterializeResult and writes its own Parquet/JSON);
* secrets come only from the environment and never reach logs, run config, tags, asset metadata,
  compute logs or any output: a real run over S3 signs its requests with a unique key pair from the
  environment, then every byte the instance and the run wrote is searched for it.
"""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import sys
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from curation import errors
from curation.sources import SourceFile
from tests.conftest import mnist_digits, write_real_images
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _source_file(uri: str, rel: str) -> SourceFile:
    return SourceFile(uri=uri, rel_path=rel, size=1234, mtime=None)


def _inventory(out: Path, src_root: str, files: list[SourceFile]) -> tuple[str, pl.DataFrame]:
    """Register `files` as one shard (as discovery would) and materialise raw_inventory in process."""
    from assets.inventory import raw_inventory
    from partitions.shards import SHARDS, ShardRegistry
    from resources.corpus import CorpusResource, StageSettings

    (shard,) = ShardRegistry(str(out)).register("t", files, shard_size=100)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, [shard.key])
        res = dg.materialize([raw_inventory], partition_key=shard.key, instance=instance,
                             resources={"corpus": CorpusResource(output_root=str(out), sources={"t": src_root}),
                                        "settings": StageSettings(inventory_workers=1)})
        assert res.success
    return shard.key, pl.read_parquet(out / "raw_inventory" / f"{shard.key}.parquet")


def _assert_unsafe_rows(inv: pl.DataFrame, unsafe: set[str], safe: set[str]) -> None:
    assert inv.height == len(unsafe) + len(safe)  # every manifest entry has exactly one row
    by_uri = {r["uri"]: r for r in inv.iter_rows(named=True)}
    assert set(by_uri) == unsafe | safe
    for uri in unsafe:
        row = by_uri[uri]
        assert row["error_code"] == errors.UNSAFE_PATH, (uri, row["error_code"], row["error_message"])
        # never read: nothing of the file was hashed, measured or decoded
        assert row["sha256"] is None and row["bytes"] is None and row["width"] is None and row["format"] is None, row
    for uri in safe:
        assert by_uri[uri]["error_code"] is None and by_uri[uri]["sha256"], by_uri[uri]


def test_unsafe_local_manifest_entries_are_recorded_and_never_read(tmp_path):
    src, outside, sibling = tmp_path / "src", tmp_path / "outside", tmp_path / "src_evil"
    good = write_real_images(src, 2)
    secret = write_real_images(outside, 1, prefix="secret")[0]  # a real, readable image outside the root
    write_real_images(sibling, 1, prefix="sib")
    unsafe = {
        f"{src}/../outside/{secret.name}": "../outside",  # climbs out with '..'
        str(secret): "abs",  # an absolute path elsewhere
        str(next(sibling.iterdir())): "sibling",  # /…/src_evil/x shares the root's string prefix
        f"s3://other-bucket/{secret.name}": "s3",  # another store altogether
        secret.name: "relative",  # not an absolute path
        "/etc/passwd": "etc",
    }
    files = [_source_file(str(p), p.name) for p in good] + [_source_file(u, rel) for u, rel in unsafe.items()]
    _, inv = _inventory(tmp_path / "out", str(src), files)
    _assert_unsafe_rows(inv, set(unsafe), {str(p) for p in good})


def test_unsafe_s3_manifest_entries_are_recorded_and_never_requested(s3, tmp_path):  # noqa: F811
    client = s3.server.direct_client()
    other = f"other-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=other)
    data = (Path(write_real_images(tmp_path / "img", 1)[0])).read_bytes()
    for bucket, key in ((s3.bucket, "raw/a.png"), (s3.bucket, "secret/x.png"), (s3.bucket, "rawx/a.png"),
                        (other, "raw/a.png")):
        client.put_object(Bucket=bucket, Key=key, Body=data)
    root = s3.uri("raw")
    unsafe = {
        f"s3://{other}/raw/a.png": "other bucket",
        s3.uri("secret/x.png"): "same bucket, outside the prefix",
        s3.uri("raw/../secret/x.png"): "'..' out of the prefix",
        s3.uri("rawx/a.png"): "sibling prefix",
        str(tmp_path / "img"): "a local path under an S3 root",
    }
    files = [_source_file(s3.uri("raw/a.png"), "a.png")] + [_source_file(u, r) for u, r in unsafe.items()]
    s3.proxy.reset()
    _, inv = _inventory(tmp_path / "out", root, files)
    _assert_unsafe_rows(inv, set(unsafe), {s3.uri("raw/a.png")})
    paths = [r.path for r in s3.proxy.ops()]
    assert any(p.endswith(f"/{s3.bucket}/raw/a.png") for p in paths), paths  # the safe one was read (control)
    assert not [p for p in paths if other in p or "/secret/" in p or "/rawx/" in p or ".." in p], paths


# ------------------------------------------------------------------------------------ no pickle

BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "pickletools"}


def pickle_uses(source: str, filename: str = "<src>") -> list[str]:
    """Places in `source` that unpickle or pickle: banned imports, torch.load without
    weights_only=True, numpy loads with allow_pickle=True, pandas read_pickle / to_pickle."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [f"{filename}:{node.lineno} import {a.name}" for a in node.names
                      if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{filename}:{node.lineno} from {node.module} import")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, node.func.value
            kw = {k.arg: k.value for k in node.keywords}
            if name == "load" and isinstance(owner, ast.Name) and owner.id == "torch":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    found.append(f"{filename}:{node.lineno} torch.load without weights_only=True")
            if name in ("load", "loadtxt") and isinstance(kw.get("allow_pickle"), ast.Constant) and \
                    kw["allow_pickle"].value is True:
                found.append(f"{filename}:{node.lineno} allow_pickle=True")
            if name in ("read_pickle", "to_pickle"):
                found.append(f"{filename}:{node.lineno} {name}")
    return found


def project_python_files() -> list[Path]:
    skip = {".venv", "data", "dagster_home", "build", "dist", ".git", "node_modules"}
    return [p for p in ROOT.rglob("*.py")
            if not (set(p.relative_to(ROOT).parts[:-1]) & skip) and not any(
                part.startswith(".") or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts[:-1])]


def test_no_pickle_in_the_project_source():
    # the checker itself catches what it is meant to catch
    assert len(pickle_uses("import pickle\nfrom joblib import load\nimport torch\ntorch.load(p)\n"
                           "torch.load(p, weights_only=False)\nnp.load(f, allow_pickle=True)\ndf.to_pickle(x)\n")) == 6
    assert pickle_uses("import torch\ntorch.load(p, map_location='cpu', weights_only=True)\n") == []

    files = project_python_files()
    assert any(p.match("curation/embedding/checkpoints.py") for p in files) and any(p.match("assets/*.py") for p in files)
    found = [hit for p in files for hit in pickle_uses(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []


# ------------------------------------------------------------------ one real run: secrets, IO managers


@pytest.fixture(scope="module")
def real_run(s3_server, tmp_path_factory):  # noqa: F811
    """Every asset of the code location materialised for one shard whose images are on S3, as a launched
    run of the code location is executed (`execute_job` on the reconstructable job: a run process with
    the deployment's executor, compute logs captured) in an instance at a DAGSTER_HOME holding the
    repo's dagster.yaml, with a unique key pair in the environment. Shared by the two tests below."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _real_run(s3_server, tmp_path_factory.mktemp("real_run"), monkeypatch)


def _real_run(s3_server, tmp_path: Path, monkeypatch):  # noqa: F811
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from curation import storage
    from partitions.discovery import discover_all
    from partitions.shards import ShardRegistry
    from tests.s3server import S3Env

    key_id, secret = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"sEcReT{uuid.uuid4().hex}"
    for var in ("AWS_PROFILE", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    for k, v in dict(AWS_ENDPOINT_URL=s3_server.endpoint, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret,
                     AWS_SESSION_TOKEN=f"tOkEn{uuid.uuid4().hex}", AWS_DEFAULT_REGION="us-east-1",
                     AWS_CONFIG_FILE="/nonexistent/aws-config", AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
                     AWS_EC2_METADATA_DISABLED="true").items():
        monkeypatch.setenv(k, v)
    storage._FS_CACHE.clear()
    s3_server.proxy.reset()
    s3 = S3Env(s3_server, f"curation-{uuid.uuid4().hex[:12]}")  # noqa: F811
    client = s3_server.direct_client()
    client.create_bucket(Bucket=s3.bucket)
    for p in write_real_images(tmp_path / "imgs", 6):
        client.put_object(Bucket=s3.bucket, Key=f"raw/{p.name}", Body=p.read_bytes())
    X, y = mnist_digits(2000)
    for label in (0, 1):
        for i in np.flatnonzero(y == label)[:3]:
            (tmp_path / "fewshot" / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(X[i]).resize((64, 64)).save(tmp_path / "fewshot" / str(label) / f"{i}.png")

    home, out, src = tmp_path / "home", tmp_path / "out", s3.uri("raw")
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    for k, v in dict(DAGSTER_HOME=str(home), CURATION_OUTPUT_ROOT=str(out), CURATION_SOURCES=f"t={src}",
                     CURATION_DEPLOYMENT="local", CURATION_FEWSHOT_URI=str(tmp_path / "fewshot"),
                     EMBEDDER_DEVICE="cpu").items():
        monkeypatch.setenv(k, v)
    (shard,) = discover_all(ShardRegistry(str(out)), "t", src, shard_size=100)
    if "orchestration.definitions" in sys.modules:  # its resources read the environment at import
        importlib.reload(sys.modules["orchestration.definitions"])
    repo = ReconstructableRepository.for_module("orchestration.definitions", "defs", working_directory=str(ROOT))
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("shards", [shard.key])
    run_ids = []
    # the probe first: image_classifications applies the stored probe, it never trains one
    with dg.execute_job(repo.get_reconstructable_job("few_shot_probe_job"), instance) as result:
        assert result.success, "few_shot_probe_job"
        probe_run = result.run_id
    for job, tags in (("curate_shard", {"dagster/partition": shard.key}), ("semantic_dedup", {"dagster/partition": shard.key}),
                      ("curation_summary_job", {})):
        with dg.execute_job(repo.get_reconstructable_job(job), instance, tags=tags) as result:
            assert result.success, job
            run_ids.append(result.run_id)
    run_ids.append(probe_run)
    signed = {r.access_key for r in s3.proxy.ops() if r.status == 200}
    yield dict(instance=instance, run_ids=run_ids, home=home, out=out, key_id=key_id, secret=secret,
               token=os.environ["AWS_SESSION_TOKEN"], signed=signed, shard=shard.key)
    instance.dispose()
    s3_server.proxy.reset()
    storage._FS_CACHE.clear()


def test_secrets_only_from_the_environment_and_never_recorded(real_run):
    from dagster._serdes import serialize_value

    instance, run_ids = real_run["instance"], real_run["run_ids"]
    secrets = [real_run["secret"], real_run["token"], real_run["key_id"]]
    # control: the run really used the key pair from the environment to sign its S3 requests
    assert real_run["signed"] == {real_run["key_id"]}

    texts = {}
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        texts[f"run {run_id} config+tags"] = serialize_value(run.run_config) + repr(dict(run.tags))
        texts[f"run {run_id} events"] = "\n".join(serialize_value(e) for e in instance.all_logs(run_id))
    for key in instance.all_asset_keys():
        for rec in instance.fetch_materializations(key, limit=100).records:
            texts[f"{key.to_user_string()} metadata"] = serialize_value(rec.asset_materialization.metadata)
    assert real_run["shard"] in texts[f"run {run_ids[0]} events"]  # control: the scan sees the run's content
    for where, text in texts.items():
        for s in secrets:
            assert s not in text, f"a credential is recorded in {where}"

    # every byte the instance (SQLite event logs, run storage, compute logs) and the run wrote
    files = [p for d in (real_run["home"], real_run["out"]) for p in d.rglob("*") if p.is_file()]
    compute_logs = [p for p in files if p.suffix in (".err", ".out", ".complete") and p.stat().st_size]
    assert compute_logs, "no compute log captured: the scan would prove nothing about them"
    assert any(real_run["shard"].encode() in p.read_bytes() for p in files if p.suffix == ".db")  # control
    for p in files:
        data = p.read_bytes()
        for s in secrets:
            assert s.encode() not in data, f"a credential is written in {p}"


def test_every_asset_returns_materialize_result_and_no_output_is_pickled(real_run):
    from orchestration.definitions import defs

    instance, run_ids = real_run["instance"], real_run["run_ids"]
    events = [e for r in run_ids for e in instance.all_logs(r) if e.dagster_event]
    kinds = {e.dagster_event.event_type for e in events}
    # no output handed to an IO manager, no input loaded from one: nothing goes through the
    # (pickling) default IO manager
    assert dg.DagsterEventType.HANDLED_OUTPUT not in kinds and dg.DagsterEventType.LOADED_INPUT not in kinds
    materialized = {e.dagster_event.asset_key for e in events
                    if e.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION}
    every_asset = set(defs.resolve_asset_graph().get_all_asset_keys())
    assert materialized == every_asset  # the run covered every asset of the code location
    # and the default IO manager's storage folder holds nothing
    storage_dir = real_run["home"] / "storage"
    pickled = [p for p in storage_dir.rglob("*") if p.is_file() and "compute_logs" not in p.parts
               and p.suffix not in (".err", ".out", ".complete")] if storage_dir.exists() else []
    assert pickled == []
