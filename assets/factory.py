"""The asset factory: Dagster assets built from the stage registry (curation/stages.py).

`stage_asset(name)` decorates a stage's compute function. Everything declarative comes from the
registry: the asset key and op name (the stage's name), upstream deps, group, kinds, description,
partitions (shards, multi-run backfill policy), retry policy and the compute profile. The profile
is abstract here: the op tag `curation/compute: cpu|gpu` (plus `pool="gpu"` on GPU stages, which
bounds GPU steps across runs); the orchestration layer maps it to pod specs (orchestration/k8s.py).
A stage that writes more datasets than its own table becomes a `@dg.multi_asset` with one
`AssetSpec` per dataset, so the asset graph shows every dataset with its one writer; its compute
function returns one `MaterializeResult` per dataset written (see `_common.per_shard_outputs`).
A stage's `sources` (observed external inputs, e.g. the few-shot examples folder) are deps too.

`with_freshness(assets_def, versions, conditions)` is the hook that sets what depends on the
deployment's settings, once the definitions know their resources (assets/freshness.py): each
asset's `code_version` (by its writer stage) and `automation_condition` (by asset name).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import dagster as dg

from assets._common import OWNERS, backfill_policy, retry_policy
from curation.stages import COMPUTE_TAG, GPU_POOL, Stage, stage, writer_of
from partitions.shards import SHARDS


def compute_tags(st: Stage) -> dict[str, str]:
    return {COMPUTE_TAG: st.compute.kind}


def _common(st: Stage) -> dict:
    out: dict = {"op_tags": compute_tags(st), "retry_policy": retry_policy(st.retry)}
    if st.compute.kind == "gpu":
        out["pool"] = GPU_POOL
    if st.partitioned:
        out.update(partitions_def=SHARDS, backfill_policy=backfill_policy())
    return out


def _deps(st: Stage) -> list[dg.AssetKey]:
    return [dg.AssetKey(u) for u in (*st.upstream, *st.sources)]


def _specs(st: Stage) -> list[dg.AssetSpec]:
    deps = _deps(st)
    parts = SHARDS if st.partitioned else None
    own = dg.AssetSpec(st.name, deps=deps, group_name=st.group, kinds=set(st.kinds), owners=OWNERS,
                       description=st.description, partitions_def=parts)
    extra = [dg.AssetSpec(d.name, deps=deps, group_name=st.group, kinds=set(d.kinds), owners=OWNERS,
                          description=f"{d.description} Written by the {st.name} step.", skippable=d.skippable,
                          metadata={"written_by": st.name}, partitions_def=parts)
             for d in st.also_writes]
    return [own, *extra]


def stage_asset(name: str, **extra) -> Callable[[Callable], dg.AssetsDefinition]:
    """Decorator: the registry's stage `name` as an asset (or multi-asset) computed by the function."""
    st = stage(name)

    def build(fn: Callable) -> dg.AssetsDefinition:
        if st.also_writes:
            return dg.multi_asset(name=st.name, specs=_specs(st), **_common(st), **extra)(fn)
        return dg.asset(name=st.name, deps=_deps(st), group_name=st.group,
                        kinds=set(st.kinds), owners=OWNERS, description=st.description,
                        **_common(st), **extra)(fn)

    return build


def with_freshness(assets_def: dg.AssetsDefinition, versions: Mapping[str, str],
                   conditions: Mapping[str, dg.AutomationCondition]) -> dg.AssetsDefinition:
    """`assets_def` with each asset's code_version = `versions[writer stage]` and automation
    condition = `conditions.get(asset name)` (unchanged where neither applies)."""

    def update(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.key.to_user_string()
        version = versions.get(writer_of(name).name, spec.code_version)
        return spec.replace_attributes(code_version=version,
                                       automation_condition=conditions.get(name, spec.automation_condition))

    return assets_def.map_asset_specs(update)
