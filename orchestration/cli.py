"""`curate`: the path for users without the daemon.

    curate run [--source NAME=URI ...] [--shard-size N] [--output-root DIR]   (= python -m orchestration.cli)
    curate similar PATH_OR_ID [-k 20] [--html OUT.html] [--output-root DIR]

registers every file of each source that is in no shard yet (shards of --shard-size), adds the
shards as Dagster dynamic partitions in the instance at $DAGSTER_HOME, materialises every stage for
every shard whose report is not materialised yet (in shard order, so cross-shard dedup sees every
earlier shard; the few-shot probe is trained first when examples are configured and no probe is
stored yet, or with --force / --retrain-probe), then writes the corpus summary. Runs go through Dagster
in the real instance: they appear in `dagster dev` / the UI with their logs, metadata and checks.
Re-running resumes: finished shards are skipped (use --force to redo them).

`curate similar` prints the k nearest images of an image id of the corpus (its stored embedding) or
of an image file (embedded with the configured embedder, as the embeddings stage does): rank,
image_id, cosine score, source URI; `--html` also writes a page with their thumbnails.

Flags win over the environment (`resources.environment`); the CLI builds the resources from both
and gives them to every run as run config (recorded on the run), never by changing os.environ. A
bad setting (flag or environment variable, a source folder that is missing or unreadable, an
unknown model name, no DAGSTER_HOME) prints one line naming the setting, the value and what is
allowed, and exits with status 2 before anything is registered or run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from curation.stages import (
    CURATE,
    CURATION_SUMMARY,
    FEW_SHOT,
    FEW_SHOT_PROBE,
    SEMANTIC,
    SEMANTIC_DUPLICATES,
    SHARD_STAGES,
    SUMMARY,
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="curate", description="Register sources as shards and materialise every stage.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="register new files and materialise all stages for every shard")
    run.add_argument("--source", action="append", default=[], help="NAME=URI (local folder or s3://bucket/prefix); repeatable")
    run.add_argument("--shard-size", default=None, help="files per shard, >= 1 (default 10,000 or $CURATION_SHARD_SIZE)")
    run.add_argument("--output-root", default=None,
                     help="output folder or s3:// prefix (default $CURATION_OUTPUT_ROOT or ./data/outputs)")
    run.add_argument("--force", action="store_true", help="re-materialise shards that are already done")
    run.add_argument("--retrain-probe", action="store_true",
                     help="retrain the few-shot probe before the shards (after the examples changed)")
    run.add_argument("--no-summary", action="store_true", help="skip the corpus summary")
    run.add_argument("--semantic", action="store_true",
                     help="also run the optional semantic (embedding) dedup pass on every shard")
    run.add_argument("--verbose", action="store_true", help="print every Dagster event (DEBUG), not only INFO")
    reg = sub.add_parser("register", help="only register new files as shards (no runs)")
    for p in (reg,):
        p.add_argument("--source", action="append", default=[])
        p.add_argument("--shard-size", default=None)
        p.add_argument("--output-root", default=None)
    sim = sub.add_parser("similar", help="the nearest images of an image id or an image file")
    sim.add_argument("query", metavar="PATH_OR_ID", help="an image_id of the corpus, or an image path / s3:// URI")
    sim.add_argument("-k", type=int, default=20, help="neighbours to show (default 20)")
    sim.add_argument("--html", default=None, metavar="OUT.html", help="also write an HTML page with thumbnails")
    sim.add_argument("--output-root", default=None, help="output folder or s3:// prefix (default $CURATION_OUTPUT_ROOT)")
    return ap.parse_args(argv)


def similar(args: argparse.Namespace, environ=None) -> int:
    """`curate similar`: see the module docstring. Bad settings and unanswerable queries: one line, exit 2."""
    from curation import neighbours
    from resources import environment as env

    try:
        if args.k < 1:
            raise env.SettingError("-k", args.k, "a whole number >= 1")
        root = (env.location("--output-root", args.output_root) if args.output_root is not None
                else env.output_root(environ))
        fields = env.embedder_settings(environ, strict=True)

        def embed(uri: str):
            from curation.imaging.policy import rgb_opener
            from resources.models import EmbedderResource, get_cached_embedder

            model = get_cached_embedder(EmbedderResource(**fields, environment_errors=[]).spec())
            stored = neighbours.corpus_model(root)
            if stored is not None and stored != model.model_id:
                raise neighbours.QueryError(f"the corpus was embedded with {stored}, the configured embedder is "
                                            f"{model.model_id}: set EMBEDDER_* to the corpus's model")
            return model.embed_images([rgb_opener(None)(uri)])[0]

        query = neighbours.query_of(root, args.query, embed)
        hits = neighbours.nearest(root, query, args.k)
    except (env.SettingError, neighbours.QueryError) as exc:
        print(f"curate: {exc}", file=sys.stderr)
        return 2
    print(f"{'image_id':<16}  {'score':<6}  uri    ({len(hits)} nearest to {query.label})")
    for h in hits:
        print(f"{h.image_id:<16}  {h.score:.4f}  {h.uri or ''}")
    if args.html:
        neighbours.render_html(query, hits, args.html)
        print(f"wrote {args.html}")
    return 0


def build_resources(args: argparse.Namespace, environ=None) -> dict:
    """The run's resources from the flags, and from the environment where a flag is not given
    (`resources.environment`). Raises `SettingError` (one line) for the first bad value; checks
    that every source can be listed and, for open_clip, that the model name exists."""
    from resources import environment as env
    from resources.classifier import ClassifierSettings
    from resources.corpus import CorpusResource, StageSettings
    from resources.models import EmbedderResource

    sources = env.parse_sources(",".join(args.source), "--source") if args.source else env.sources(environ)
    if args.output_root is not None:
        output_root = env.location("--output-root", args.output_root)
        output_root = output_root if "://" in output_root else os.path.abspath(output_root)
    else:
        output_root = env.output_root(environ)
    shard_size = (env.positive_int("--shard-size", args.shard_size) if args.shard_size is not None
                  else env.shard_size(environ))
    env.check(["CURATION_DEPLOYMENT", "CURATION_BACKFILL_SHARDS_PER_RUN"], environ)
    corpus = CorpusResource(output_root=output_root, sources=sources, shard_size=shard_size, environment_errors=[])
    for name, uri in sorted(sources.items()):
        env.check_source(name, uri, "--source" if args.source else "CURATION_SOURCES")
    embedder_fields = env.embedder_settings(environ, strict=True)
    env.check_model_name("EMBEDDER_MODEL", embedder_fields["kind"], embedder_fields["model_name"], deep=True)
    return {
        "corpus": corpus,
        "settings": StageSettings(),
        "embedder": EmbedderResource(**embedder_fields, environment_errors=[]),
        "classifier": ClassifierSettings(fewshot_uri=env.fewshot_uri(environ), environment_errors=[]),
    }


def run_config_for(resources: dict) -> dict:
    """Run config that gives every run these resources' values (recorded on the run, shown in the UI)."""
    def value(v):
        return v.model_dump() if hasattr(v, "model_dump") else v

    return {"resources": {key: {"config": {name: value(getattr(res, name)) for name in type(res).model_fields}}
                          for key, res in resources.items()}}


