"""The measured million-image run: 1,000,000 real images (bench/million_corpus.py: re-encoded,
resized, cropped and recoloured copies of packaged images, in known duplicate groups spread over
the shards) through stages 1-3 (raw_inventory, dedup_clusters + dedup_index, curated_images) and the
shard reports, 100 shards of 10,000, through Dagster on the real instance (SQLite, then Postgres).
Not in CI and not in `make bench` (it takes hours on the 2-core VM):

    .venv/bin/python -m bench.million --images 1000000 --backend sqlite   [--work DIR] [--resume]
    .venv/bin/python -m bench.million --images 1000000 --backend postgres --resume   # same corpus
    .venv/bin/python -m bench.million --report                                        # JSON + plot only

How it runs: the corpus is generated (2 processes, seeded, resumable) under <work>/corpus; a driver
process (`python -m bench.million _drive`) does what `curate run` does (resources from the
environment, `register_all` into the instance, one `execute_in_process` per shard, in shard order,
the in-process executor `curate run` uses) but with the job narrowed to stages 1-3 and
`shard_report` (the embedding stages are left out: on CPU they are out of reach for 1M here; see
`--embed-sample`). The shard is skipped when all its selected stages are materialised (so a killed
run resumes). Per shard the driver records wall time, each stage's `elapsed_s` from its
materialisation metadata, the cross-shard dedup load (seconds, rows, bytes the process read through
read(2) while loading the earlier shards' index blocks: /proc/self/io rchar) and appends it to
<work>/<backend>/shards.jsonl. This process samples every process of the driver's tree (driver,
forkserver, inventory workers) from /proc every 0.5 s for peak RSS. After the shards: the corpus
roll-up (`curation_summary`), the instance size (SQLite files under DAGSTER_HOME, or Postgres
pg_database_size of the bench's own database), and dedup pair precision/recall of the
dedup_clusters outputs against the manifest's groups (bench.accuracy.pair_scores). bench/results/
million.json holds every backend run so far; bench/results/million_shards.png plots seconds per
shard against shard index.

`--embed-sample N`: image_embeddings (the default offline embedder, CPU) on the first N images of
shard 1 in a separate instance, reported as images per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO, machine, today
from bench.inventory import _cmdline, _descendants, _proc_status

RESULTS = REPO / "bench" / "results"
OUT_JSON = RESULTS / "million.json"
OUT_PNG = RESULTS / "million_shards.png"
DEFAULT_WORK = Path("/tmp/curation_million")
SOURCE = "m"
SELECTED = ("raw_inventory", "dedup_clusters", "dedup_index", "curated_images", "shard_report")
TIMED = ("raw_inventory", "dedup_clusters", "curated_images", "shard_report")
PG_DB = "curation_million_bench"
TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ the driver (child process)


def _drive(args: argparse.Namespace) -> int:
    """Runs in the child: register, then one in-process Dagster run per shard still to do."""
    import dagster as dg

    import assets.dedup as dedup_mod
    from orchestration import cli, console
    from orchestration.definitions import defs

    ns = argparse.Namespace(source=[], output_root=None, shard_size=None)
    resources = cli.build_resources(ns)
    instance = dg.DagsterInstance.get()
    cli.reap_dead_cli_runs(instance)
    corpus = resources["corpus"]
    t_reg = time.monotonic()
    keys = cli.register_all(instance, corpus)
    register_s = time.monotonic() - t_reg
    selected = (*SELECTED, "image_embeddings") if args.embed else SELECTED
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey(a) for a in selected})
    job = console.with_short_console(job)
    run_config = {**cli.run_config_for(resources), **console.logger_config(False)}
    done = cli.shards_done(instance, keys, stages=[a for a in selected if a != "dedup_index"])
    keys = keys[: args.max_shards] if args.max_shards else keys
    out = Path(args.rows)
    with out.open("a") as fh:
        fh.write(json.dumps({"event": "registered", "shards": len(keys), "register_s": round(register_s, 2),
                             "t": time.time()}) + "\n")

    load_stats: dict = {}
    original = dedup_mod.load_earlier_index

    def measured_load(corpus_, keys_, shard, context=None):
        r0, t0 = _rchar(), time.monotonic()
        res = original(corpus_, keys_, shard, context)
        load_stats.update(seconds=time.monotonic() - t0, bytes_read=_rchar() - r0,
                          rows=0 if res is None else res.height)
        return res

    dedup_mod.load_earlier_index = measured_load  # bench instrumentation: wraps, does not change, the load
    stopped = False
    for i, key in enumerate(keys, 1):
        if key in done:
            continue
        if args.stop_at and time.time() > args.stop_at:
            print(f"--stop-at reached: shard {key} and later not run", flush=True)
            stopped = True
            break
        load_stats.clear()
        t0, w0 = time.monotonic(), time.time()
        cpu0 = os.times()
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                        partition_key=key, tags={"curation/shard": key, "curation/launched_by": "bench"})
        wall = time.monotonic() - t0
        cpu1 = os.times()
        stages = {}
        for ev in result.get_asset_materialization_events():
            mat = ev.event_specific_data.materialization
            name = mat.asset_key.to_user_string()
            md = mat.metadata
            if (name in TIMED or name == "image_embeddings") and "elapsed_s" in md:
                stages[name] = float(md["elapsed_s"].value)
            if name == "image_embeddings" and "embedded" in md:
                stages["meta:embedded"] = int(md["embedded"].value)
            if name == "dedup_clusters":
                for k in ("cross_shard_duplicates", "duplicates", "earlier_shards_compared"):
                    if k in md:
                        stages[f"meta:{k}"] = int(md[k].value)
        row = {"event": "shard", "index": i, "shard": key, "success": result.success, "run_id": result.run_id,
               "wall_s": round(wall, 2), "t_start": w0, "t_end": time.time(),
               "cpu_s_driver": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 2),
               "stages_s": {k: round(v, 3) for k, v in stages.items() if not k.startswith("meta:")},
               "dedup": {k[5:]: v for k, v in stages.items() if k.startswith("meta:")},
               "earlier_index_load": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in load_stats.items()},
               "loadavg": os.getloadavg()}
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"shard {i}/{len(keys)} {key}: {wall:.1f} s {row['stages_s']} load {row['earlier_index_load']}",
              flush=True)
        if not result.success:
            return 1
    if args.summary and not stopped:  # the corpus roll-up needs every shard
        summary = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={dg.AssetKey("curation_summary")})
        t0 = time.monotonic()
        res = console.with_short_console(summary).execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False, tags={"curation/launched_by": "bench"})
        with out.open("a") as fh:
            fh.write(json.dumps({"event": "summary", "success": res.success,
                                 "wall_s": round(time.monotonic() - t0, 2), "t": time.time()}) + "\n")
    return 0


def _rchar() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------------ RSS sampler


def _role(pid: int, depth: int) -> str:
    """driver; forkserver (the driver's multiprocessing server); inventory_worker (a process the
    forkserver forked: stage 1's decode pool, which keeps the forkserver's command line); else the
    program name."""
    cmd = _cmdline(pid)
    if depth == 0:
        return "driver"
    if "forkserver" in cmd:
        return "forkserver" if depth == 1 else "inventory_worker"
    if "resource_tracker" in cmd:
        return "resource_tracker"
    return f"other:{os.path.basename(cmd.split(' ', 1)[0]) or '?'}"


class RssSampler(threading.Thread):
    """Polls the process tree under `root` every `every_s`: peak RSS per pid (with its role), and a
    time series of (t, driver RSS, sum of all RSS)."""

    def __init__(self, root: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.every_s = root, every_s
        self.peak: dict[int, dict] = {}
        self.series: list[tuple[float, int, int, float]] = []
        self.cpu: dict[int, float] = {}  # last-seen utime+stime per pid (dead pids keep theirs)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = driver = 0
            for pid, depth in [(self.root, 0), *_descendants(self.root)]:
                rss = _proc_status(pid, "VmRSS")
                if rss is None:
                    continue
                total += rss
                try:
                    with open(f"/proc/{pid}/stat") as fh:
                        f = fh.read().rsplit(")", 1)[1].split()
                    self.cpu[pid] = (int(f[11]) + int(f[12])) / TICK
                except (OSError, IndexError, ValueError):
                    pass
                if depth == 0:
                    driver = rss
                rec = self.peak.setdefault(pid, {"role": _role(pid, depth), "peak_kib": 0})
                rec["peak_kib"] = max(rec["peak_kib"], rss)
            self.series.append((time.time(), driver, total, round(sum(self.cpu.values()), 2)))
            self.stop.wait(self.every_s)


# ------------------------------------------------------------------------------ parent


def _env(work: Path, backend: str, shard_size: int, source: Path | None = None) -> dict:
    home, out = work / backend / "home", work / backend / "out"
    source = source or work / "corpus"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATION_", "DAGSTER_"))}
    if backend != "postgres":
        shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    else:
        shutil.copyfile(REPO / "deploy" / "dagster-prod.yaml", home / "dagster.yaml")
        env.update(DAGSTER_PG_HOST="127.0.0.1", DAGSTER_PG_PORT="5432", DAGSTER_PG_DB=PG_DB,
                   DAGSTER_PG_USERNAME="postgres", DAGSTER_PG_PASSWORD="",
                   DAGSTER_COMPUTE_LOG_DIR=str(work / backend / "compute_logs"))
    env.update(DAGSTER_HOME=str(home), CURATION_OUTPUT_ROOT=str(out), CURATION_SOURCES=f"{SOURCE}={source}",
               CURATION_SHARD_SIZE=str(shard_size), CURATION_FEWSHOT_URI="", PYTHONPATH=str(REPO),
               CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


def _pg_admin():
    import psycopg2

    conn = psycopg2.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=5)
    conn.autocommit = True
    return conn


def _pg_create(fresh: bool, note: Path) -> None:
    """The bench's own database (dropped first unless resuming); its size when empty goes to `note`."""
    conn = _pg_admin()
    with conn.cursor() as cur:
        if fresh:
            cur.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{PG_DB}"')
            cur.execute("SELECT pg_database_size(%s)", (PG_DB,))
            empty = int(cur.fetchone()[0])
            note.write_text(json.dumps({"pg_empty_database_bytes": empty}))
    conn.close()


