"""The Dagster UI, looked at as a person would, over a small corpus of real images.

1. Files arrive: 30 real images (skimage photos with a byte copy, a downscaled copy and a truncated
   file; arcade sprites, one of them swapped for a photo out of focus). `python -m orchestration.cli run` registers them as two shards and
   materialises every stage, the few-shot probe and the corpus summary in a fresh DAGSTER_HOME
   (the repo's dagster.yaml). Then 15 more files arrive and `cli register` only registers them:
   the third shard is a partition that is NOT materialised.
2. `dagster-webserver` and `dagster-daemon run` start on loopback against that instance.
3. Headless Chromium opens, and screenshots to artifacts/screenshots/ (git-ignored) for a reviewer:
   01 the asset graph with every group expanded (asset names, groups, descriptions, owners, kinds,
      check results, partitions); 02 the catalog; 03 shard_report's page (its Markdown preview renders
      inline as tables); 04 the thumbnail strip (data-URI images the browser decodes); 05
      curated_images' metadata (rejects by reason with text bars); 06 a blocking check's result;
      08 the corpus HTML report (file://, no broken images).
4. A backfill of the missing shard is launched through the webserver's own GraphQL API
   (launchPartitionBackfill); the daemon executes it; the test polls partitionBackfillOrError until it
   COMPLETES, checks the run's log has the steps' progress lines, that the shard's outputs exist and
   that the instance counts 3/3 partitions; 07 is the backfill's page.

Run time: about 80-90 s on 2 busy cores. Teardown kills the servers' process groups (and, by pid,
anything left holding this test's DAGSTER_HOME) and fails the test if anything had outlived them.
Skips only when no Chromium is installed (scripts/ensure_chromium.sh installs Debian's).
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
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageFilter

from curation.stages import CURATE, stages_in
from tests.browser import Browser, find_chromium, kill_group
from tests.conftest import arcade_sprites, mnist_digits, skimage_photo
from tests.photo_corpus import build_photo_corpus

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
BIN = Path(sys.executable).parent
SOURCE = "ui"
PARTITIONED = ("raw_inventory", "dedup_clusters", "curated_images", "image_embeddings", "image_classifications",
               "shard_report")
ALL_ASSETS = (*PARTITIONED, "few_shot_probe", "curation_summary")
# what a backfill of the curate job materialises: every output of its steps (multi-assets are not subset)
CURATE_OUTPUTS = tuple(out for s in stages_in(CURATE) for out in s.outputs)
GROUPS = ("ingest", "dedup", "curation", "ml", "reports", "export")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

CHROMIUM = find_chromium()


# ---------------------------------------------------------------------------------------------
# corpus, instance and processes


def build_corpus(src: Path, fewshot: Path) -> None:
    """30 real images now (two shards of 15); the few-shot examples (MNIST 0/1/7)."""
    build_photo_corpus(src)  # 11 files: 8 photos, an exact copy, a downscaled copy, a truncated file
    sprites = _mkdir(src / "sprites")
    for i, s in enumerate(arcade_sprites()[::25][:18]):
        shutil.copyfile(s, sprites / f"s{i:02d}{s.suffix}")
    # a real reject in shard 2 (a photo out of focus), so its report lists rejects per reason
    skimage_photo("rocket").resize((320, 213)).filter(ImageFilter.GaussianBlur(4)).save(sprites / "s18.png")
    X, y = mnist_digits(3000)
    for label in (0, 1, 7):
        (fewshot / str(label)).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(y == label)[:6]:
            Image.fromarray(X[i]).resize((112, 112)).save(fewshot / str(label) / f"{i}.png")


def add_new_files(src: Path, n: int = 15) -> None:
    dst = _mkdir(src / "new")
    for i, s in enumerate(arcade_sprites()[7::25][:n]):
        shutil.copyfile(s, dst / f"n{i:02d}{s.suffix}")


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"cli {args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A long-running process in its own process group (so teardown kills it and its children)."""
    fh = open(log, "wb")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        fh.close()


def kill_leftovers(marker: str) -> list[int]:
    """Processes whose environment holds this test's DAGSTER_HOME (run workers that somehow left the
    process groups): kill them by pid."""
    killed = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if marker.encode() in (d / "environ").read_bytes():
                os.kill(int(d.name), signal.SIGKILL)
                killed.append(int(d.name))
        except (OSError, ProcessLookupError):
            continue
    return killed


class Graphql:
    def __init__(self, base: str):
        self.url = base + "/graphql"

    def __call__(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.load(r)
        assert not out.get("errors"), out["errors"]
        return out["data"]


LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""

LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId }
  ... on PythonError { message stack } ... on UnauthorizedError { message }
  ... on PartitionSetNotFoundError { message } ... on InvalidStepError { invalidStepKey }
  ... on InvalidOutputError { stepKey invalidOutputName } ... on RunConflict { message } } }"""

BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { id status partitionNames error { message }
        runs(limit: 10) { id status } }
  ... on BackfillNotFoundError { message } ... on PythonError { message } } }"""

