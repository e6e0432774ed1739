"""The sensor that turns new files in the configured sources into shards and runs."""


import json
import time

import dagster as dg

from partitions.discovery import SourceCursor, discover_page
from partitions.shards import SHARDS, SHARDS_NAME
from resources import environment
from resources.corpus import CorpusResource

# Stop listing new pages well inside Dagster's default 60 s sensor evaluation limit.
TICK_BUDGET_S = 40.0


def shard_run_requests(keys: list[str], job_name: str | None = None) -> list[dg.RunRequest]:
    return [dg.RunRequest(run_key=f"shard:{k}", partition_key=k, tags={"curation/shard": k}) for k in keys]


def evaluate_new_files(context: dg.SensorEvaluationContext, corpus: CorpusResource) -> dg.SensorResult:
    """One tick: reconcile registered shards with Dagster's partitions, then page through each source.

    Registered-but-unknown shards (e.g. the registry was written but the tick that did so crashed
    before its result was committed) are added and requested too, so nothing registered is lost.
    A source that does not exist or cannot be listed fails the tick with one line naming it, unless
    other sources produced runs this tick (then it is logged as an error and the runs go ahead).
    """
    state = json.loads(context.cursor) if context.cursor else {}
    cursors = {name: SourceCursor.from_json(state.get(name)) for name in corpus.sources}
    registry = corpus.registry()
    known = set(context.instance.get_dynamic_partitions(SHARDS_NAME))
    registered = registry.keys()
    missing = [k for k in registered if k not in known]
    new_keys: list[str] = list(missing)
    started = time.monotonic()
    notes: list[str] = []
    failed: list[str] = []
    for name, uri in sorted(corpus.sources.items()):
        if time.monotonic() - started > TICK_BUDGET_S:
            notes.append(f"{name}: skipped this tick (time budget)")
            continue
        try:
            environment.check_source(name, uri, "CorpusResource.sources")
            res = discover_page(registry, name, uri, cursors[name], shard_size=corpus.shard_size, page_size=corpus.page_size)
        except (environment.SettingError, FileNotFoundError) as exc:
            failed.append(str(exc))
            continue
        cursors[name] = res.cursor
        new_keys.extend(s.key for s in res.shards)
        excluded = f", {res.skipped_note()}" if res.skipped.total else ""
        notes.append(f"{name}: listed {res.listed}, new {res.new_files}, shards {[s.key for s in res.shards]}{excluded}")
    cursor = json.dumps({k: c.to_json() for k, c in cursors.items()}, sort_keys=True)
    if notes or not failed:  # (when every source failed, the error below is the whole story)
        context.log.info("; ".join(notes) or "no sources configured")
    if failed:
        context.log.error("; ".join(failed))
        if not new_keys:  # a source that cannot be listed fails the tick (red in the UI), not a grey skip
            raise dg.Failure("; ".join(failed), allow_retries=False)
    if not new_keys:
        return dg.SensorResult(skip_reason="no new files: " + "; ".join(notes), cursor=cursor)
    return dg.SensorResult(
        run_requests=shard_run_requests(new_keys),
        dynamic_partitions_requests=[SHARDS.build_add_request(new_keys)],
        cursor=cursor,
    )


def build_new_files_sensor(job, interval_s: int = 60) -> dg.SensorDefinition:
    @dg.sensor(
        name="new_files_sensor",
        job=job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Registers files that are in no shard yet as new shards and requests a curation run for each.",
    )
    def new_files_sensor(context: dg.SensorEvaluationContext, corpus: CorpusResource) -> dg.SensorResult:
        return evaluate_new_files(context, corpus)

    return new_files_sensor
