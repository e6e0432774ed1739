"""Snapshot of the code location: every asset (key, deps, partitions, group, kinds, compute tags,
pool, retry, backfill policy), every asset check (blocking or not), job (selection) and sensor.

A change to the definitions fails this test until the snapshot is regenerated on purpose:

    UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/unit/test_definitions_snapshot.py

so a review sees exactly what changed in the graph (the diff of tests/snapshots/definitions.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

SNAPSHOT = Path(__file__).resolve().parent.parent / "snapshots" / "definitions.json"


def _partitions(pd) -> str | None:
    if pd is None:
        return None
    return f"{type(pd).__name__}:{getattr(pd, 'name', '') or ''}"


def _retry(assets_def) -> str | None:
    policy = getattr(assets_def.op, "retry_policy", None) if assets_def.is_executable else None
    return f"{policy.max_retries}x{policy.delay}s" if policy else None


def snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        spec_tags = {k: v for k, v in (node.tags or {}).items() if not k.startswith("dagster/kind/")}
        assets[key.to_user_string()] = {
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "partitions": _partitions(node.partitions_def),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "tags": dict(sorted(spec_tags.items())),
            "op_tags": dict(sorted((node.assets_def.op.tags or {}).items())) if node.assets_def.is_executable else {},
            "retry": _retry(node.assets_def),
            "owners": sorted(node.owners),
            "pools": sorted(node.pools or []) if hasattr(node, "pools") else None,
            "backfill_policy": str(node.backfill_policy.policy_type) if node.backfill_policy else None,
            "code_version": node.code_version,
            "automation": type(node.automation_condition).__name__ if node.automation_condition else None,
            "checks": sorted(c.name for c in node.check_keys) if hasattr(node, "check_keys") else [],
        }
    checks = {}
    for ck in sorted(graph.asset_check_keys, key=lambda c: (c.asset_key.to_user_string(), c.name)):
        spec = graph.get_check_spec(ck)
        checks[f"{ck.asset_key.to_user_string()}:{ck.name}"] = {"blocking": bool(spec.blocking)}
    jobs = {}
    for job in defs.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue
        keys = sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys) if job.asset_layer else []
        jobs[job.name] = {"assets": keys, "partitioned": job.partitions_def is not None,
                          "tags": dict(sorted((job.tags or {}).items()))}
    sensors = {s.name: {"job": s.job_name, "default_status": str(s.default_status),
                        "interval_s": s.minimum_interval_seconds} for s in (defs.sensors or [])}
    return {"assets": assets, "checks": checks, "jobs": dict(sorted(jobs.items())), "sensors": sensors}


def test_definitions_match_the_snapshot():
    from orchestration.definitions import defs

    current = snapshot(defs)
    text = json.dumps(current, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(text)
    stored = json.loads(SNAPSHOT.read_text())
    assert current == stored, ("the definitions changed: review, then regenerate with UPDATE_SNAPSHOTS=1 "
                               f"(see {SNAPSHOT.name} diff)")
