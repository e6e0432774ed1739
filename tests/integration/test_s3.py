"""The S3 paths of curation.storage / curation.sources against a real S3 server (moto on loopback),
through a proxy that injects throttling, 5xx and connection resets. See tests/s3server.py."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from curation import storage
from curation.sources import list_source
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def _seed(s3, keys: list[str], body: bytes = b"x") -> None:
    client = s3.server.direct_client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3.bucket, Key=k, Body=body), keys))


def test_listing_a_large_prefix_pages_through_every_key(s3):
    images = [f"corpus/cam/{i // 500:02d}/img_{i:05d}.jpg" for i in range(2500)]
    noise = ["corpus/cam/README.txt", "corpus/cam/.hidden.jpg", "corpus/cam/dir.jpg/", "corpus/other.jpg"]
    _seed(s3, images + noise)

    files, exhausted = list_source(s3.uri("corpus/cam"))
    assert exhausted
    # every object is listed (README.txt too: the stage records it as not_an_image), except the
    # hidden one and the folder marker
    listed = sorted([*images, "corpus/cam/README.txt"])
    assert [f.rel_path for f in files] == [k[len("corpus/cam/"):] for k in listed]
    assert all(f.uri == s3.uri(k) for f, k in zip(files, listed))
    assert all(f.size == 1 and f.mtime is not None for f in files)
    # 2,504 keys under the prefix at 1,000 a page: three ListObjectsV2 requests, none skipped.
    pages = s3.proxy.ops("ListObjectsV2")
    assert len(pages) == 3 and all(p.status == 200 for p in pages)
    assert "continuation-token" in pages[1].query and "continuation-token" in pages[2].query

    # The cursor: resume after the 1,500th file, bounded by `limit`, across a page boundary.
    s3.proxy.reset()
    after = files[1499].rel_path
    page, exhausted = list_source(s3.uri("corpus/cam"), after=after, limit=700)
    assert not exhausted
    assert [f.rel_path for f in page] == [f.rel_path for f in files[1500:2200]]
    assert "start-after" in s3.proxy.ops("ListObjectsV2")[0].query
    rest, exhausted = list_source(s3.uri("corpus/cam"), after=page[-1].rel_path)
    assert exhausted and [f.rel_path for f in rest] == [f.rel_path for f in files[2200:]]


def test_large_output_is_one_multipart_upload_visible_only_when_complete(s3):
    # > 8 MiB (storage's block size): a multipart upload, not a one-shot PutObject. s3fs sends one
    # buffered write as parts of up to 5 GiB, so this is one part here; the protocol is the same.
    data = os.urandom(20 * 1024 * 1024 + 12345)
    uri = s3.uri("outputs/embeddings/cam-000001.parquet")
    key = uri.split("/", 3)[3]
    client = s3.server.direct_client()
    seen_before_complete = []

    def check_invisible(op, path):
        if op == "CompleteMultipartUpload":
            listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=key).get("KeyCount", 0)
            seen_before_complete.append(listed)

    s3.proxy.before_forward = check_invisible
    storage.write_bytes_atomic(uri, data)

    ops = [r.operation for r in s3.proxy.ops() if r.status == 200]
    assert ops.count("CreateMultipartUpload") == 1
    n_parts = ops.count("UploadPart")
    assert n_parts >= 1
    assert ops.count("CompleteMultipartUpload") == 1
    assert "PutObject" not in ops
    assert seen_before_complete == [0], "a reader could see the object before the upload completed"
    assert hashlib.sha256(storage.read_bytes(uri)).digest() == hashlib.sha256(data).digest()
    head = client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentLength"] == len(data) and head["ETag"].strip('"').endswith(f"-{n_parts}")  # multipart ETag


def test_throttling_5xx_and_resets_are_retried_until_success(s3):
    client = s3.server.direct_client()
    client.put_object(Bucket=s3.bucket, Key="in/a.bin", Body=b"hello")
    big = os.urandom(17 * 1024 * 1024)

    faults = [
        s3.proxy.inject("GetObject", "slowdown", times=2),
        s3.proxy.inject("GetObject", "reset", times=1),
        s3.proxy.inject("ListObjectsV2", "internal", times=1),
        s3.proxy.inject("UploadPart", "reset", times=1),
        s3.proxy.inject("UploadPart", "unavailable", times=1),
        s3.proxy.inject("CompleteMultipartUpload", "slowdown", times=1),
        s3.proxy.inject("PutObject", "internal", times=2),
    ]
    assert storage.read_bytes(s3.uri("in/a.bin")) == b"hello"
    files, _ = list_source(s3.uri("in"), extensions=None)
    assert [f.rel_path for f in files] == ["a.bin"]
    storage.write_bytes_atomic(s3.uri("out/big.bin"), big)
    storage.write_json({"ok": True}, s3.uri("out/small.json"))

    assert [f.fired for f in faults] == [f.times for f in faults], "every injected fault was hit"
    got = client.get_object(Bucket=s3.bucket, Key="out/big.bin")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
    assert storage.read_json(s3.uri("out/small.json")) == {"ok": True}
    failed = [r for r in s3.proxy.ops() if r.fault]
    assert {r.fault for r in failed} == {"slowdown", "reset", "internal", "unavailable"}


def test_with_retries_backs_off_on_real_s3_errors_then_names_the_object():
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "PutObject")

    errors = [client_error("SlowDown", 503), client_error("InternalError", 500), ConnectionResetError(104, "Connection reset by peer"),
              EndpointConnectionError(endpoint_url="http://127.0.0.1:1")]
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    assert storage.with_retries(flaky, "s3://b/out/x.parquet", attempts=6, base_delay=0.1, sleep=sleeps.append) == "done"
    assert len(calls) == 5 and len(sleeps) == 4
    # full jitter under an exponentially growing cap
    assert all(0 <= s <= 0.1 * 2**i for i, s in enumerate(sleeps))

    def always_throttled():
        raise client_error("SlowDown", 503)

    sleeps.clear()
    with pytest.raises(OSError, match=r"s3://b/out/x\.parquet: giving up after 3 attempts.*SlowDown") as ei:
        storage.with_retries(always_throttled, "s3://b/out/x.parquet", attempts=3, sleep=sleeps.append)
    assert isinstance(ei.value.__cause__, ClientError) and len(sleeps) == 2

    denied = []

    def access_denied():
        denied.append(1)
        raise client_error("AccessDenied", 403)

    with pytest.raises(ClientError, match="AccessDenied"):
        storage.with_retries(access_denied, "s3://b/k", sleep=lambda s: None)
    assert len(denied) == 1, "an authorisation error is not retried"


def test_a_persistent_server_error_fails_naming_the_object(s3, monkeypatch):
    """Through the whole stack: botocore's retries are exhausted on every one of with_retries'
    attempts, then the error names the object. (Back-off delays are zeroed to keep this quick.)"""
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    monkeypatch.setattr(storage.random, "uniform", lambda a, b: 0.0)
    s3.server.direct_client().put_object(Bucket=s3.bucket, Key="in/stuck.bin", Body=b"x")
    s3.proxy.inject("GetObject", "internal", times=10_000)
    uri = s3.uri("in/stuck.bin")
    with pytest.raises(OSError, match=rf"{uri}: giving up after 6 attempts") as ei:
        storage.read_bytes(uri)
    chain, e = [], ei.value
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(getattr(c, "response", {}).get("Error", {}).get("Code") == "InternalError" for c in chain)
    gets = s3.proxy.ops("GetObject")
    # botocore: 1 + 10 retries per call (storage.filesystem's `max_attempts: 10` counts retries);
    # with_retries: 6 calls. 66 requests in all, each answered 500.
    assert len(gets) == 6 * 11 and all(r.status == 500 for r in gets)


def test_credentials_come_from_the_environment_only(s3, monkeypatch):
    """With IAM authentication on, only the key pair in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY works."""
    import boto3

    from resources.corpus import CorpusResource

    server = s3.server
    iam = boto3.client("iam", endpoint_url=server.moto_endpoint, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap", region_name="us-east-1")
    server.set_auth(3)  # the next three calls are free; everything after must be signed by a real key
    try:
        iam.create_user(UserName="curation")
        iam.put_user_policy(UserName="curation", PolicyName="s3", PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'))
        key = iam.create_access_key(UserName="curation")["AccessKey"]
        server.direct_client(key["AccessKeyId"], key["SecretAccessKey"]).put_object(
            Bucket=s3.bucket, Key="in/a.png", Body=b"png")

        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        storage._FS_CACHE.clear()
        assert storage.read_bytes(s3.uri("in/a.png")) == b"png"
        storage.write_bytes_atomic(s3.uri("out/x.json"), b"{}")
        signed = {r.access_key for r in s3.proxy.ops() if r.status == 200}
        assert signed == {key["AccessKeyId"]}

        # The same code with a wrong secret in the environment is refused, and not retried forever.
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        storage._FS_CACHE.clear()
        s3.proxy.reset()
        with pytest.raises((PermissionError, OSError)):
            storage.read_bytes(s3.uri("in/a.png"))
        refused = s3.proxy.ops()
        assert 1 <= len(refused) <= 3 and all(r.status == 403 for r in refused), refused
    finally:
        server.set_auth(float("inf"))

    # Nothing in the resource's configuration can carry a credential.
    fields = set(CorpusResource.model_fields)
    assert not {f for f in fields if any(w in f.lower() for w in ("key", "secret", "password", "token"))}


def test_a_shard_runs_end_to_end_with_sources_and_outputs_on_s3(s3, monkeypatch, tmp_path):
    """Source photos and every output on s3://, through the real code location (a reconstructed
    job, as a launched run executes it: the run finds S3 from the environment alone), with a
    throttled read and a failed write injected along the way."""
    import dagster as dg
    import polars as pl
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from partitions.shards import ShardRegistry
    from tests.photo_corpus import build_photo_corpus

    corpus = build_photo_corpus(tmp_path / "corpus")
    client = s3.server.direct_client()
    for rel, data in corpus.items():
        client.put_object(Bucket=s3.bucket, Key=f"raw/demo/{rel}", Body=data)
    src, out = s3.uri("raw/demo"), s3.uri("curated")
    monkeypatch.setenv("CURATION_SOURCES", f"demo={src}")
    monkeypatch.setenv("CURATION_OUTPUT_ROOT", out)
    monkeypatch.setenv("CURATION_DEPLOYMENT", "local")

    files, exhausted = list_source(src)
    assert exhausted and len(files) == len(corpus)
    (shard,) = ShardRegistry(out).register("demo", files, shard_size=100)
    assert ShardRegistry(out).keys() == [shard.key]

    first_photo = next(iter(corpus))
    s3.proxy.inject("GetObject", "slowdown", times=1, key_contains=f"raw/demo/{first_photo}")
    s3.proxy.inject("PutObject", "internal", times=1, key_contains="curated/raw_inventory/")

    # The code location reads its settings (CURATION_OUTPUT_ROOT, ...) when it loads, as a code server
    # does at start-up; this test changed them, so load it afresh (the in-process executor runs the
    # job in this process, where an earlier test may have imported it with other settings).
    import importlib

    import orchestration.definitions

    importlib.reload(orchestration.definitions)
    repo = ReconstructableRepository.for_module("orchestration.definitions", "defs", working_directory=str(ROOT))
    stages = ["raw_inventory", "dedup_clusters", "dedup_index", "curated_images"]  # the dedup step writes both
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("shards", [shard.key])
        with dg.execute_job(repo.get_reconstructable_job("curate_shard"), instance,
                            asset_selection=[dg.AssetKey(s) for s in stages],
                            tags={"dagster/partition": shard.key}) as result:
            assert result.success
        for stage in stages:
            ev = instance.get_latest_materialization_event(dg.AssetKey(stage))
            assert ev.dagster_event.partition == shard.key
            assert ev.asset_materialization.metadata["path"].value == f"{out}/{stage}/{shard.key}.parquet"

    inventory = storage.read_parquet(f"{out}/raw_inventory/{shard.key}.parquet")
    assert len(inventory) == len(corpus)
    assert set(inventory["uri"]) == {f"{src}/{rel}" for rel in corpus}
    assert inventory.filter(pl.col("error_code").is_not_null()).height >= 1  # the truncated JPEG
    curated = storage.read_parquet(f"{out}/curated_images/{shard.key}.parquet")
    assert 0 < int(curated["keep"].sum()) < len(corpus), curated.select("uri", "reasons").to_dicts()
    # every source photo was read from S3 and the injected faults were met and survived
    reads = [r for r in s3.proxy.ops("GetObject") if "/raw/demo/" in r.path and r.status in (200, 206)]
    assert {r.path.split("/raw/demo/", 1)[1] for r in reads} == set(corpus), sorted({(r.operation, r.status) for r in s3.proxy.ops()})
    assert all(f.fired == 1 for f in s3.proxy.faults)
