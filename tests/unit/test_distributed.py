"""The distributed path's routing, settings and code version, without a broker (the real cluster
runs in tests/integration/test_celery.py)."""

from __future__ import annotations

import pytest

from orchestration import distributed


def test_compute_profiles_map_to_their_queues_and_unknown_ones_are_refused():
    assert distributed.queue_for_profile("gpu") == "gpu"
    assert distributed.queue_for_profile("cpu") == "cpu"
    with pytest.raises(ValueError, match="compute profile 'tpu'"):
        distributed.queue_for_profile("tpu")


def test_every_step_of_the_shard_job_is_routed_gpu_stage_to_gpu_rest_to_cpu():
    from dagster._core.execution.api import create_execution_plan

    from orchestration.definitions import defs

    plan = distributed._routed_plan(create_execution_plan(defs.resolve_job_def("curate_shard")))
    queues = {s.key: s.tags[distributed.QUEUE_TAG] for s in plan.step_dict.values()}
    assert queues.pop("image_embeddings") == "gpu"
    from curation.stages import CURATE, stages_in

    stages = stages_in(CURATE)
    n_steps = len(stages) + sum(len(st.checks) for st in stages)  # one step per stage and per check
    assert set(queues.values()) == {"cpu"} and len(queues) == n_steps - 1
    assert plan.get_step_by_key("image_embeddings").tags[distributed.QUEUE_TAG] == "gpu"


def test_profile_tag_then_stage_kind_then_pool_and_an_explicit_queue_wins():
    assert distributed.queue_for_step({distributed.PROFILE_TAG: "gpu"}) == "gpu"
    assert distributed.queue_for_step({"curation/stage-kind": "gpu"}) == "gpu"
    assert distributed.queue_for_step({}, pool="gpu") == "gpu"
    assert distributed.queue_for_step({}) == "cpu"
    assert distributed.queue_for_step({distributed.QUEUE_TAG: "gpu-big", distributed.PROFILE_TAG: "gpu"}) == "gpu-big"


def test_bad_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("CURATION_CELERY_BROKER", "amqp://guest@localhost//")
    with pytest.raises(ValueError, match="CURATION_CELERY_BROKER='amqp://guest@localhost//': expected a redis"):
        distributed.celery_config()
    monkeypatch.setenv("CURATION_CELERY_BROKER", "redis://h:6379/0")
    monkeypatch.setenv("CURATION_CELERY_VISIBILITY_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="CURATION_CELERY_VISIBILITY_TIMEOUT_S='soon'"):
        distributed.celery_config()
    monkeypatch.setenv("CURATION_CELERY_VISIBILITY_TIMEOUT_S", "90")
    conf = distributed.celery_config()
    assert conf["broker_transport_options"]["visibility_timeout"] == 90
    assert conf["result_backend"] == "redis://h:6379/0" and conf["task_acks_late"]


def test_code_version_is_the_env_setting_or_a_hash_of_the_sources(monkeypatch, tmp_path):
    distributed.code_version.cache_clear()
    try:
        monkeypatch.setenv("CURATION_CODE_VERSION", "v1.2.3")
        assert distributed.code_version() == "v1.2.3"
        distributed.code_version.cache_clear()
        monkeypatch.delenv("CURATION_CODE_VERSION")
        for pkg in distributed.SOURCE_PACKAGES:
            (tmp_path / pkg).mkdir()
            (tmp_path / pkg / "__init__.py").write_text("x = 1\n")
        monkeypatch.setattr(distributed, "ROOT", tmp_path)
        first = distributed.code_version()
        distributed.code_version.cache_clear()
        (tmp_path / "assets" / "__init__.py").write_text("x = 2\n")
        assert len(first) == 16 and distributed.code_version() != first
    finally:
        distributed.code_version.cache_clear()


def test_the_celery_deployment_selects_the_celery_executor():
    from orchestration.definitions import executor_for

    assert executor_for("celery").name == "celery"
    with pytest.raises(ValueError, match="expected 'local', 'k8s' or 'celery'"):
        executor_for("celery-beat")