def register_all(instance, corpus) -> list[str]:
    """Register new files of every source; make sure every registered shard is a Dagster partition."""
    from curation.sources import ListingSkips
    from partitions.discovery import TickResult, discover_all
    from partitions.shards import SHARDS

    registry = corpus.registry()
    for name, uri in sorted(corpus.sources.items()):
        skipped = ListingSkips()
        new = discover_all(registry, name, uri, shard_size=corpus.shard_size, page_size=corpus.page_size,
                           skipped=skipped)
        note = TickResult(skipped=skipped).skipped_note()
        print(f"source {name}: {len(new)} new shard(s) {[s.key for s in new]}{'; ' + note if note else ''}", flush=True)
    keys = registry.keys()
    known = set(instance.get_dynamic_partitions(SHARDS.name))
    missing = [k for k in keys if k not in known]
    if missing:
        instance.add_dynamic_partitions(SHARDS.name, missing)
    return keys


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_cli_runs(instance) -> list[str]:
    """Run monitoring for the daemon-less path: a CLI run whose process died (killed, OOM) is left
    STARTED in the instance and keeps its `gpu` pool slot, which would block every later run. Mark
    such runs failed and free their slots, as the daemon's run monitoring does for launched runs."""
    import socket

    import dagster as dg

    reaped = []
    records = instance.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
                              tags={"curation/launched_by": "cli"})
    )
    for run in records:
        host, pid = run.tags.get("curation/cli_host"), run.tags.get("curation/cli_pid")
        if host != socket.gethostname() or not pid or _pid_alive(int(pid)):
            continue
        instance.report_run_failed(run, message=f"the CLI process {pid} that ran this run is gone (killed?)")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    if reaped:
        print(f"marked {len(reaped)} run(s) of dead CLI processes failed and freed their pool slots", flush=True)
    return reaped


def active_runs_by_shard(instance, keys: list[str]) -> dict[str, str]:
    """Shards that already have a queued or running run (an automatic retry the daemon queued, a
    backfill, a run launched from the UI, another CLI): {shard: run id}. `curate run` skips them
    rather than run the same partition twice at once."""
    import dagster as dg

    wanted = set(keys)
    active = instance.get_runs(filters=dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED]))
    return {run.tags["dagster/partition"]: run.run_id for run in active
            if run.tags.get("dagster/partition") in wanted}


def shards_done(instance, keys: list[str], stages=None) -> set[str]:
    """Shards whose every partitioned stage is materialised. A stage partition recorded as failed
    after its materialisation (e.g. its file was found corrupt and deleted, see
    assets._common.read_stage) or never materialised makes the shard to-do again."""
    import dagster as dg
    from dagster._core.storage.partition_status_cache import AssetPartitionStatus

    from partitions.shards import SHARDS

    done = set(keys)
    for stage in stages or SHARD_STAGES:
        status = instance.get_status_by_partition(dg.AssetKey(stage), list(keys), SHARDS) or {}
        done &= {k for k, st in status.items() if st == AssetPartitionStatus.MATERIALIZED}
    return done


