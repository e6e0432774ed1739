"""Kubernetes settings for step pods: the per-asset `dagster-k8s/config` tags and the k8s executor.

Used only when the code location runs with `CURATION_DEPLOYMENT=k8s` (the executor).

- `per_step_k8s_config()` — the executor's `per_step_k8s_config`: for every stage of the registry
  (curation/stages.py), the pod config of its abstract compute profile (`pod_config`). Assets carry
  only the profile (op tag `curation/compute`, `pool="gpu"`), never Kubernetes settings.
- `gpu_step_tags()` — the pod config of a GPU step (as `dagster-k8s/config` op tags): requests `nvidia.com/gpu`, schedules
  onto the GPU node pool (node selector + tolerations for the GPU taint), bounds the step with
  `activeDeadlineSeconds`, and marks the pod `cluster-autoscaler.kubernetes.io/safe-to-evict:
  "false"` so the autoscaler does not drain a GPU node under a long step.
- `cpu_step_tags()` — the same for a CPU step: requests/limits, deadline, no GPU, no GPU toleration.
- `k8s_executor()` — `k8s_job_executor.configured(...)`: one Kubernetes Job per step with a non-root,
  read-only-root-filesystem container (writable `/tmp` emptyDir), a per-run step concurrency cap,
  `step_k8s_config` defaults and the per-step configs deep-merged over them.

The GPU pool's label and taint differ by cluster, so they come from the environment of the code
server (set by the Helm chart, `helm/image-curation/values.yaml` `gpu.*`):

  CURATION_K8S_GPU_NODE_SELECTOR   JSON object or `k=v,k2=v2` (default `{"nvidia.com/gpu.present": "true"}`)
  CURATION_K8S_GPU_TOLERATIONS     JSON list of tolerations (default: tolerate `nvidia.com/gpu` NoSchedule)
  CURATION_K8S_GPU_RESOURCE        extended resource name (default `nvidia.com/gpu`)
  CURATION_K8S_GPU_DEADLINE_S      activeDeadlineSeconds of a GPU step (default 21600 = 6 h)
  CURATION_K8S_CPU_DEADLINE_S      activeDeadlineSeconds of a CPU step (default 14400 = 4 h)
  CURATION_K8S_MAX_CONCURRENT      step pods at once within one run (default 8)
  CURATION_K8S_JOB_NAMESPACE       namespace for step Jobs (default: the run's namespace)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from curation.stages import COMPUTE_TAG  # the op tag of every stage: cpu/gpu
from resources import environment

USER_DEFINED_K8S_CONFIG_KEY = "dagster-k8s/config"  # == dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"

DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_DEADLINE_S = 6 * 3600
DEFAULT_CPU_DEADLINE_S = 4 * 3600

# The uid/gid the images run as (Dockerfile: `useradd --uid 10001`).
RUN_AS_USER = 10001

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
# A read-only root filesystem needs somewhere to write: scratch space for temp files, torch/timm
# caches (HOME) and matplotlib. Outputs go to CURATION_OUTPUT_ROOT (S3 in production), not here.
# The Helm chart's container context declares the very same volume, mount and env for run and step
# pods; dagster-k8s de-duplicates identical entries when it merges the two, so they must stay equal
# (tests/integration/test_k8s.py renders both and checks the merged pod).
SCRATCH_VOLUME = {"name": "scratch", "emptyDir": {}}
SCRATCH_MOUNT = {"name": "scratch", "mountPath": "/tmp"}
SCRATCH_ENV = [
    {"name": "HOME", "value": "/tmp/home"},
    {"name": "TMPDIR", "value": "/tmp"},
    {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
    {"name": "MPLCONFIGDIR", "value": "/tmp/mpl"},
]


def _env_json(name: str, default: Any) -> Any:
    raw = environment.raw(name)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if name.endswith("NODE_SELECTOR"):  # also accept k=v,k2=v2
            out = {}
            for item in filter(None, (s.strip() for s in raw.split(","))):
                k, sep, v = item.partition("=")
                if not sep or not k.strip():
                    raise ValueError(f"{name}: expected JSON or k=v[,k=v], got {raw!r}") from None
                out[k.strip()] = v.strip()
            return out
        raise ValueError(f"{name} must be JSON, got {raw!r}") from None


def _env_int(name: str, default: int) -> int:
    raw = environment.raw(name)
    return int(raw) if raw else default


def gpu_node_selector() -> dict[str, str]:
    sel = _env_json("CURATION_K8S_GPU_NODE_SELECTOR", DEFAULT_GPU_NODE_SELECTOR)
    if not isinstance(sel, dict) or not all(isinstance(v, str) for v in sel.values()):
        raise ValueError(f"CURATION_K8S_GPU_NODE_SELECTOR must map label -> string value, got {sel!r}")
    return sel


def gpu_resource_name() -> str:
    return environment.raw("CURATION_K8S_GPU_RESOURCE") or DEFAULT_GPU_RESOURCE


def gpu_tolerations() -> list[dict[str, Any]]:
    default = [{"key": gpu_resource_name(), "operator": "Exists", "effect": "NoSchedule"}]
    tol = _env_json("CURATION_K8S_GPU_TOLERATIONS", default)
    if not isinstance(tol, list) or not all(isinstance(t, dict) for t in tol):
        raise ValueError(f"CURATION_K8S_GPU_TOLERATIONS must be a JSON list of objects, got {tol!r}")
    return tol


STAGE_KIND_TAG = "curation/stage-kind"  # pod label (and tag of the *_step_tags forms)


def _tags(cfg: Mapping[str, Any], kind: str) -> dict[str, str]:
    return {USER_DEFINED_K8S_CONFIG_KEY: json.dumps(cfg, sort_keys=True), STAGE_KIND_TAG: kind}


def gpu_step_tags(*args, **kwargs) -> dict[str, str]:
    """`op_tags` form (`dagster-k8s/config`) of `gpu_pod_config`."""
    return _tags(gpu_pod_config(*args, **kwargs), "gpu")


def cpu_step_tags(*args, **kwargs) -> dict[str, str]:
    """`op_tags` form (`dagster-k8s/config`) of `cpu_pod_config`."""
    return _tags(cpu_pod_config(*args, **kwargs), "cpu")


def gpu_pod_config(
    gpus: int = 1,
    cpu: str = "4",
    memory: str = "24Gi",
    cpu_limit: str | None = "8",
    memory_limit: str | None = "32Gi",
    deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """Pod config of a GPU step: GPU request = limit (extended resources cannot overcommit), the GPU
    node pool's selector and tolerations, a hard deadline and no autoscaler eviction."""
    if gpus < 1:
        raise ValueError("a GPU step requests at least one GPU")
    gpu = gpu_resource_name()
    deadline = deadline_seconds if deadline_seconds is not None else _env_int(
        "CURATION_K8S_GPU_DEADLINE_S", DEFAULT_GPU_DEADLINE_S)
    limits: dict[str, str] = {gpu: str(gpus)}
    if cpu_limit:
        limits["cpu"] = cpu_limit
    if memory_limit:
        limits["memory"] = memory_limit
    return {
        "container_config": {
            "resources": {"requests": {"cpu": cpu, "memory": memory, gpu: str(gpus)}, "limits": limits},
        },
        "pod_spec_config": {
            "node_selector": gpu_node_selector(),
            "tolerations": gpu_tolerations(),
            "active_deadline_seconds": deadline,
        },
        "pod_template_spec_metadata": {
            "annotations": {SAFE_TO_EVICT: "false"},
            "labels": {STAGE_KIND_TAG: "gpu"},
        },
        # The Job-level deadline covers retries of the pod too; the pod-level one bounds one attempt.
        "job_spec_config": {"active_deadline_seconds": deadline, "backoff_limit": 0},
    }