RUN_LOGS = """query($runId: ID!) { logsForRun(runId: $runId, limit: 5000) { __typename
  ... on EventConnection { events { __typename ... on MessageEvent { message stepKey } } }
  ... on RunNotFoundError { message } ... on PythonError { message } } }"""

DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def wait_for_location(gql: Graphql, procs: dict[str, subprocess.Popen], logs: dict[str, Path], timeout: float = 150):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}:\n{logs[name].read_text()[-4000:]}")
        try:
            data = gql(LOCATIONS)["workspaceOrError"]
            entries = data.get("locationEntries") or []
            last = entries
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                (entry,) = entries
                assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(1)
    raise AssertionError(f"the code location did not load in {timeout} s: {last}\n{logs['webserver'].read_text()[-3000:]}")


@pytest.fixture
def ui_env(tmp_path):
    home = _mkdir(tmp_path / "dagster_home")
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    src, fewshot, out = tmp_path / "corpus", tmp_path / "fewshot", tmp_path / "outputs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATION_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home), CURATION_DEPLOYMENT="local", CURATION_OUTPUT_ROOT=str(out),
        CURATION_SOURCES=f"{SOURCE}={src}", CURATION_FEWSHOT_URI=str(fewshot), CURATION_SHARD_SIZE="15",
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="",  # the offline default embedder on CPU
        CURATION_REPORT_URL=f"http://127.0.0.1:{free_port()}",  # the report server the test starts, as `make dev`
    )
    return env, src, fewshot, out


