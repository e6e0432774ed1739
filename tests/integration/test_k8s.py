"""The Kubernetes Jobs dagster-k8s would submit for this code location's steps.

No cluster: the real `k8s_job_executor` (configured by orchestration/k8s.py) launches each step of
the real `curate_shard` job against a mocked Kubernetes batch API, with the K8sRunLauncher of
helm/values-dagster.yaml and the container context the Helm chart hands the code server. What it
submits is exactly what a cluster would receive, so the GPU request, node selector, tolerations,
deadlines, the safe-to-evict annotation, security contexts and secrets are asserted on that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
IMAGE = "registry.example/image-curation-cuda:0.1.0"
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: ctx, context: {cluster: c, user: u, namespace: dagster}}]
current-context: ctx
"""


def chart_container_context() -> dict:
    helm = pytest.importorskip("helm_python")
    with helm.Chart.load(ROOT / "helm" / "image-curation") as chart:
        out = chart.render(name="curation", namespace="dagster")
    dep = yaml.safe_load(out["image-curation/templates/deployment.yaml"])
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    return json.loads(env["DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT"]["value"])


def run_launcher_config(kubeconfig: Path) -> dict:
    """The K8sRunLauncher the dagster chart renders from helm/values-dagster.yaml (the parts that
    reach step pods), pointed at a kubeconfig for a cluster that is never contacted."""
    v = yaml.safe_load((ROOT / "helm" / "values-dagster.yaml").read_text())
    k = v["runLauncher"]["config"]["k8sRunLauncher"]
    job_spec = k["runK8sConfig"]["jobSpecConfig"]
    return {
        "instance_config_map": "dagster-instance",
        "dagster_home": "/opt/dagster/dagster_home",
        "postgres_password_secret": v["global"]["postgresqlSecretName"],
        "service_account_name": v["global"]["serviceAccountName"],
        "job_namespace": "dagster",
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "image_pull_policy": k["imagePullPolicy"],
        "fail_pod_on_run_failure": k["failPodOnRunFailure"],
        "run_k8s_config": {"job_spec_config": {"ttl_seconds_after_finished": job_spec["ttlSecondsAfterFinished"],
                                               "backoff_limit": job_spec["backoffLimit"]}},
    }


