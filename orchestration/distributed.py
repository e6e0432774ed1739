"""Several machines without Kubernetes: Dagster steps on Celery workers (CURATION_DEPLOYMENT=celery).

Contract
- A run's orchestrator (the run worker the daemon launches, one process per run) sends each step as
  one Celery task to a queue and waits for its events; the task executes the step *inside* a
  long-lived worker process, so a step costs no process start-up, and a step covers every shard of
  its run (backfills run several shards per run, assets/_common.py BACKFILL_POLICY).
- Routing: `queue_for_profile(profile)` maps a step's compute profile to its queue: `gpu` to `gpu`
  (consumed only by workers started on GPU hosts: `celery -A orchestration.distributed worker -Q gpu`),
  `cpu` to `cpu`. `step_profile` reads the profile from the step (tag `curation/compute` set by
  the stage registry, else the k8s stage-kind tag, else its `gpu` pool); an explicit `dagster-celery/queue` op tag wins.
  The `gpu` pool still bounds GPU steps across runs: the orchestrator claims the pool slot before it
  sends the task.
- Code version: every task carries the run's `code_version()`. A worker whose own version differs
  refuses the task: it reports an engine event naming itself and both versions to the run, hands the
  task back for another worker (`WRONG_VERSION_RETRIES` times), then fails it with that message.
- Failures: a task is acknowledged only after its step finished (`acks_late`), so a worker killed
  mid-step leaves it unacknowledged and the broker re-delivers it to another worker after the
  visibility timeout; steps already finished are never sent again. While the broker is down,
  publishing, result reads and workers retry the connection, and Redis's append-only file keeps the
  queues across a restart.

Settings (environment, the same on every host):
  CURATION_CELERY_BROKER                Redis URL (default redis://127.0.0.1:6379/0)
  CURATION_CELERY_BACKEND               result backend URL (default: the broker URL)
  CURATION_CELERY_VISIBILITY_TIMEOUT_S  seconds before an unacknowledged task is re-delivered; must
                                        exceed the longest step (default 7200)
  CURATION_CODE_VERSION                 the deployed code version (default: a hash of the sources)
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from curation.stages import COMPUTE_TAG
from resources import environment

QUEUE_TAG = "dagster-celery/queue"  # == dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG
PROFILE_TAG = COMPUTE_TAG  # "curation/compute": cpu | gpu, set on every stage by the registry
QUEUES = ("cpu", "gpu")
TASK_NAME = "curation.execute_step"
WRONG_VERSION_RETRIES = 3
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_VISIBILITY_TIMEOUT_S = 7200
SOURCE_PACKAGES = ("assets", "curation", "orchestration", "partitions", "resources")
ROOT = Path(__file__).resolve().parent.parent


def queue_for_profile(profile: str) -> str:
    """The Celery queue of a compute profile: the one place that decides where a stage runs."""
    queues = {"gpu": "gpu", "cpu": "cpu"}
    if profile not in queues:
        raise ValueError(f"compute profile {profile!r}: expected one of {sorted(queues)}")
    return queues[profile]


def step_profile(tags: Mapping[str, str], pool: str | None = None) -> str:
    from orchestration.k8s import STAGE_KIND_TAG

    return tags.get(PROFILE_TAG) or tags.get(STAGE_KIND_TAG) or ("gpu" if pool == "gpu" else "cpu")


def queue_for_step(tags: Mapping[str, str], pool: str | None = None) -> str:
    return tags.get(QUEUE_TAG) or queue_for_profile(step_profile(tags, pool))


@functools.cache
def code_version() -> str:
    """CURATION_CODE_VERSION, else sha256 (16 hex) of every .py file of the code location's packages."""
    env = environment.raw("CURATION_CODE_VERSION")
    if env:
        return env
    h = hashlib.sha256()
    for pkg in SOURCE_PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _env_int(name: str, default: int) -> int:
    raw = environment.raw(name)
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a whole number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: expected a positive number of seconds")
    return value


def celery_config() -> dict[str, Any]:
    broker = environment.raw("CURATION_CELERY_BROKER") or DEFAULT_BROKER
    if not broker.startswith(("redis://", "rediss://")):
        raise ValueError(f"CURATION_CELERY_BROKER={broker!r}: expected a redis:// or rediss:// URL")
    visibility = _env_int("CURATION_CELERY_VISIBILITY_TIMEOUT_S", DEFAULT_VISIBILITY_TIMEOUT_S)
    retry = {"max_retries": 120, "interval_start": 0, "interval_step": 0.5, "interval_max": 1.0}
    return {
        "broker_url": broker,
        "result_backend": environment.raw("CURATION_CELERY_BACKEND") or broker,
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_default_queue": "cpu",
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # a task is acked when its step is done: a killed worker's step is delivered again
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # every idle worker sweeps for tasks of dead workers every 5 s
        "broker_transport_options": {"visibility_timeout": visibility, "unacked_restore_interval": 5,
                                     "unacked_restore_throttle": 1},
        # ride out a broker restart: publishers, result readers and workers retry
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_publish_retry": True,
        "task_publish_retry_policy": retry,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 120,
        "result_backend_max_sleep_between_retries_ms": 1000,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "result_expires": 7 * 24 * 3600,
    }