def instance_size(work: Path, backend: str) -> dict:
    home = work / backend / "home"
    files = [p for p in home.rglob("*") if p.is_file()]
    out = {"dagster_home_bytes": sum(p.stat().st_size for p in files), "dagster_home_files": len(files)}
    if backend == "postgres":
        conn = _pg_admin()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_database_size(%s)", (PG_DB,))
            out["pg_database_size_bytes"] = int(cur.fetchone()[0])
        conn.close()
        note = work / backend / "pg_empty.json"
        if note.exists():
            out.update(json.loads(note.read_text()))
    return out


def output_bytes(work: Path, backend: str) -> dict:
    out = work / backend / "out"
    res = {}
    for d in sorted(p for p in out.iterdir() if p.is_dir()) if out.exists() else []:
        res[d.name] = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    return res


def dedup_scores(work: Path, backend: str, manifest) -> dict:
    """Pair precision/recall of the dedup_clusters outputs against the manifest's groups."""
    import polars as pl

    from bench.accuracy import pair_scores

    files = sorted((work / backend / "out" / "dedup_clusters").glob("*.parquet"))
    if not files:
        return {}
    inv_dir = work / backend / "out" / "raw_inventory"
    cl = pl.concat([pl.read_parquet(f, columns=["image_id", "cluster_id", "shard", "rep_shard"]).join(
        pl.read_parquet(inv_dir / f.name, columns=["image_id", "rel_path"]), on="image_id", how="left")
        for f in files])
    df = cl.join(manifest.select("path", "group", "base_group", "base_kind", "variant", "width", "height"),
                 left_on="rel_path", right_on="path", how="inner")
    small = df.select(pl.max_horizontal("width", "height") <= 48).to_series().to_numpy()
    group, cluster = df["group"].to_numpy(), df["cluster_id"].to_numpy()
    res = {"images_scored": df.height, "shards_scored": len(files), **pair_scores(group, cluster, small)}
    res["by_base_kind"] = {}
    for kind in sorted(df["base_kind"].unique()):
        m = (df["base_kind"] == kind).to_numpy()
        s = pair_scores(group[m], cluster[m], small[m])
        res["by_base_kind"][kind] = {k: s[k] for k in ("precision", "recall", "positive_pairs", "predicted_pairs")}
    # recall per variant: of the pairs (orig, variant) of one group, the share in one cluster
    orig = df.filter(pl.col("variant") == "orig").select("group", pl.col("cluster_id").alias("orig_cluster"))
    per = df.filter(pl.col("variant") != "orig").join(orig, on="group", how="inner")
    same = per.with_columns((pl.col("cluster_id") == pl.col("orig_cluster")).alias("same"))
    res["orig_pair_recall_by_variant"] = {
        v: round(float(m), 4) for v, m in same.group_by("variant").agg(pl.col("same").mean()).sort("variant").iter_rows()}
    res["hue_negatives"] = df.filter(pl.col("variant") == "hue").height
    hue = df.filter(pl.col("variant") == "hue").join(
        df.filter(pl.col("variant") == "orig").select("base_group", pl.col("cluster_id").alias("oc")),
        on="base_group", how="inner")
    res["hue_negatives_merged_with_their_original"] = int((hue["cluster_id"] == hue["oc"]).sum())
    res["cross_shard_pairs_share_of_positives"] = _cross_share(df)
    return res