@pytest.fixture(scope="module")
def submitted_jobs(tmp_path_factory):
    """{step key: (namespace, Job as the API would receive it as JSON)} for every step of curate_shard."""
    import kubernetes
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import create_execution_plan
    from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
    from dagster._core.execution.context_creation_job import create_context_free_log_manager
    from dagster._core.execution.retries import RetryMode
    from dagster._core.executor.init import InitExecutorContext
    from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.test_utils import create_run_for_test, instance_for_test
    from dagster._grpc.types import ExecuteStepArgs
    from dagster_k8s.client import DagsterKubernetesClient
    from dagster_k8s.executor import _K8S_EXECUTOR_CONFIG_SCHEMA, k8s_job_executor

    from orchestration import k8s
    from orchestration.definitions import defs

    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(KUBECONFIG)
    job = InMemoryJob(defs.resolve_job_def("curate_shard"))
    partition = "demo-000001"
    out: dict = {}
    with instance_for_test(overrides={"run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher",
                                                       "config": run_launcher_config(kubeconfig)}}) as instance:
        instance.add_dynamic_partitions("shards", [partition])
        origin = JobPythonOrigin(
            "curate_shard",
            RepositoryPythonOrigin(sys.executable, ModuleCodePointer("orchestration.definitions", "defs", str(ROOT)),
                                   container_image=IMAGE, container_context=chart_container_context()),
        )
        run = create_run_for_test(instance, job_name="curate_shard", job_code_origin=origin,
                                  tags={"dagster/partition": partition})
        cfg = process_config(resolve_to_config_type(_K8S_EXECUTOR_CONFIG_SCHEMA),
                             {**k8s.executor_config(), "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})
        assert cfg.success, cfg.errors
        executor = k8s_job_executor.executor_creation_fn(
            InitExecutorContext(job=job, executor_def=k8s_job_executor, executor_config=cfg.value, instance=instance))
        handler = executor._step_handler
        batch = mock.MagicMock()
        handler._api_client = DagsterKubernetesClient.production_client(batch_api_override=batch,
                                                                         core_api_override=mock.MagicMock())
        plan = create_execution_plan(job, tags={"dagster/partition": partition}, instance_ref=instance.get_ref())
        plan_ctx = PlanOrchestrationContext(
            plan_data=PlanData(job=job, dagster_run=run, instance=instance, execution_plan=plan,
                               raise_on_error=True, retry_mode=RetryMode.DISABLED),
            log_manager=create_context_free_log_manager(instance, run), executor=executor, output_capture=None)
        api = kubernetes.client.ApiClient()
        for step in plan.steps:
            args = ExecuteStepArgs(origin, run.run_id, [step.key], print_serialized_events=False)
            ctx = StepHandlerContext(instance=instance, plan_context=plan_ctx, steps=plan.steps,
                                     execute_step_args=args, dagster_run=run)
            list(handler.launch_step(ctx))
            call = batch.create_namespaced_job.call_args
            out[step.key] = (call.kwargs["namespace"], api.sanitize_for_serialization(call.kwargs["body"]), step.pool)
    return out


def pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def test_every_stage_gets_a_job_and_the_gpu_stage_is_in_the_gpu_pool(submitted_jobs):
    from orchestration.jobs import PARTITIONED_STAGES

    assert set(PARTITIONED_STAGES) <= set(submitted_jobs)  # plus the asset checks' own steps
    gpu_steps = {k for k, (_, _, p) in submitted_jobs.items() if p == "gpu"}
    assert "image_embeddings" in gpu_steps
    assert "raw_inventory" not in gpu_steps


def test_gpu_step_pod_requests_a_gpu_on_the_gpu_pool_and_is_not_evicted(submitted_jobs):
    for key, (ns, job, pool) in submitted_jobs.items():
        if pool != "gpu":
            continue
        spec = pod(job)
        (c,) = spec["containers"]
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == "1", key
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, key
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"], key
        assert spec["activeDeadlineSeconds"] == job["spec"]["activeDeadlineSeconds"] == 6 * 3600, key
        assert job["spec"]["template"]["metadata"]["annotations"][SAFE_TO_EVICT] == "false", key
        assert job["spec"]["template"]["metadata"]["labels"]["curation/stage-kind"] == "gpu"
        assert c["image"] == IMAGE and ns == "dagster"


def test_cpu_step_pods_stay_off_gpus_and_are_bounded(submitted_jobs):
    for key, (ns, job, pool) in submitted_jobs.items():
        if pool == "gpu":
            continue
        spec = pod(job)
        (c,) = spec["containers"]
        res = c["resources"]
        assert not any("gpu" in r for r in list(res["requests"]) + list(res["limits"])), key
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), key
        assert not spec.get("nodeSelector") and not spec.get("tolerations"), key
        assert SAFE_TO_EVICT not in (job["spec"]["template"]["metadata"].get("annotations") or {}), key
        assert 0 < spec["activeDeadlineSeconds"] <= 4 * 3600, key
        assert 0 < job["spec"]["activeDeadlineSeconds"] <= 4 * 3600, key


def test_every_step_pod_is_locked_down_and_gets_secrets_by_reference(submitted_jobs):
    for key, (_, job, _) in submitted_jobs.items():
        spec = pod(job)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        assert spec["automountServiceAccountToken"] is False, f"{key}: step pods never call the API"
        assert spec["serviceAccountName"] == "curation-image-curation-runner"
        assert spec["restartPolicy"] == "Never"
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["privileged"] is False
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        # chart and executor both declare the scratch volume: merged into one, mounted once
        assert [v["name"] for v in spec["volumes"]] == ["scratch"] and "emptyDir" in spec["volumes"][0], key
        assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"], key
        names = [e["name"] for e in c["env"]]
        assert len(names) == len(set(names)), f"{key}: duplicate env {sorted(names)}"
        env = {e["name"]: e for e in c["env"]}
        for name, secret in (("DAGSTER_PG_PASSWORD", "dagster-postgresql-secret"),
                             ("AWS_ACCESS_KEY_ID", "image-curation-s3"), ("AWS_SECRET_ACCESS_KEY", "image-curation-s3")):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret and "value" not in env[name], f"{key}: {name}"
        assert env["HOME"]["value"] == "/tmp/home"
        assert {"configMapRef": {"name": "curation-image-curation-env"}} in c["envFrom"]
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 86400


def test_gpu_step_tags_follow_the_gpu_pool_settings(monkeypatch):
    from dagster_k8s.job import get_user_defined_k8s_config

    from orchestration import k8s

    monkeypatch.setenv("CURATION_K8S_GPU_NODE_SELECTOR", "pool=a100,zone=b")
    monkeypatch.setenv("CURATION_K8S_GPU_RESOURCE", "amd.com/gpu")
    cfg = get_user_defined_k8s_config(k8s.gpu_step_tags(gpus=2))
    assert cfg.pod_spec_config["node_selector"] == {"pool": "a100", "zone": "b"}
    assert cfg.pod_spec_config["tolerations"] == [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert cfg.container_config["resources"]["limits"]["amd.com/gpu"] == "2"
    monkeypatch.setenv("CURATION_K8S_GPU_TOLERATIONS", "not json")
    with pytest.raises(ValueError, match="CURATION_K8S_GPU_TOLERATIONS"):
        k8s.gpu_step_tags()
    with pytest.raises(ValueError):
        k8s.gpu_step_tags(gpus=0)


def test_k8s_deployment_puts_the_k8s_executor_on_the_definitions():
    code = ("from orchestration.definitions import defs;"
            "print(defs.resolve_job_def('curate_shard').executor_def.name)")
    env = {**os.environ, "CURATION_DEPLOYMENT": "k8s"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "k8s"
    from orchestration.definitions import executor_for

    assert executor_for("local").name == "in_process"
    with pytest.raises(ValueError):
        executor_for("kubernetes")


def test_assets_carry_an_abstract_compute_profile_and_the_executor_maps_it():
    """Assets know cpu/gpu only (op tag + the gpu pool); the pod specs live in orchestration/k8s.py,
    keyed by stage, and no asset module imports orchestration/."""
    import ast

    from curation.stages import COMPUTE_TAG, STAGES
    from orchestration import k8s
    from orchestration.definitions import defs

    per_step = k8s.executor_config()["per_step_k8s_config"]
    assert set(per_step) == {s.name for s in STAGES}
    for node in defs.resolve_asset_graph().asset_nodes:
        assets_def = node.assets_def
        tags = assets_def.node_def.tags
        assert "dagster-k8s/config" not in tags, node.key
        kind = tags[COMPUTE_TAG]
        assert kind in ("cpu", "gpu"), node.key
        assert (assets_def.node_def.pool == "gpu") == (kind == "gpu"), node.key
        cfg = per_step[assets_def.node_def.name]
        requests = cfg["container_config"]["resources"]["requests"]
        assert ("nvidia.com/gpu" in requests) == (kind == "gpu"), node.key
    for path in (ROOT / "assets").glob("*.py"):
        tree = ast.parse(path.read_text())
        mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
               [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in mods if m and m.split(".")[0] == "orchestration"], path