# ---------------------------------------------------------------------------------------------
# the test


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: run scripts/ensure_chromium.sh (Debian: apt-get install chromium)")
def test_ui_tells_the_whole_story(ui_env, tmp_path):
    env, src, fewshot, out = ui_env
    t_start = time.monotonic()
    SHOTS.mkdir(parents=True, exist_ok=True)
    build_corpus(src, fewshot)
    shard = lambda i: f"{SOURCE}-{i:06d}"  # noqa: E731

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = {"webserver": tmp_path / "webserver.log", "daemon": tmp_path / "daemon.log"}
    procs: dict[str, subprocess.Popen] = {}
    leftovers: list[int] = []
    try:
        # register the first 30 files (this also creates the instance's storage: the servers must
        # not race the CLI to create it), then the servers load while the CLI curates them
        reg = cli("register", env=env)
        assert "2 shard(s) registered" in reg.stdout, reg.stdout
        # the read-only report server `make dev` starts beside the webserver
        report_base = env["CURATION_REPORT_URL"]
        _mkdir(out / "reports")
        procs["reports"] = start([sys.executable, "-m", "http.server", report_base.rsplit(":", 1)[1], "--bind",
                                  "127.0.0.1", "--directory", str(out / "reports")], env, tmp_path / "reports.log")
        procs["webserver"] = start([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
                                    "-p", str(port)], env, logs["webserver"])
        procs["daemon"] = start([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, logs["daemon"])
        run = cli("run", env=env)
        assert "2 shard(s); 2 to materialise" in run.stdout and "failed: none" in run.stdout, run.stdout[-3000:]
        add_new_files(src)
        reg = cli("register", env=env)
        assert shard(3) in reg.stdout and "3 shard(s) registered" in reg.stdout, reg.stdout
        for i in (1, 2):
            assert (out / "reports" / "shards" / shard(i) / "report.html").exists()
        assert not (out / "raw_inventory" / f"{shard(3)}.parquet").exists()
        t_cli = time.monotonic() - t_start

        gql = Graphql(base)
        wait_for_location(gql, procs, logs)

        with Browser(width=2400, height=1300) as b:
            check_asset_graph(b, base)
            check_catalog(b, base)
            check_shard_report_page(b, base, shard(2))
            open_report_link(b, base, report_base)
            check_asset_check_result(b, base, shard(2))
            check_html_report(b, out)

            # the missing shard, through the webserver's own GraphQL API; the daemon runs it
            res = gql(LAUNCH, params={"assetSelection": [{"path": [a]} for a in CURATE_OUTPUTS],
                                      "partitionNames": [shard(3)], "fromFailure": False,
                                      "title": "test_ui: the shard that arrived later"})["launchPartitionBackfill"]
            assert res["__typename"] == "LaunchBackfillSuccess", res
            backfill_id = res["backfillId"]
            t_bf = time.monotonic()
            status = wait_for_backfill(gql, backfill_id, procs, logs, timeout=240)
            bf_s = time.monotonic() - t_bf
            assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status
            assert status["partitionNames"] == [shard(3)]
            assert status["runs"] and all(r["status"] == "SUCCESS" for r in status["runs"]), status["runs"]

            # the run's event log carries the steps' progress lines (assets/_common.py Progress)
            (run_id,) = [r["id"] for r in status["runs"]]
            messages = [e.get("message") or "" for e in gql(RUN_LOGS, runId=run_id)["logsForRun"]["events"]]
            for what in ("inventory", "embeddings"):
                assert any(m.startswith(f"{what}: ") and " images, " in m and "img/s" in m for m in messages), \
                    (what, [m for m in messages if "img/s" in m])

            b.goto(f"{base}/runs/b/{backfill_id}")
            b.wait_for_text(backfill_id, timeout=60)
            time.sleep(2)
            b.screenshot(SHOTS / "07_backfill_completed.png")

        # the shard that arrived later is curated like the others
        for stage in ("raw_inventory", "dedup_clusters", "curated_images", "image_embeddings", "image_classifications"):
            assert (out / stage / f"{shard(3)}.parquet").exists(), stage
        inv = pl.read_parquet(out / "raw_inventory" / f"{shard(3)}.parquet")
        assert inv.height == 15 and inv["rel_path"].str.starts_with("new/").all()
        cur = pl.read_parquet(out / "curated_images" / f"{shard(3)}.parquet")
        emb = pl.read_parquet(out / "image_embeddings" / f"{shard(3)}.parquet")
        assert sorted(emb["image_id"]) == sorted(cur.filter(pl.col("keep"))["image_id"])
        summary = json.loads((out / "reports" / "shards" / shard(3) / "summary.json").read_text())
        assert summary["counts"]["listed"] == 15
        assert (out / "reports" / "shards" / shard(3) / "report.html").exists()
        # and the instance knows: every partitioned asset has all three shards materialised
        data = gql("""{ assetNodes(assetKeys: [{path: ["shard_report"]}]) {
            partitionStats { numMaterialized numPartitions } } }""")
        stats = data["assetNodes"][0]["partitionStats"]
        assert stats == {"numMaterialized": 3, "numPartitions": 3}, stats
        print(f"\ntimings: corpus + CLI (2 shards, summary) + register {t_cli:.0f} s; backfill of 1 shard "
              f"{bf_s:.0f} s; total {time.monotonic() - t_start:.0f} s; screenshots in {SHOTS}")
    finally:
        for name in ("daemon", "webserver", "reports"):
            kill_group(procs.get(name), grace_s=15)
        leftovers = kill_leftovers(env["DAGSTER_HOME"])
    assert not leftovers, f"processes outlived their process groups (killed now): {leftovers}"


# ---------------------------------------------------------------------------------------------
# what a person looks at


def dismiss_popups(b: Browser) -> None:
    # first visit: the "Join the Dagster community" dialog
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if b.click_text("Skip"):
            return
        time.sleep(0.5)


def check_asset_graph(b: Browser, base: str) -> None:
    b.goto(f"{base}/asset-groups")
    b.wait_for_text(*GROUPS, timeout=90)
    dismiss_popups(b)
    # show each node's description and owner, as the graph's "asset facets" dialog would save them
    b.eval("localStorage.setItem('asset-node-facets', JSON.stringify(['unsynced-tag','checks','latest-event',"
           "'status','kind-tag','automation','partitions','description','owner']))")
    expanded = ",".join(f"global@global:{g}" for g in GROUPS)
    b.goto(f"{base}/asset-groups?expanded={urllib.parse.quote(expanded)}")
    b.wait_for_text(*GROUPS, "Owner", "data-curation", timeout=60)
    # room for the graph (no navigation, no asset tree), then one step closer and centred: every node
    # shows its name, description, owner, checks, partitions and kinds
    b.click_text("Hide navigation")
    b.click_icon("panel_show_right", last=True)
    time.sleep(1)
    assert b.click_icon("zoom_in")
    time.sleep(1)
    b.drag(b.width / 2, b.height - 150, b.width / 2 + 250, b.height - 200)
    # the graph renders the nodes in view (which depends on the layout), each with its facets
    text = b.wait_for_text("data-curation", "Parquet", "1 / 1 Passed", "3 partitions", timeout=30)
    assert sum(name in text for name in ALL_ASSETS) >= 2, text[:2000]
    time.sleep(1.5)
    b.screenshot(SHOTS / "01_asset_graph.png")


def check_catalog(b: Browser, base: str) -> None:
    b.goto(f"{base}/assets")
    text = b.wait_for_text(*ALL_ASSETS, *GROUPS, "3 partitions", timeout=60)
    assert "One row per file in the shard's manifest" in text  # descriptions are shown
    time.sleep(1)
    b.screenshot(SHOTS / "02_asset_catalog.png")


def check_shard_report_page(b: Browser, base: str, partition: str) -> None:
    b.goto(f"{base}/assets/shard_report")
    # the preview renders inline as Markdown tables: stage counts, rejects by reason
    text = b.wait_for_text("Metadata", "preview", "of listed", "decoded", "kept", "reject reason", "duplicate",
                           partition, timeout=60)
    assert "[Show Markdown]" in text  # the thumbnail strip, one click away
    assert "report.html" in text and "data-curation" in text
    time.sleep(1)
    b.screenshot(SHOTS / "03_shard_report_metadata.png")
    # the thumbnail strip: real images decoded by the browser
    assert b.eval("""(() => { const el = [...document.querySelectorAll('*')].find(e => e.children.length === 0
        && (e.innerText || '').trim() === '[Show Markdown]'); if (!el) return false; el.click(); return true; })()""")
    b.wait_for("[...document.querySelectorAll('[role=dialog] img, .bp5-dialog img, img')]"
               ".filter(i => i.src.startsWith('data:image/') && i.complete && i.naturalWidth > 0).length >= 3",
               timeout=30, what="at least 3 decoded thumbnails in the Markdown dialog")
    # each thumbnail is captioned: kept, or rejected and why (the shard has rejects: see the preview)
    b.wait_for_text("kept: ", "rejected (", timeout=30)
    time.sleep(1)
    b.screenshot(SHOTS / "04_shard_report_thumbnails.png")


def open_report_link(b: Browser, base: str, report_base: str) -> None:
    """The shard report is one click away: the `report_link` metadata is a link to the report server;
    clicking it (in this tab) opens the shard's HTML report with its images."""
    b.goto(f"{base}/assets/shard_report")
    b.wait_for_text("Metadata", "report_link", timeout=60)
    find = (f"[...document.querySelectorAll('a')].find(a => a.href.startsWith({json.dumps(report_base + '/shards/')})"
            " && a.href.endsWith('/report.html'))")
    b.wait_for(f"!!{find}", timeout=30, what="a link to the report server")
    href = b.eval(f"(() => {{ const a = {find}; a.target = '_self'; a.click(); return a.href; }})()")
    b.wait_for(f"location.href === {json.dumps(href)} && document.readyState === 'complete'"
               " && document.images.length > 0", timeout=30, what="the shard report from the report server")
    broken = b.eval("[...document.images].filter(i => i.complete && i.naturalWidth === 0).length")
    assert broken == 0, f"{broken} broken images in {href}"
    assert "kept" in b.text().lower()
    b.screenshot(SHOTS / "04b_report_link_opened.png")


def check_asset_check_result(b: Browser, base: str, partition: str) -> None:
    # a stage's own metadata: row count, keep rate and the rejects-by-reason table with its text bars
    b.goto(f"{base}/assets/curated_images")
    b.wait_for_text("Row count", "keep_rate", "rejects_by_reason", "low_entropy", "█", partition, timeout=60)
    time.sleep(1)
    b.screenshot(SHOTS / "05_curated_images_metadata.png")
    # and its blocking check's latest result
    b.goto(f"{base}/assets/curated_images?view=checks")
    b.wait_for_text("curated_decisions_complete", "blocking", "Passed", "rejects_without_reason", partition, timeout=60)
    time.sleep(1)
    b.screenshot(SHOTS / "06_asset_check.png")


def check_html_report(b: Browser, out: Path) -> None:
    report = out / "reports" / "corpus" / "report.html"
    width, height = b.width, b.height
    b.resize(1400, 1000)  # the report's own layout width
    b.goto(report.as_uri())
    b.wait_for("document.readyState === 'complete' && document.images.length > 0", timeout=30, what="the corpus report")
    broken = b.eval("[...document.images].filter(i => i.complete && i.naturalWidth === 0).length")
    assert broken == 0, f"{broken} broken images in {report}"
    text = b.text()
    assert "duplicate" in text.lower() and "kept" in text.lower()
    b.screenshot(SHOTS / "08_corpus_report.png", full_page=True)
    b.resize(width, height)


def wait_for_backfill(gql: Graphql, backfill_id: str, procs, logs, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}:\n{logs[name].read_text()[-4000:]}")
        last = gql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        assert last["__typename"] == "PartitionBackfill", last
        if last["status"] in DONE:
            return last
        time.sleep(2)
    raise AssertionError(f"backfill {backfill_id} not done in {timeout} s: {last}\n"
                         f"daemon log:\n{logs['daemon'].read_text()[-4000:]}")