def _cross_share(df) -> float | None:
    n = df.group_by("group").len()["len"].to_numpy()
    total = int((n * (n - 1) // 2).sum())
    ns = df.group_by("group", "shard").len()["len"].to_numpy()
    within = int((ns * (ns - 1) // 2).sum())
    return round((total - within) / total, 4) if total else None


def read_rows(work: Path, backend: str) -> list[dict]:
    p = work / backend / "shards.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def flatness(rows: list[dict]) -> dict:
    import numpy as np

    shards = [r for r in rows if r.get("event") == "shard" and r.get("success")]
    if len(shards) < 4:
        return {}
    idx = np.array([r["index"] for r in shards], float)
    wall = np.array([r["wall_s"] for r in shards], float)
    slope, icpt = np.polyfit(idx, wall, 1)
    q = max(1, len(wall) // 10)
    first, last = float(np.median(wall[:q])), float(np.median(wall[-q:]))
    out = {"median_wall_s": round(float(np.median(wall)), 2), "linear_fit_s_per_shard_index": round(float(slope), 4),
           "fit_intercept_s": round(float(icpt), 2),
           "first_decile_median_s": round(first, 2), "last_decile_median_s": round(last, 2),
           "last_over_first": round(last / first, 3) if first else None}
    cpu = np.array([r.get("cpu_s_tree") if r.get("cpu_s_tree") is not None else np.nan for r in shards], float)
    if np.isfinite(cpu).all():  # CPU seconds: what the shard cost whatever else ran on the machine
        c_slope, _ = np.polyfit(idx, cpu, 1)
        c_first, c_last = float(np.median(cpu[:q])), float(np.median(cpu[-q:]))
        out.update(cpu_linear_fit_s_per_shard_index=round(float(c_slope), 4), cpu_first_decile_median_s=round(c_first, 2),
                   cpu_last_decile_median_s=round(c_last, 2),
                   cpu_last_over_first=round(c_last / c_first, 3) if c_first else None)
    for stage in (*TIMED, "dedup_load"):
        vals = np.array([(r["earlier_index_load"].get("seconds", 0.0) if stage == "dedup_load"
                          else r["stages_s"].get(stage, np.nan)) for r in shards], float)
        if np.isfinite(vals).all():
            f, la = float(np.median(vals[:q])), float(np.median(vals[-q:]))
            out[f"{stage}_first_last_decile_median_s"] = [round(f, 3), round(la, 3)]
    return out


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for backend, run in results.get("runs", {}).items():
        shards = [r for r in run.get("shards", [])]
        if not shards:
            continue
        xs = [r["index"] for r in shards]
        ax.plot(xs, [r["wall_s"] for r in shards], marker=".", label=f"{backend}: shard wall time")
        if all(r.get("cpu_s_tree") is not None for r in shards):
            ax.plot(xs, [r["cpu_s_tree"] for r in shards], lw=1.2, label=f"{backend}: CPU seconds (process tree)")
        ax.plot(xs, [r["stages_s"].get("raw_inventory", 0) for r in shards], lw=0.8, ls="--",
                label=f"{backend}: raw_inventory")
        ax.plot(xs, [r["stages_s"].get("dedup_clusters", 0) for r in shards], lw=0.8, ls=":",
                label=f"{backend}: dedup_clusters")
    ax.set_xlabel("shard index (10,000 images each)")
    ax.set_ylabel("seconds")
    ax.set_title("Million-image run: time per shard (stages 1-3 + shard report, 2-core VM, shared)", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=90)


def summarise(work: Path, backend: str, manifest, sampler_peaks: dict | None, wall_s: float | None,
              extra: dict) -> dict:
    rows = read_rows(work, backend)
    shards = [r for r in rows if r.get("event") == "shard"]
    by_index = {r["index"]: r for r in shards}  # a resumed shard's latest row wins
    shards = [by_index[i] for i in sorted(by_index)]
    series = _load_series(work / backend)
    for r in shards:
        r["cpu_s_tree"] = _tree_cpu(series, r["t_start"], r["t_end"])
        r.update(_peak_rss(series, r["t_start"], r["t_end"]))
    run = {
        "backend": backend, "date": today(), "shards_run": len(shards),
        "images_run": sum(1 for _ in shards) * extra.get("shard_size", 10_000),
        "shards_succeeded": sum(1 for r in shards if r["success"]),
        "sum_shard_wall_s": round(sum(r["wall_s"] for r in shards), 1),
        "executor": "in_process (execute_in_process, as `curate run`); stage 1 decodes in its worker pool",
        "flatness": flatness(shards),
        "summary": next((r for r in rows if r.get("event") == "summary"), None),
        "register_s": [r["register_s"] for r in rows if r.get("event") == "registered"],
        "instance": instance_size(work, backend),
        "output_bytes": output_bytes(work, backend),
        "dedup_pair_scores": dedup_scores(work, backend, manifest),
        "shards": shards, **extra,
    }
    if shards:
        loads = [r["earlier_index_load"] for r in shards if r["earlier_index_load"]]
        run["dedup_earlier_index"] = {
            "bytes_read_last_shard": loads[-1].get("bytes_read") if loads else None,
            "rows_last_shard": loads[-1].get("rows") if loads else None,
            "bytes_read_total": sum(x.get("bytes_read", 0) for x in loads)}
        cpus = [r["cpu_s_tree"] for r in shards if r["cpu_s_tree"] is not None]
        if cpus:
            run["cpu_s_tree_total"] = round(sum(cpus), 1)
            run["cpu_ms_per_image"] = round(1000 * sum(cpus) / (len(cpus) * extra.get("shard_size", 10_000)), 3)
            run["cpu_over_wall"] = round(sum(cpus) / sum(r["wall_s"] for r in shards if r["cpu_s_tree"] is not None), 3)
    if sampler_peaks is not None:
        roles: dict = {}
        for rec in sampler_peaks.values():
            r = roles.setdefault(rec["role"], {"processes": 0, "peak_rss_mib_max": 0.0})
            r["processes"] += 1
            r["peak_rss_mib_max"] = max(r["peak_rss_mib_max"], round(rec["peak_kib"] / 1024, 1))
        run["peak_rss_by_role"] = roles
        with_rss = [r for r in shards if "peak_rss_mib_driver" in r]
        if with_rss:
            q = max(1, len(with_rss) // 10)
            run["driver_peak_rss_mib_during_shards"] = {
                "max": max(r["peak_rss_mib_driver"] for r in with_rss),
                "first_decile_max": max(r["peak_rss_mib_driver"] for r in with_rss[:q]),
                "last_decile_max": max(r["peak_rss_mib_driver"] for r in with_rss[-q:])}
    if shards:
        run["stage_seconds_total"] = {st: round(sum(r["stages_s"].get(st, 0.0) for r in shards), 1) for st in TIMED}
        run["outside_stages_seconds_total"] = round(
            sum(r["wall_s"] - sum(r["stages_s"].get(st, 0.0) for st in TIMED) for r in shards), 1)
    invocations = [round(ser[-1][0] - ser[0][0], 1) for ser in _load_series(work / backend) if ser]
    run["invocation_wall_s"] = invocations  # driver start to exit, each invocation (resumes add one)
    run["total_wall_s"] = round(sum(invocations), 1)
    if wall_s is not None:
        run["wall_s_this_invocation"] = round(wall_s, 1)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", nargs="?", default="run", choices=["run", "_drive"])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--resume", action="store_true", help="keep the instance and outputs; skip finished shards")
    ap.add_argument("--max-shards", type=int, default=0, help="stop after this many shards (0: all)")
    ap.add_argument("--stop-at", type=float, default=0,
                    help="epoch seconds after which no further shard is started (a time-boxed partial run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-summary", dest="summary", action="store_false")
    ap.add_argument("--report", action="store_true", help="only rebuild million.json and the plot from <work>")
    ap.add_argument("--rows", default="")
    ap.add_argument("--embed", action="store_true", help=argparse.SUPPRESS)  # driver: also image_embeddings
    ap.add_argument("--embed-sample", type=int, default=0,
                    help="instead of the shard run: image_embeddings (default embedder, CPU) on the first N images")
    args = ap.parse_args(argv)
    if args.cmd == "_drive":
        return _drive(args)

    from bench.million_corpus import generate, size_distribution

    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    manifest = generate(args.work / "corpus", args.images, args.seed, args.shard_size)
    gen_s = time.monotonic() - t0
    manifest.write_parquet(args.work / "manifest.parquet")
    corpus_info = {"images": manifest.height, "groups": int(manifest["group"].n_unique()),
                   "seed": args.seed, "generate_s_this_invocation": round(gen_s, 1),
                   "corpus_disk_bytes": int(subprocess.run(["du", "-sb", str(args.work / "corpus")],
                                                            capture_output=True, text=True).stdout.split()[0]),
                   **size_distribution(manifest)}
    if args.embed_sample:
        return embed_sample(args, manifest)
    results = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {}
    results.update(date=today(), machine=machine(), corpus=corpus_info, command=" ".join(sys.argv))
    results.setdefault("runs", {})
    peaks, wall = None, None
    if not args.report:
        bdir = args.work / args.backend
        if not args.resume and bdir.exists():
            shutil.rmtree(bdir)
        if args.backend == "postgres":
            bdir.mkdir(parents=True, exist_ok=True)
            _pg_create(not args.resume, bdir / "pg_empty.json")
        env = _env(args.work, args.backend, args.shard_size)
        rows = bdir / "shards.jsonl"
        cmd = [sys.executable, "-m", "bench.million", "_drive", "--rows", str(rows), "--max-shards",
               str(args.max_shards), "--stop-at", str(args.stop_at)] + ([] if args.summary else ["--no-summary"])
        t1 = time.monotonic()
        rc, sampler = run_driver(cmd, env, bdir)
        wall, peaks = time.monotonic() - t1, sampler.peak
        (bdir / f"rss_{int(time.time())}.json").write_text(json.dumps(
            {"peaks": {str(k): v for k, v in peaks.items()}, "series": sampler.series}))
        print(f"driver exited {rc} after {wall:.0f} s")
    for backend in ("sqlite", "postgres"):
        if not (args.work / backend / "shards.jsonl").exists():
            continue
        if backend != args.backend or args.report:
            peaks_b = _load_peaks(args.work / backend)
            results["runs"][backend] = summarise(args.work, backend, manifest, peaks_b, None,
                                                 {"shard_size": args.shard_size})
        else:
            results["runs"][backend] = summarise(args.work, backend, manifest, _load_peaks(args.work / backend),
                                                 wall, {"shard_size": args.shard_size})
    results["loadavg_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(results, indent=2, default=str))
    plot(results)
    print(json.dumps({b: {k: r.get(k) for k in ("shards_run", "sum_shard_wall_s", "flatness", "instance")}
                      for b, r in results["runs"].items()}, indent=2, default=str))
    return 0


def run_driver(cmd: list[str], env: dict, bdir: Path) -> tuple[int, RssSampler]:
    """Run the driver process (log in bdir/driver.log) with the RSS/CPU sampler on its tree."""
    with (bdir / "driver.log").open("a") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = RssSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stop.set()
        sampler.join()
    return rc, sampler


def embed_sample(args: argparse.Namespace, manifest) -> int:
    """image_embeddings on the first N images (rank order: the first shard's files), through Dagster
    in an instance of its own; stores `embeddings_sample` in million.json."""
    n = args.embed_sample
    bdir, src = args.work / "embed", args.work / "embed_src"
    shutil.rmtree(bdir, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    bdir.mkdir(parents=True)
    for path in manifest.sort("rank")["path"][:n]:
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        os.link(args.work / "corpus" / path, src / path)
    env = _env(args.work, "embed", n, src)
    rows = bdir / "shards.jsonl"
    cmd = [sys.executable, "-m", "bench.million", "_drive", "--embed", "--no-summary", "--rows", str(rows)]
    rc, sampler = run_driver(cmd, env, bdir)
    shard = next((r for r in read_rows(args.work, "embed") if r.get("event") == "shard"), None)
    if rc or shard is None:
        print(f"embedding sample failed (driver exit {rc}); see {bdir / 'driver.log'}")
        return 1
    secs, embedded = shard["stages_s"].get("image_embeddings"), shard["dedup"].get("embedded")
    results = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {}
    results["embeddings_sample"] = {
        "date": today(), "images": n, "embedded": embedded, "image_embeddings_s": secs,
        "img_per_s": round(embedded / secs, 1) if secs and embedded else None,
        "embedder": "default (EMBEDDER_* unset: efficientnet_lite0, packaged weights), CPU (CUDA_VISIBLE_DEVICES='')",
        "note": "embeds the images curated_images kept (the others are not embedded)",
        "stages_s": shard["stages_s"], "wall_s": shard["wall_s"],
        "peak_rss_mib_by_pid_role": {str(k): {"role": v["role"], "mib": round(v["peak_kib"] / 1024, 1)}
                                     for k, v in sampler.peak.items() if v["peak_kib"] > 50_000},
        "loadavg": os.getloadavg()}
    OUT_JSON.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results["embeddings_sample"], indent=2))
    return 0


def _load_series(bdir: Path) -> list[list]:
    """The sampler's (t, driver RSS KiB, tree RSS KiB, tree CPU s) series of every invocation."""
    return [json.loads(f.read_text())["series"] for f in sorted(bdir.glob("rss_*.json"))]


def _tree_cpu(series: list[list], t0: float, t1: float) -> float | None:
    """CPU seconds the driver's process tree used between t0 and t1 (from the sampler)."""
    for ser in series:
        if ser and ser[0][0] <= t0 and ser[-1][0] >= t1:
            ts = [x[0] for x in ser]
            cpu = [x[3] for x in ser if len(x) > 3]
            if len(cpu) != len(ts):
                return None
            import numpy as np

            a, b = np.interp([t0, t1], ts, cpu)
            return round(float(b - a), 2)
    return None


def _peak_rss(series: list[list], t0: float, t1: float) -> dict:
    """Peak RSS (MiB) of the driver and of its whole tree between t0 and t1 (from the sampler)."""
    pts = [x for ser in series for x in ser if t0 <= x[0] <= t1]
    if not pts:
        return {}
    return {"peak_rss_mib_driver": round(max(x[1] for x in pts) / 1024, 1),
            "peak_rss_mib_tree": round(max(x[2] for x in pts) / 1024, 1)}


def _load_peaks(bdir: Path) -> dict | None:
    """Peak RSS per pid over every invocation of this backend (resumed runs add files)."""
    peaks: dict = {}
    for f in sorted(bdir.glob("rss_*.json")):
        for pid, rec in json.loads(f.read_text())["peaks"].items():
            key = f"{f.stem}:{pid}"
            peaks[key] = rec
    return peaks or None


if __name__ == "__main__":
    sys.exit(main())
