"""The Helm chart (helm/image-curation) rendered and linted offline with the Helm library
(helm-python-sdk), and helm/values-dagster.yaml checked against the chart and deploy/dagster-prod.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "image-curation"
RELEASE, NAMESPACE = "curation", "dagster"
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", re.I)


def render(values: dict | None = None) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def env_of(container) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def code_server(docs):
    (dep,) = by_kind(docs, "Deployment")
    return dep, dep["spec"]["template"]["spec"]["containers"][0]


def container_context(docs) -> dict:
    _, c = code_server(docs)
    return json.loads(env_of(c)["DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT"]["value"])


def test_chart_lints_clean_in_strict_mode():
    report = helm.lint(CHART, strict=True, kube_version="v1.30.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # no warnings either
    # and with every optional part switched the other way
    report = helm.lint(CHART, {"secrets": {"s3": {"enabled": False}}, "pools": {"setLimitsJob": {"enabled": False}},
                               "runWorker": {"serviceAccount": {"create": False, "name": "runner"}}}, strict=True)
    assert report["errors"] == []


@pytest.mark.parametrize("values", [{}, {"secrets": {"s3": {"enabled": False}}, "imagePullSecrets": [{"name": "regcred"}]}])
def test_every_pod_is_non_root_read_only_unprivileged_and_bounded(values):
    docs = render(values)
    specs = dict(pod_specs(docs))
    assert {n.rsplit("-", 1)[-1] for n in specs} >= {"curation", "limits"}  # code server + pool-limits job
    for name, spec in specs.items():
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        assert all("hostPath" not in v for v in spec.get("volumes", [])), name
        containers = spec["containers"] + spec.get("initContainers", [])
        for c in containers:
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where} {kind}"
            # a read-only root needs a writable /tmp
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), where
            assert any(v["name"] == "scratch" and "emptyDir" in v for v in spec["volumes"]), where
            for var in c.get("env", []):
                if SECRETISH.search(var["name"]):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], f"{where} {var['name']}"


def test_code_server_serves_the_definitions_module_over_grpc():
    docs = render()
    dep, c = code_server(docs)
    args = c["args"]
    assert args[:3] == ["dagster", "api", "grpc"]
    flags = dict(zip(args[3::2], args[4::2]))
    assert flags == {"-m": "orchestration.definitions", "-h": "0.0.0.0", "-p": "3030", "--location-name": "image_curation"}
    assert c["ports"] == [{"name": "grpc", "containerPort": 3030, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["exec"]["command"] == ["dagster", "api", "grpc-health-check", "-p", "3030"]
    (svc,) = by_kind(docs, "Service")
    assert svc["metadata"]["name"] == "curation-image-curation"
    assert svc["spec"]["ports"][0]["port"] == 3030 and svc["spec"]["ports"][0]["targetPort"] == "grpc"
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert env_of(c)["DAGSTER_CURRENT_IMAGE"]["value"] == c["image"] == "ghcr.io/example/image-curation-cuda:0.1.0"
    # the settings reach the process
    (cm,) = by_kind(docs, "ConfigMap")
    assert {"configMapRef": {"name": cm["metadata"]["name"]}} in c["envFrom"]
    assert cm["data"]["CURATION_DEPLOYMENT"] == "k8s"
    assert cm["data"]["CURATION_SOURCES"] == "demo=s3://example-curation/raw/demo"
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_credentials_are_only_ever_secret_references():
    docs = render({"curation": {"s3EndpointUrl": "http://minio.storage:9000"}})
    assert by_kind(docs, "Secret") == []  # the chart never materialises a Secret
    _, c = code_server(docs)
    env = env_of(c)
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "dagster-postgresql-secret", "key": "postgresql-password"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "image-curation-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "image-curation-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    # the run and step pods get the same references through the container context
    # (DAGSTER_PG_PASSWORD there comes from the K8sRunLauncher's postgres_password_secret)
    ctx_env = {e["name"]: e for e in container_context(docs)["k8s"]["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert ctx_env[name] == env[name]
    assert "DAGSTER_PG_PASSWORD" not in ctx_env
    (cm,) = by_kind(docs, "ConfigMap")
    assert cm["data"]["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert not [k for k in cm["data"] if SECRETISH.search(k)]

    # With workload identity there are no keys at all.
    docs = render({"secrets": {"s3": {"enabled": False}}})
    assert "AWS_SECRET_ACCESS_KEY" not in env_of(code_server(docs)[1])
    assert "AWS_SECRET_ACCESS_KEY" not in {e["name"] for e in container_context(docs)["k8s"]["env"]}

    # A plain value where a reference belongs is refused by the schema, at render time.
    for bad in ({"secrets": {"s3": {"secretAccessKey": "wJalrXUtnFEMI"}}},
                {"secrets": {"postgresql": {"password": "hunter2"}}},
                {"curation": {"extraEnv": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}}},
                {"securityContext": {"privileged": True}},
                {"podSecurityContext": {"runAsNonRoot": False}}):
        with pytest.raises(helm.HelmValuesError):
            render(bad)


def test_run_and_step_pods_get_a_valid_container_context_and_rbac():
    from dagster_k8s.container_context import K8sContainerContext

    docs = render()
    ctx = container_context(docs)
    cc = K8sContainerContext.create_from_config(ctx)  # dagster-k8s validates the schema here
    assert cc.namespace == NAMESPACE
    run_cfg = cc.run_k8s_config
    assert run_cfg.pod_spec_config["security_context"]["run_as_non_root"] is True
    assert run_cfg.container_config["security_context"]["read_only_root_filesystem"] is True
    assert {"name": "scratch", "mount_path": "/tmp"} in run_cfg.container_config["volume_mounts"]
    assert "node_selector" not in run_cfg.pod_spec_config  # would leak into the GPU steps' selector
    for kind in ("requests", "limits"):  # the run worker pod is bounded too
        assert {"cpu", "memory"} <= set(run_cfg.container_config["resources"][kind])
    (cm,) = by_kind(docs, "ConfigMap")
    assert ctx["k8s"]["env_config_maps"] == [cm["metadata"]["name"]]
    (sa,) = by_kind(docs, "ServiceAccount")
    assert run_cfg.pod_spec_config["service_account_name"] == sa["metadata"]["name"]
    (role,) = by_kind(docs, "Role")
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    jobs_rule = next(r for r in role["rules"] if "jobs" in r["resources"])
    assert {"create", "get", "list", "watch", "delete"} <= set(jobs_rule["verbs"]) and jobs_rule["apiGroups"] == ["batch"]
    assert not any("secrets" in r["resources"] for r in role["rules"])


def test_gpu_pool_settings_reach_the_gpu_step_tags(monkeypatch):
    from dagster_k8s.job import get_user_defined_k8s_config

    from orchestration import k8s

    # Helm merges maps: replacing the default label means nulling it (documented in values.yaml).
    values = {"gpu": {"resourceName": "nvidia.com/gpu",
                      "nodeSelector": {"nvidia.com/gpu.present": None, "cloud.google.com/gke-accelerator": "nvidia-l4"},
                      "tolerations": [{"key": "gpu-pool", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
                      "stepDeadlineSeconds": 7200}}
    (cm,) = by_kind(render(values), "ConfigMap")
    for k, v in cm["data"].items():
        if k.startswith("CURATION_K8S_"):
            monkeypatch.setenv(k, v)
    cfg = get_user_defined_k8s_config(k8s.gpu_step_tags())
    assert cfg.pod_spec_config["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert cfg.pod_spec_config["tolerations"] == [{"key": "gpu-pool", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    assert cfg.pod_spec_config["active_deadline_seconds"] == 7200
    assert cfg.container_config["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_pool_limits_hook_sets_the_gpu_pool():
    docs = render({"pools": {"limits": {"gpu": 3}, "setLimitsJob": {"instanceConfigMap": "prod-dagster-instance"}}})
    (job,) = by_kind(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert "dagster instance concurrency set gpu 3" in c["args"][0]
    assert env_of(c)["DAGSTER_HOME"]["value"] == "/opt/dagster/dagster_home"
    vols = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert vols["dagster-instance"]["configMap"]["name"] == "prod-dagster-instance"
    assert job["spec"]["activeDeadlineSeconds"] > 0
    assert by_kind(render({"pools": {"setLimitsJob": {"enabled": False}}}), "Job") == []


def _snake(d):
    if isinstance(d, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower() if k != "applyLimitPerUniqueValue" else k: _snake(v)
                for k, v in d.items()}
    if isinstance(d, list):
        return [_snake(x) for x in d]
    return d


def test_values_for_the_dagster_chart_match_the_chart_and_the_prod_instance():
    v = yaml.safe_load((ROOT / "helm" / "values-dagster.yaml").read_text())
    prod = yaml.safe_load((ROOT / "deploy" / "dagster-prod.yaml").read_text())
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    assert v["postgresql"]["enabled"] is False and v["generatePostgresqlPasswordSecret"] is False
    assert v["postgresql"]["postgresqlPassword"] == ""  # the password only ever comes from the Secret
    assert v["global"]["postgresqlSecretName"] == chart_defaults["secrets"]["postgresql"]["name"]
    assert v["postgresql"]["postgresqlScheme"] == prod["storage"]["postgres"]["postgres_db"]["scheme"]
    assert v["runLauncher"]["type"] == "K8sRunLauncher"
    assert v["dagster-user-deployments"]["enableSubchart"] is False
    (server,) = v["dagsterWebserver"]["workspace"]["servers"]
    (svc,) = by_kind(render(), "Service")
    assert (server["host"], server["port"], server["name"]) == (
        svc["metadata"]["name"], svc["spec"]["ports"][0]["port"], chart_defaults["codeServer"]["locationName"])

    daemon = v["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert "tagConcurrencyLimits" not in daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert _snake(v["concurrency"]["runs"]) == prod["concurrency"]["runs"]
    assert _snake(v["concurrency"]["pools"]) == prod["concurrency"]["pools"]
    assert daemon["runRetries"]["retryOnAssetOrOpFailure"] is False is prod["run_retries"]["retry_on_asset_or_op_failure"]
    assert daemon["runRetries"]["maxRetries"] == prod["run_retries"]["max_retries"]
    assert daemon["runMonitoring"]["freeSlotsAfterRunEndSeconds"] == prod["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    for part in ("dagsterWebserver", "dagsterDaemon"):
        assert v[part]["podSecurityContext"]["runAsNonRoot"] is True
        assert v[part]["securityContext"]["privileged"] is False
        assert {"requests", "limits"} <= set(v[part]["resources"])
        assert {"requests", "limits"} <= set(v[part]["initContainerResources"])