class WrongCodeVersion(RuntimeError):
    pass


def make_app() -> Celery:
    from dagster_celery.tasks import create_task

    app = Celery("curation")
    app.conf.update(celery_config())
    plan_task = create_task(app)  # dagster-celery's step task, run by ours after the version check

    @app.task(bind=True, name=TASK_NAME, max_retries=WRONG_VERSION_RETRIES)
    def execute_step(self, execute_step_args_packed: dict, executable_dict: dict, run_code_version: str):
        mine = code_version()
        if run_code_version != mine:
            _refuse(self, execute_step_args_packed, run_code_version, mine)
        plan_task.push_request(id=self.request.id, hostname=self.request.hostname)
        try:
            return plan_task.run(execute_step_args_packed, executable_dict)
        finally:
            plan_task.pop_request()

    return app


def _refuse(task, packed: dict, wanted: str, mine: str) -> None:
    from dagster import DagsterInstance
    from dagster._core.events import EngineEventData
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import unpack_value

    args = unpack_value(packed, as_type=ExecuteStepArgs)
    steps = ", ".join(args.step_keys_to_execute or [])
    msg = (f"worker {task.request.hostname} refused step {steps}: it runs code version {mine}, the run "
           f"needs {wanted}; restart the worker with the deployed code (CURATION_CODE_VERSION)")
    if args.instance_ref is not None:  # dagster-celery always packs it; without it there is no run to log to
        with DagsterInstance.from_ref(args.instance_ref) as instance:
            run = instance.get_run_by_id(args.run_id)
            instance.report_engine_event(msg, run, EngineEventData({"worker": task.request.hostname,
                                                                   "worker_code_version": mine,
                                                                   "run_code_version": wanted}))
    if task.request.retries < WRONG_VERSION_RETRIES:
        raise task.retry(countdown=1)  # back to the queue, for a worker with the right code
    raise WrongCodeVersion(msg)


app = make_app()


def _routed_plan(plan):
    """The plan with every step's queue written into its tags, so the stock loop sends and logs it."""
    from dagster._core.execution.plan.step import ExecutionStep

    steps = {h: s._replace(tags={**s.tags, QUEUE_TAG: queue_for_step(s.tags, s.pool)})
             if isinstance(s, ExecutionStep) else s for h, s in plan.step_dict.items()}
    return plan._replace(step_dict=steps, step_dict_by_key={s.key: s for s in steps.values()})


def _submit(_app, plan_context, step, queue, priority, known_state):
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import pack_value

    args = ExecuteStepArgs(
        job_origin=plan_context.reconstructable_job.get_python_origin(),
        run_id=plan_context.dagster_run.run_id,
        step_keys_to_execute=[step.key],
        instance_ref=plan_context.instance.get_ref(),
        retry_mode=plan_context.executor.retries.for_inner_plan(),
        known_state=known_state,
        print_serialized_events=True,
    )
    sig = app.signature(TASK_NAME, kwargs={
        "execute_step_args_packed": pack_value(args),
        "executable_dict": plan_context.reconstructable_job.to_dict(),
        "run_code_version": code_version(),
    }, immutable=True)
    return sig.apply_async(priority=priority, queue=queue, routing_key=queue)


def celery_executor():
    """The executor for CURATION_DEPLOYMENT=celery: dagster-celery's loop, our queues and task."""
    import dagster as dg
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.core_execution_loop import core_celery_execution_loop
    from dagster_celery.executor import CeleryExecutor

    class CurationCeleryExecutor(CeleryExecutor):
        def execute(self, plan_context, execution_plan):
            return core_celery_execution_loop(plan_context, _routed_plan(execution_plan), step_execution_fn=_submit)

    @dg.executor(name="celery", requirements=dg.multiple_process_executor_requirements())
    def curation_celery(_init_context):
        conf = celery_config()
        return CurationCeleryExecutor(
            retries=RetryMode.ENABLED, broker=conf["broker_url"], backend=conf["result_backend"],
            config_source={"task_default_queue": conf["task_default_queue"]})

    return curation_celery
