"""Settings are parsed and checked in one place (resources/environment.py, resources/stages.py):
every bad value is one line naming the setting, the value and what is allowed; a bad environment
variable fails runs and sensor ticks instead of the code location; errors that retrying cannot fix
(bad settings, models that cannot load, unsafe paths) fail at once, transient ones still retry."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import dagster as dg
import pytest

from assets._common import make_config, retry_policy
from curation.stages import Retry

RETRY = retry_policy(Retry())  # the stages' default policy: 2 retries with backoff
from curation.dedup import DedupConfig
from curation.embedding import EmbedderSpec
from curation.inventory import InventoryConfig
from curation.quality import QualityConfig
from resources import environment as env
from resources.classifier import ClassifierSettings
from resources.corpus import CorpusResource, StageSettings
from resources.environment import SettingError
from resources.failures import fail_fast
from resources.models import EmbedderResource
from resources.stages import DedupSettings, InventorySettings, QualitySettings

ALL_VARS = [v.name for v in env.ENV_VARS]


@pytest.fixture
def clean_env(monkeypatch):
    for name in ALL_VARS:
        if name not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "DAGSTER_HOME"):
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------------------ the two bugs


def test_embedder_env_vars_configure_the_resource(clean_env):
    environ = {"EMBEDDER_KIND": "open_clip", "EMBEDDER_DEVICE": "cuda:1", "EMBEDDER_PRECISION": "bf16",
               "EMBEDDER_BATCH_SIZE": "64", "EMBEDDER_CHUNK_SIZE": "512"}
    for k, v in environ.items():
        clean_env.setenv(k, v)
    res = EmbedderResource()
    assert res.spec() == EmbedderSpec.from_env(environ)
    assert res.spec() == EmbedderSpec(kind="open_clip", model_name="ViT-B-32", pretrained="laion2b_s34b_b79k",
                                      device="cuda:1", precision="bf16", batch_size=64)
    assert res.chunk_size == 512 and res.decode_processes is None  # auto
    clean_env.setenv("EMBEDDER_DECODE_PROCESSES", "0")
    assert EmbedderResource().decode_processes == 0
    clean_env.setenv("EMBEDDER_DECODE_PROCESSES", "auto")
    assert EmbedderResource().decode_processes is None
    clean_env.setenv("EMBEDDER_MODEL", "ViT-L-14")
    clean_env.setenv("EMBEDDER_PRETRAINED", "s3://models/ckpt.safetensors")
    assert EmbedderResource().spec() == EmbedderSpec.from_env(dict(os.environ))
    # explicit values win over the environment
    assert EmbedderResource(kind="efficientnet_lite0", model_name="tf_efficientnet_lite0", pretrained="packaged",
                            device="cpu").spec().kind == "efficientnet_lite0"


def test_embedder_defaults_without_env(clean_env):
    assert EmbedderResource().spec() == EmbedderSpec()
    assert EmbedderResource().chunk_size == 2048


def test_empty_fewshot_uri_disables_fewshot(clean_env):
    assert ClassifierSettings().fewshot_uri == str(env.PROJECT_ROOT / "data" / "demo_fewshot")
    clean_env.setenv("CURATION_FEWSHOT_URI", "")
    assert ClassifierSettings().fewshot_uri == ""
    clean_env.setenv("CURATION_FEWSHOT_URI", "s3://examples/fewshot")
    assert ClassifierSettings().fewshot_uri == "s3://examples/fewshot"


# ------------------------------------------------------------------------------ environment variables


@pytest.mark.parametrize("name,raw,allowed", [
    ("CURATION_SHARD_SIZE", "0", "a whole number >= 1"),
    ("CURATION_SHARD_SIZE", "-5", "a whole number >= 1"),
    ("CURATION_SHARD_SIZE", "abc", "a whole number >= 1"),
    ("CURATION_BACKFILL_SHARDS_PER_RUN", "0", "a whole number >= 1"),
    ("CURATION_DEPLOYMENT", "docker", "one of 'local', 'k8s'"),
    ("CURATION_SOURCES", "cam", "entries like name=/path"),
    ("CURATION_SOURCES", "Cam=/data", "a source name"),
    ("CURATION_SOURCES", "cam=s3:/bucket/x", "valid S3 bucket name"),
    ("CURATION_SOURCES", "cam=gs://bucket/x", "valid S3 bucket name"),
    ("CURATION_OUTPUT_ROOT", "s3://Not_A_Bucket/out", "valid S3 bucket name"),
    ("CURATION_FEWSHOT_URI", "s3://", "valid S3 bucket name"),
    ("EMBEDDER_KIND", "resnet", "one of 'open_clip', 'efficientnet_lite0'"),
    ("EMBEDDER_DEVICE", "gpu", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("EMBEDDER_PRECISION", "fp8", "one of 'auto', 'fp32', 'fp16', 'bf16'"),
    ("EMBEDDER_BATCH_SIZE", "0", "a whole number >= 1"),
    ("EMBEDDER_CHUNK_SIZE", "many", "a whole number >= 1"),
    ("EMBEDDER_DECODE_PROCESSES", "-1", "'auto' or a whole number >= 0"),
    ("EMBEDDER_DECODE_PROCESSES", "all", "'auto' or a whole number >= 0"),
])
def test_bad_env_value_is_one_line_naming_it(name, raw, allowed):
    with pytest.raises(SettingError) as info:
        env.read(name, {name: raw})
    line = one_line(info.value)
    assert line.startswith(f"{name}=") and allowed in line
    shown = info.value.value  # the whole value, or for CURATION_SOURCES the entry that is wrong
    assert shown in raw and f"{shown!r}: " in line
    assert info.value.allow_retries is False


def test_defaults_and_lenient_readers():
    assert env.shard_size({}) == 10_000 and env.backfill_shards_per_run({}) == 10 and env.deployment({}) == "local"
    assert env.sources({}) == {"demo": str(env.PROJECT_ROOT / "data" / "demo_corpus")}
    assert env.sources({"CURATION_SOURCES": "a=/x, b=s3://bucket/raw/"}) == {"a": "/x", "b": "s3://bucket/raw/"}
    assert env.output_root({"CURATION_OUTPUT_ROOT": "rel/out"}) == os.path.abspath("rel/out")
    # read when definitions load: a bad value gives the default there and is reported by `problems`
    assert env.backfill_shards_per_run({"CURATION_BACKFILL_SHARDS_PER_RUN": "x"}) == 10
    assert env.backfill_shards_per_run({"CURATION_BACKFILL_SHARDS_PER_RUN": "3"}) == 3
    assert env.deployment({"CURATION_DEPLOYMENT": "k8s"}) == "k8s"
    assert env.deployment({"CURATION_DEPLOYMENT": "docker"}) == "local"
    bad = env.problems(env.CORPUS_VARS, {"CURATION_DEPLOYMENT": "docker", "CURATION_SHARD_SIZE": "0"})
    assert [e.setting for e in bad] == ["CURATION_SHARD_SIZE", "CURATION_DEPLOYMENT"]


def test_every_env_var_is_documented():
    for var in env.ENV_VARS:
        assert var.meaning and var.default and var.allowed, var


def test_bad_env_does_not_stop_the_resources_loading_but_fails_their_runs(clean_env):
    clean_env.setenv("CURATION_SHARD_SIZE", "abc")
    corpus = CorpusResource()  # what the Definitions build when the code location loads
    assert corpus.shard_size == 10_000
    assert corpus.environment_errors == ["CURATION_SHARD_SIZE='abc': a whole number >= 1"]
    with pytest.raises(dg.Failure, match=r"^CURATION_SHARD_SIZE='abc': a whole number >= 1$") as info:
        corpus.setup_for_execution(None)
    assert info.value.allow_retries is False
    clean_env.setenv("EMBEDDER_BATCH_SIZE", "-1")
    with pytest.raises(dg.Failure, match="EMBEDDER_BATCH_SIZE='-1'"):
        EmbedderResource().setup_for_execution(None)
    clean_env.setenv("CURATION_FEWSHOT_URI", "ftp://host/x")
    with pytest.raises(dg.Failure, match="CURATION_FEWSHOT_URI='ftp://host/x'"):
        ClassifierSettings().setup_for_execution(None)


def test_bad_env_fails_the_sensor_tick_with_its_line(clean_env, tmp_path):
    from orchestration.jobs import curate_shard_job
    from orchestration.sensors import build_new_files_sensor

    clean_env.setenv("CURATION_SHARD_SIZE", "0")
    (tmp_path / "cam").mkdir()
    sensor = build_new_files_sensor(curate_shard_job)
    corpus = CorpusResource(output_root=str(tmp_path / "out"), sources={"cam": str(tmp_path / "cam")})
    with dg.instance_for_test() as instance:
        with pytest.raises(Exception) as info:  # the daemon records this as a failed tick with this error
            sensor(dg.build_sensor_context(instance=instance, resources={"corpus": corpus}))
    cause = info.value if isinstance(info.value, dg.Failure) else info.value.__cause__
    assert isinstance(cause, dg.Failure) and str(cause) == "CURATION_SHARD_SIZE='0': a whole number >= 1"


def test_bad_env_fails_a_run_at_once_without_retries(clean_env, tmp_path):
    from assets.inventory import raw_inventory
    from partitions.shards import SHARDS

    clean_env.setenv("CURATION_SHARD_SIZE", "0")
    corpus = CorpusResource(output_root=str(tmp_path / "out"), sources={"t": str(tmp_path)})
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, ["t-000001"])
        result = dg.materialize([raw_inventory], partition_key="t-000001", instance=instance, raise_on_error=False,
                                resources={"corpus": corpus, "settings": StageSettings(inventory_workers=1)})
        assert not result.success
        events = instance.all_logs(result.run_id)
        text = "\n".join(str(e.dagster_event.event_specific_data) for e in events if e.dagster_event)
        assert "CURATION_SHARD_SIZE='0': a whole number >= 1" in text
        assert not [e for e in events if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]


# ------------------------------------------------------------------------------ resources' explicit values


@pytest.mark.parametrize("kwargs,line", [
    (dict(shard_size=0), "CorpusResource.shard_size=0: a whole number >= 1"),
    (dict(page_size=-1), "CorpusResource.page_size=-1: a whole number >= 1"),
    (dict(sources={"Cam": "/x"}), "CorpusResource.sources='Cam': a source name"),
    (dict(sources={"cam": "s3://x"}), "CorpusResource.sources[cam]='s3://x': a local folder or s3://bucket/prefix"),
    (dict(output_root=""), "CorpusResource.output_root='': a local folder or s3://bucket/prefix (not empty)"),
])
def test_bad_corpus_values(kwargs, line):
    with pytest.raises(SettingError) as info:
        CorpusResource(**{"output_root": "/out", "sources": {"a": "/a"}, **kwargs})
    assert one_line(info.value).startswith(line)


@pytest.mark.parametrize("cls,kwargs,line", [
    (EmbedderResource, dict(kind="resnet"), "EmbedderResource.kind='resnet': one of 'open_clip', 'efficientnet_lite0'"),
    (EmbedderResource, dict(device="tpu"), "EmbedderResource.device='tpu'"),
    (EmbedderResource, dict(batch_size=0), "EmbedderResource.batch_size=0: a whole number >= 1"),
    (EmbedderResource, dict(model_name="resnet50"), "EmbedderResource.model_name='resnet50': 'tf_efficientnet_lite0'"),
    (ClassifierSettings, dict(top_k=0), "ClassifierSettings.top_k=0"),
    (ClassifierSettings, dict(min_confidence=1.5), "ClassifierSettings.min_confidence=1.5: a probability in [0, 1]"),
    (ClassifierSettings, dict(templates=["a photo"]), "ClassifierSettings.templates='a photo'"),
    (ClassifierSettings, dict(fewshot_uri="s3://"), "ClassifierSettings.fewshot_uri='s3://'"),
])
def test_bad_model_and_classifier_values(clean_env, cls, kwargs, line):
    with pytest.raises(SettingError) as info:
        cls(**kwargs)
    assert one_line(info.value).startswith(line)


def test_unknown_open_clip_model_is_a_setting_error():
    env.check_model_name("EMBEDDER_MODEL", "open_clip", "ViT-B-32")
    with pytest.raises(SettingError, match=r"^EMBEDDER_MODEL='ViT-Nope': an open_clip architecture"):
        env.check_model_name("EMBEDDER_MODEL", "open_clip", "ViT-Nope")


def test_sources_must_exist_and_be_listable(tmp_path, monkeypatch):
    env.check_source("ok", str(tmp_path))
    env.check_source("remote", "s3://bucket/prefix")  # listing errors of S3 are reported by the listing
    with pytest.raises(SettingError, match=r"^CURATION_SOURCES\[gone\]='.*nope': an existing folder"):
        env.check_source("gone", str(tmp_path / "nope"))
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(SettingError, match="is not a folder"):
        env.check_source("file", str(tmp_path / "f.png"))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    real_scandir = os.scandir

    def scandir(path):  # as root, chmod 0 does not stop reading: refuse as the kernel would for others
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "scandir", scandir)
    try:
        with pytest.raises(SettingError, match=r"^--source\[locked\]=.*: a folder this process can list \(Permission denied\)"):
            env.check_source("locked", str(locked), "--source")
    finally:
        locked.chmod(0o755)


def test_dagster_home(tmp_path):
    assert env.dagster_home({"DAGSTER_HOME": str(tmp_path)}) == str(tmp_path)
    with pytest.raises(SettingError, match=r"^DAGSTER_HOME='': a folder holding dagster.yaml"):
        env.dagster_home({})
    with pytest.raises(SettingError, match=r"^DAGSTER_HOME='.*missing': an existing folder"):
        env.dagster_home({"DAGSTER_HOME": str(tmp_path / "missing")})


# ------------------------------------------------------------------------------ typed stage settings


@pytest.mark.parametrize("typed,lib", [(InventorySettings, InventoryConfig), (DedupSettings, DedupConfig),
                                       (QualitySettings, QualityConfig)])
def test_typed_settings_mirror_the_library_dataclasses(typed, lib):
    assert set(typed.model_fields) == {f.name for f in dataclasses.fields(lib)}
    assert typed().to_library() == lib()
    assert make_config(lib, typed()) == lib()


def test_stage_settings_accept_dicts_and_typed_values():
    s = StageSettings(quality={"min_side": 64}, dedup=DedupSettings(phash_radius=4))
    assert make_config(QualityConfig, s.quality) == dataclasses.replace(QualityConfig(), min_side=64)
    assert make_config(DedupConfig, s.dedup).phash_radius == 4
    assert make_config(QualityConfig, {"min_side": 64}).min_side == 64
    assert s.inventory.to_library().background == (255, 255, 255)  # lists become the library's tuples
    with pytest.raises(dg.Failure, match="unknown QualityConfig setting"):
        make_config(QualityConfig, {"no_such": 1})
    with pytest.raises(dg.Failure, match="radii must be in"):
        make_config(DedupConfig, {"phash_radius": 40})


@pytest.mark.parametrize("kwargs,line", [
    (dict(quality={"min_side": 0}), "StageSettings.quality.min_side=0: a whole number of pixels >= 1"),
    (dict(quality={"max_aspect_ratio": 0.5}), "StageSettings.quality.max_aspect_ratio=0.5: a ratio >= 1"),
    (dict(quality={"profile": "icons"}), "StageSettings.quality.profile='icons': 'auto', 'photo' or 'graphics'"),
    (dict(quality={"near_empty_share": 1.5}), "StageSettings.quality.near_empty_share=1.5: a share in [0, 1]"),
    (dict(quality={"no_such_threshold": 1}), "StageSettings.quality={'no_such_threshold': 1}: known QualityConfig settings"),
    (dict(dedup={"phash_radius": -1}), "StageSettings.dedup.phash_radius=-1: a whole number in [0, 32)"),
    (dict(inventory={"decode_timeout_s": 0}), "StageSettings.inventory.decode_timeout_s=0.0: a number > 0"),
    (dict(inventory={"start_method": "fork"}), "StageSettings.inventory.start_method='fork': 'forkserver' or 'spawn'"),
    (dict(inventory={"background": [1, 2]}), "StageSettings.inventory.background=[1, 2]: three channel values"),
    (dict(inventory={"analysis_size": 8}), "StageSettings.inventory.analysis_size=8: a whole number of pixels >= 64"),
    (dict(inventory={"max_pixels": 0}), "StageSettings.inventory.max_pixels=0: a number > 0"),
    (dict(inventory_workers=-2), "StageSettings.inventory_workers=-2: a whole number >= 0"),
])
def test_bad_stage_settings_are_one_line(kwargs, line):
    with pytest.raises(SettingError) as info:
        StageSettings(**kwargs)
    assert one_line(info.value).startswith(line)


def test_launchpad_shows_the_stage_defaults():
    fields = StageSettings().get_resource_definition().config_schema.config_type.fields
    for section, typed in (("inventory", InventorySettings), ("dedup", DedupSettings), ("quality", QualitySettings)):
        inner = fields[section].config_type.fields
        for name, value in typed().model_dump().items():
            assert inner[name].default_provided and inner[name].default_value == value, (section, name)


def test_bad_run_config_fails_the_run_at_once(tmp_path):
    from assets.quality import curated_images
    from partitions.shards import SHARDS

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SHARDS.name, ["t-000001"])
        result = dg.materialize(
            [curated_images], partition_key="t-000001", instance=instance, raise_on_error=False,
            resources={"corpus": CorpusResource(output_root=str(tmp_path), sources={"t": str(tmp_path)},
                                                environment_errors=[]), "settings": StageSettings()},
            run_config={"resources": {"settings": {"config": {"quality": {"min_side": -3}}}}})
        assert not result.success
        events = instance.all_logs(result.run_id)
        text = "\n".join(str(e.dagster_event.event_specific_data) for e in events if e.dagster_event)
        assert "StageSettings.quality.min_side=-3: a whole number of pixels >= 1" in text
        assert not [e for e in events if e.dagster_event and e.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]


# ------------------------------------------------------------------------------ what is (not) retried


def _attempts(asset_fn, resources=None) -> tuple[bool, list[str], int]:
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset_fn], instance=instance, raise_on_error=False, resources=resources or {})
        events = [e.dagster_event for e in instance.all_logs(result.run_id) if e.dagster_event]
        failures = [e.event_specific_data.error.message for e in events if e.event_type_value == "STEP_FAILURE"]
        retries = sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in events)
    return result.success, failures, retries


def test_model_that_cannot_load_is_not_retried_and_keeps_its_whole_message(tmp_path):
    missing = tmp_path / ("a-long-folder-name-" * 8) / "weights.pth"

    @dg.asset(retry_policy=RETRY)
    def uses_model(embedder: EmbedderResource) -> None:
        embedder.get_embedder()

    ok, failures, retries = _attempts(uses_model, {"embedder": EmbedderResource(device="cpu", pretrained=str(missing),
                                                                                environment_errors=[])})
    assert not ok and retries == 0 and len(failures) == 1
    assert str(missing) in failures[0] and "EMBEDDER_PRETRAINED" in failures[0]


def test_unsafe_path_is_not_retried_and_transient_errors_are():
    from curation.storage import UnsafePathError

    @dg.asset(retry_policy=RETRY)
    def unsafe() -> None:
        with fail_fast("reading the manifest"):
            raise UnsafePathError("'../etc/passwd' is not under '/data'")

    ok, failures, retries = _attempts(unsafe)
    assert not ok and retries == 0 and "reading the manifest: '../etc/passwd' is not under '/data'" in failures[0]

    calls = []

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=1, delay=0))
    def flaky() -> None:
        with fail_fast():
            calls.append(1)
            if len(calls) == 1:
                raise OSError("connection reset by peer")

    ok, _, retries = _attempts(flaky)
    assert ok and retries == 1


def test_fail_fast_passes_other_errors_and_failures_through():
    with pytest.raises(KeyError):
        with fail_fast():
            raise KeyError("x")
    with pytest.raises(SettingError):
        with fail_fast():
            raise SettingError("X", 1, "y")