def _probe_ready(instance, corpus, classifier, retrain: bool) -> bool:
    """True when no probe is wanted (few-shot disabled) or one is stored and materialised in this
    instance (and no retraining was asked for)."""
    import dagster as dg

    from assets.classifications import probe_uri
    from curation import storage

    if not classifier.fewshot_uri:
        return True
    if retrain or not storage.exists(probe_uri(corpus)):
        return False
    return instance.get_latest_materialization_event(dg.AssetKey(FEW_SHOT_PROBE)) is not None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.cmd == "similar":
        return similar(args)
    from resources import environment as env

    try:
        env.dagster_home()
        resources = build_resources(args)
    except env.SettingError as exc:
        print(f"curate: {exc}", file=sys.stderr)
        return 2
    import socket

    import dagster as dg
    from tqdm import tqdm

    from orchestration import console
    from orchestration.definitions import defs
    from orchestration.jobs import JOB_OF

    instance = dg.DagsterInstance.get()
    reap_dead_cli_runs(instance)
    corpus = resources["corpus"]
    run_config = {**run_config_for(resources), **console.logger_config(getattr(args, "verbose", False))}
    keys = register_all(instance, corpus)
    if args.cmd == "register":
        print(f"{len(keys)} shard(s) registered")
        return 0
    done = shards_done(instance, keys)
    todo = [k for k in keys if args.force or k not in done]
    busy = active_runs_by_shard(instance, todo)
    for key, run_id in busy.items():
        print(f"shard {key}: skipped, run {run_id} is already queued or running for it (an automatic "
              "retry or a launched run): wait for it or cancel it in the UI", flush=True)
    todo = [k for k in todo if k not in busy]
    print(f"{len(keys)} shard(s); {len(todo)} to materialise", flush=True)
    def job_of(stage: str) -> dg.JobDefinition:
        return console.with_short_console(defs.resolve_job_def(JOB_OF[stage]))

    def execute(job: dg.JobDefinition, heartbeat: str | None = None, **kwargs):
        """Run `job` in process; print one line per materialised stage (and a heartbeat if asked)."""
        with console.Heartbeat(heartbeat) if heartbeat else contextlib.nullcontext():
            result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                            **kwargs)
        console.print_stage_lines(result)
        return result

    job = job_of(CURATE)
    failed = []
    t0 = time.monotonic()
    cli_tags = {"curation/launched_by": "cli", "curation/cli_pid": str(os.getpid()),
                "curation/cli_host": socket.gethostname()}
    if not _probe_ready(instance, corpus, resources["classifier"], args.force or args.retrain_probe):
        # image_classifications reads the stored probe and never trains it: train it first
        print(f"training {FEW_SHOT_PROBE} on {resources['classifier'].fewshot_uri}", flush=True)
        result = execute(job_of(FEW_SHOT), heartbeat=FEW_SHOT_PROBE, tags=cli_tags)
        if not result.success:
            print(f"{FEW_SHOT_PROBE}: run {result.run_id} FAILED (see the run in the UI); no shard was run",
                  flush=True)
            return 1
    for key in tqdm(todo, desc="shards", unit="shard", file=sys.stdout, disable=None):
        result = execute(job, partition_key=key, tags={"curation/shard": key, **cli_tags})
        if not result.success:
            failed.append(key)
            console.emit(f"shard {key}: run {result.run_id} FAILED (see the run in the UI)")
        elif not sys.stdout.isatty():  # the bar is hidden when output is piped: one line per shard
            console.emit(f"shard {key} done ({todo.index(key) + 1}/{len(todo)}, "
                         f"{time.monotonic() - t0:.0f} s so far)")
    if args.semantic and not failed:
        sem_done = shards_done(instance, keys, stages=[SEMANTIC_DUPLICATES])
        sem_job = job_of(SEMANTIC)
        sem_todo = [k for k in keys if args.force or k not in sem_done]
        for i, key in enumerate(sem_todo):  # in order: each needs the earlier ones
            console.emit(f"semantic pass: shard {key} ({i + 1}/{len(sem_todo)})")
            if not execute(sem_job, heartbeat=f"{SEMANTIC_DUPLICATES}[{key}]", partition_key=key,
                           tags={**cli_tags, "curation/shard": key}).success:
                failed.append(f"{SEMANTIC_DUPLICATES}[{key}]")
                break
    if not args.no_summary and not failed:
        console.emit(f"corpus summary: {len(keys)} shard(s)")
        result = execute(job_of(SUMMARY), heartbeat=CURATION_SUMMARY, tags=cli_tags)
        if not result.success:
            failed.append(CURATION_SUMMARY)
    print(console.summary_line(len(keys), len(todo), failed, time.monotonic() - t0))
    report = os.path.join(corpus.output_root, "reports", "corpus", "report.html")
    print(f"corpus report: {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
