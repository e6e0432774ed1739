"""A Celery cluster on loopback for the distributed-path tests and bench: a private Redis broker
(append-only file, so it can be restarted without losing queues), Celery workers on named queues,
and runs launched with `dagster job execute` (each one its own orchestrating process, as the run
worker the daemon launches). Everything started here is stopped by `Cluster.close()`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXECUTING = "in celery worker"  # dagster-celery's engine event: "Executing steps X in celery worker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    except ProcessLookupError:
        pass


@dataclass
class Cluster:
    work: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    redis: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def broker(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start_broker(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        data = self.work / "redis"
        data.mkdir(parents=True, exist_ok=True)
        with open(data / "redis.log", "ab") as log:
            self.redis = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
                 "--appendfsync", "always", "--save", ""],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port)

    def restart_broker(self, down_s: float = 2.0) -> None:
        """Stop Redis (it writes its append-only file), stay down `down_s`, start it again."""
        _stop(self.redis)
        time.sleep(down_s)
        self.start_broker()

    def worker_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **self.env, "CURATION_CELERY_BROKER": self.broker, "PYTHONPATH": str(ROOT),
                **(extra or {})}

    def start_worker(self, name: str, queue: str, extra_env: dict[str, str] | None = None,
                     timeout: float = 90.0) -> subprocess.Popen:
        log_path = self.work / f"worker-{name}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "orchestration.distributed", "worker", "-Q", queue,
               "-n", f"{name}@%h", "--pool", "solo", "--without-gossip", "--without-mingle", "-l", "INFO"]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.worker_env(extra_env), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.workers[name] = proc
        deadline = time.monotonic() + timeout
        while b" ready." not in log_path.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {name} not ready after {timeout} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        return proc

    def kill_worker(self, name: str) -> None:
        _stop(self.workers[name], signal.SIGKILL)

    def stop_worker(self, name: str) -> None:
        """Warm shutdown: the worker finishes its task and exits."""
        _stop(self.workers[name], signal.SIGTERM, timeout=60)

    def launch(self, keys: list[str], run_config: dict, tag: str,
               extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """`dagster job execute` of curate_shard over the range keys[0]..keys[-1] (one run)."""
        cfg = self.work / f"run-{tag}.yaml"
        cfg.write_text(yaml.safe_dump(run_config))
        tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1],
                "curation/test-run": tag}
        cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "orchestration.definitions",
               "-j", "curate_shard", "-c", str(cfg), "--tags", json.dumps(tags)]
        with open(self.work / f"run-{tag}.log", "ab") as log:
            return subprocess.Popen(cmd, cwd=ROOT, env=self.worker_env(extra_env), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def close(self) -> None:
        for proc in self.workers.values():
            _stop(proc)
        if self.redis is not None:
            _stop(self.redis)


def step_workers(instance, run_id: str) -> dict[str, list[str]]:
    """step key -> the worker hostnames that began executing it, in order (one per delivery)."""
    from dagster import DagsterEventType

    out: dict[str, list[str]] = {}
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    for rec in records:
        entry = rec.event_log_entry
        if entry.dagster_event and EXECUTING in (entry.dagster_event.message or "") and entry.step_key:
            md = entry.dagster_event.engine_event_data.metadata
            out.setdefault(entry.step_key, []).append(md["Celery worker"].value)
    return out


def step_intervals(instance, run_ids: list[str], step_key: str) -> list[tuple[float, float]]:
    """(start, end) wall-clock times of each successful execution of `step_key` in these runs."""
    from dagster import DagsterEventType

    spans = []
    for run_id in run_ids:
        starts = [r.event_log_entry.timestamp for r in
                  instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_START).records
                  if r.event_log_entry.step_key == step_key]
        ends = [r.event_log_entry.timestamp for r in
                instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_SUCCESS).records
                if r.event_log_entry.step_key == step_key]
        if starts and ends:
            spans.append((starts[-1], ends[-1]))
    return spans


def step_success_counts(instance, run_id: str) -> Counter:
    from dagster import DagsterEventType

    return Counter(r.event_log_entry.step_key for r in
                   instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_SUCCESS).records)