def cpu_pod_config(
    cpu: str = "2",
    memory: str = "8Gi",
    cpu_limit: str | None = "4",
    memory_limit: str | None = "16Gi",
    deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """Pod config of a CPU step: requests/limits and a deadline; evictable, any (non-GPU) node."""
    deadline = deadline_seconds if deadline_seconds is not None else _env_int(
        "CURATION_K8S_CPU_DEADLINE_S", DEFAULT_CPU_DEADLINE_S)
    limits: dict[str, str] = {}
    if cpu_limit:
        limits["cpu"] = cpu_limit
    if memory_limit:
        limits["memory"] = memory_limit
    return {
        "container_config": {"resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}},
        "pod_spec_config": {"active_deadline_seconds": deadline},
        "pod_template_spec_metadata": {"labels": {STAGE_KIND_TAG: "cpu"}},
        "job_spec_config": {"active_deadline_seconds": deadline, "backoff_limit": 0},
    }


def pod_config(compute) -> dict[str, Any]:
    """The pod config of a registry compute profile (`curation.stages.Compute`)."""
    if compute.kind == "gpu":
        return gpu_pod_config(gpus=compute.gpus, cpu=compute.cpu, memory=compute.memory,
                              cpu_limit=compute.cpu_limit, memory_limit=compute.memory_limit)
    return cpu_pod_config(cpu=compute.cpu, memory=compute.memory, cpu_limit=compute.cpu_limit,
                          memory_limit=compute.memory_limit)


def per_step_k8s_config() -> dict[str, dict[str, Any]]:
    """{op name: pod config} for every stage of the registry (op name = stage name); asset checks'
    steps get the `step_k8s_config` defaults."""
    from curation.stages import STAGES

    return {s.name: pod_config(s.compute) for s in STAGES}


def step_k8s_config() -> dict[str, Any]:
    """Defaults for every step pod; the per-asset tags are deep-merged over these."""
    return {
        "container_config": {
            "security_context": CONTAINER_SECURITY_CONTEXT,
            "volume_mounts": [SCRATCH_MOUNT],
            "env": SCRATCH_ENV,
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        },
        "pod_spec_config": {
            "security_context": POD_SECURITY_CONTEXT,
            "volumes": [SCRATCH_VOLUME],
            "automount_service_account_token": False,
            # Every step is bounded, tagged or not; the tags above set their own deadline.
            "active_deadline_seconds": _env_int("CURATION_K8S_CPU_DEADLINE_S", DEFAULT_CPU_DEADLINE_S),
        },
        "job_spec_config": {
            "ttl_seconds_after_finished": 24 * 3600,
            "active_deadline_seconds": _env_int("CURATION_K8S_CPU_DEADLINE_S", DEFAULT_CPU_DEADLINE_S),
        },
    }


def executor_config() -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "max_concurrent": _env_int("CURATION_K8S_MAX_CONCURRENT", 8),
        "step_k8s_config": step_k8s_config(),
        "per_step_k8s_config": per_step_k8s_config(),
        # A step that fails under its asset's RetryPolicy is re-launched as a new Job.
        "retries": {"enabled": {}},
        # At most one GPU step pod per run at a time; the `gpu` pool bounds them across runs.
        "tag_concurrency_limits": [{"key": COMPUTE_TAG, "value": "gpu", "limit": 1}],
    }
    ns = environment.raw("CURATION_K8S_JOB_NAMESPACE")
    if ns:
        cfg["job_namespace"] = ns
    return cfg


def k8s_executor():
    """The `k8s_job_executor`, configured: one Kubernetes Job per step (set on `Definitions` when
    CURATION_DEPLOYMENT=k8s)."""
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(executor_config(), name="k8s")
