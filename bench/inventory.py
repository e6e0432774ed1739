"""Benchmark of the inventory stage (not a test). Writes bench/results/inventory.json.

Corpus: ~2,000 JPEGs at typical photo sizes (500x375 .. 1024x768) re-encoded from REAL images
(skimage.data photographs + arcade's CC0 backgrounds and sprites pasted on them), with random
crops, flips, sizes and JPEG qualities for variety; cached under $TMPDIR/curation_bench_inventory.

PNG graphics: up to 1,000 files of Debian's openclipart-png (<= 2048 px a side).

Measured in ONE run, on the same files, in images per CPU-second of one core (time.process_time;
for the pool, parent + reaped spawn workers), best of interleaved rounds:
  * JPEG full decode:  `Image.open(path).load()`
  * JPEG draft decode: `Image.open(path)`, `draft(None, (S, S))`, `load()` - the reduced-size
    decode the stage itself performs: stage / draft is the stage's own overhead (target >= 0.80)
  * PNG bare decode:   `Image.open(path).load()`; stage / bare decode (target >= 1.0)
  * the stage, workers=1 (in-process: read, sha256, decode, analysis, dHash + pHash, batches),
    and with `extra_hashes=True` (+ aHash, wHash)
  * the 2-worker pool: images per CPU-second of parent + workers, the pool's fixed start-up CPU
    (a 2-row run) subtracted; / the 1-worker rate = parallel efficiency in CPU terms (target
    >= 0.85). Wall-clock 1 vs 2 workers is reported beside it (a shared machine distorts it).
  * peak RSS (VmHWM) of the worker processes and the parent's RSS after shards of the given
    sizes (files repeated), workers=2: flat numbers = constant memory.

Usage: python bench/inventory.py [--n-files 2000] [--n-png 1000] [--shard-sizes 1000,5000,20000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.inventory import InventoryConfig, iter_inventory  # noqa: E402
from curation.schema import MANIFEST_SCHEMA  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "camera", "moon", "brick", "grass", "gravel", "coins", "clock", "colorwheel")
CORPUS_VERSION = 1


def _sources() -> tuple[list[Image.Image], list[Image.Image]]:
    import skimage.data

    photos = []
    for n in PHOTOS:
        try:
            photos.append(Image.fromarray(getattr(skimage.data, n)()).convert("RGB"))
        except Exception:  # noqa: BLE001 - a scikit-image without that photo bundled (pooch download)
            continue
    try:
        import arcade
    except ImportError:  # a host without the demo extras (the lent GPU machine): photos alone
        return photos, []
    res = Path(arcade.__file__).parent / "resources" / "assets" / "images"
    for p in sorted((res / "backgrounds").glob("*.jpg")) + sorted((res / "cybercity_background").glob("*.png")):
        photos.append(Image.open(p).convert("RGB"))
    sprites = [Image.open(p).convert("RGBA") for p in sorted(res.rglob("*.png"))
               if 2_000 < p.stat().st_size < 200_000][:200]
    return photos, sprites


def build_corpus(n_files: int) -> list[Path]:
    import importlib.util

    photos_only = "" if importlib.util.find_spec("arcade") else "_photos_only"
    out = Path(tempfile.gettempdir()) / f"curation_bench_inventory_v{CORPUS_VERSION}_{n_files}{photos_only}"
    done = out / "DONE"
    if done.exists():
        return sorted(out.glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    photos, sprites = _sources()
    rng = np.random.default_rng(20240611)
    for i in range(n_files):
        src = photos[int(rng.integers(len(photos)))]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.55, 1.0)), int(h * rng.uniform(0.55, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tw = int(rng.integers(500, 1025))
        th = int(round(tw * 0.75)) if rng.random() < 0.7 else int(rng.integers(375, 769))
        img = img.resize((tw, th), Image.Resampling.BILINEAR)
        for _ in range(int(rng.integers(0, 3)) if sprites else 0):
            sp = sprites[int(rng.integers(len(sprites)))]
            scale = rng.uniform(0.5, 2.0)
            sp = sp.resize((max(1, int(sp.width * scale)), max(1, int(sp.height * scale))))
            img.paste(sp, (int(rng.integers(0, max(1, tw - sp.width))), int(rng.integers(0, max(1, th - sp.height)))), sp)
        img.save(out / f"img_{i:05d}.jpg", "JPEG", quality=int(rng.integers(75, 96)))
    done.write_text("ok")
    return sorted(out.glob("*.jpg"))


def manifest(paths: list[Path], n_rows: int) -> pl.DataFrame:
    rows = []
    for i in range(n_rows):
        p = str(paths[i % len(paths)])
        rows.append({"image_id": hashlib.sha1(f"{p}#{i}".encode()).hexdigest()[:16], "uri": p,
                     "rel_path": os.path.basename(p), "listed_bytes": None, "listed_mtime": None})
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


# ----------------------------------------------------------------------------- /proc helpers


def _proc_status(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # kB
    except OSError:
        return None
    return None


def _descendants(root_pid: int) -> list[tuple[int, int]]:
    """(pid, depth) of every descendant of root_pid (depth 1 = direct child)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out: list[tuple[int, int]] = []
    todo = [(root_pid, 0)]
    while todo:
        pid, depth = todo.pop()
        for c in children.get(pid, []):
            out.append((c, depth + 1))
            todo.append((c, depth + 1))
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\x00", b" ").decode(errors="replace")
    except OSError:
        return ""


class WorkerRssSampler:
    """Samples VmHWM (peak RSS) of this process's descendant workers (not the forkserver)."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.peak_kb = 0
        self.n_workers_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for pid, depth in _descendants(os.getpid()):
            cmd = _cmdline(pid)
            if "resource_tracker" in cmd:
                continue
            # forkserver workers are children of the forkserver (depth 2, same cmdline as it);
            # spawn workers are direct children running spawn_main
            if not (depth >= 2 or "spawn_main" in cmd):
                continue
            hwm = _proc_status(pid, "VmHWM")
            if hwm:
                self.n_workers_seen.add(pid)
                self.peak_kb = max(self.peak_kb, hwm)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> WorkerRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- measurements


def bare_decode(paths: list[Path], draft_size: int | None) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        with Image.open(p) as img:
            if draft_size:
                img.draft(None, (draft_size, draft_size))
            img.load()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"img_per_s": len(paths) / wall, "img_per_cpu_s": len(paths) / cpu, "n": len(paths)}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def stage(paths: list[Path], n_rows: int, workers: int, cfg: InventoryConfig,
          sampler: WorkerRssSampler | None = None) -> dict[str, float]:
    """The stage over `n_rows` manifest rows (files repeated). CPU = this process + reaped
    children (spawn workers are direct children, joined at close)."""
    m = manifest(paths, n_rows)
    errors_seen = 0
    rows = 0
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    root = os.path.commonpath([str(p.parent) for p in paths])
    for batch in iter_inventory(m, "bench", root, cfg, workers=workers,
                                progress=(lambda _done: sampler.sample()) if sampler else None):
        rows += batch.height
        errors_seen += batch["error_code"].drop_nulls().len()
    wall, cpu, kids = time.perf_counter() - t0, time.process_time() - c0, _children_cpu() - k0
    assert rows == n_rows, (rows, n_rows)
    out = {"img_per_s": n_rows / wall, "n": n_rows, "errors": errors_seen, "wall_s": wall,
           "cpu_s": cpu + kids, "parent_cpu_s": cpu}
    if workers == 1:
        out["img_per_cpu_s"] = n_rows / cpu
    else:
        out["parent_cpu_ms_per_img"] = 1000.0 * cpu / n_rows  # collecting, hashing, batching
    return out


def pool_cpu_efficiency(paths: list[Path], n_rows: int, cfg: InventoryConfig) -> dict[str, float]:
    """Images per CPU-second of the whole 2-worker pool (parent + workers, spawn start, the
    fixed start-up cost measured on a 2-row run and subtracted): the parallel overhead in
    CPU terms, which other jobs on a shared machine do not distort the way they distort wall
    time."""
    spawn = replace(cfg, start_method="spawn")
    startup = stage(paths[:2], 2, 2, spawn)
    full = stage(paths, n_rows, 2, spawn)
    work = max(1e-9, full["cpu_s"] - startup["cpu_s"])
    return {"img_per_cpu_s": (n_rows - 2) / work, "startup_cpu_s": startup["cpu_s"],
            "img_per_s": full["img_per_s"]}


def step_profile(paths: list[Path], cfg: InventoryConfig) -> dict[str, float]:
    """CPU ms per image of each step of the stage, run step by step with the library's own
    functions (the per-group functions of `curation.imaging.analyse`), in one process."""
    from curation.imaging import analyse, hash_batch, hash_inputs
    from curation.imaging.content import content_signals
    from curation.imaging.convert import composite, orient
    from curation.imaging.features import image_features
    from curation.imaging.metrics import analysis_image, grey_of
    from curation.imaging.policy import pillow_guard
    from curation.reader import read_source

    a = cfg.analysis
    root = os.path.commonpath([str(p.parent) for p in paths])
    acc: dict[str, float] = {}
    hins = []

    def tick(key: str, t: float) -> float:
        now = time.process_time()
        acc[key] = acc.get(key, 0.0) + now - t
        return now

    for p in paths:
        t = time.process_time()
        data, _ = read_source(str(p), root, max_bytes=cfg.max_bytes)
        t = tick("read", t)
        hashlib.sha256(data).hexdigest()
        t = tick("sha256", t)
        with pillow_guard(a.max_pixels):
            img, header = analyse.decode_first_frame(data, a, {})
            t = tick("decode (header, first frame, draft, EXIF)", t)
            frame = analyse.prepare_frame(img, a)
            t = tick("8 bits, box reduce", t)
            flat, _ = composite(frame, a.background)
            t = tick("composite", t)
            grey_full = grey_of(flat)
            t = tick("grey conversion (content signals + analysis image)", t)
            content_signals(img, frame, grey_full, a.analysis_size)
            t = tick("content signals", t)
            flat, grey_full = orient(flat, header["orientation"]), orient(grey_full, header["orientation"])
            t = tick("orient", t)
            grey = analysis_image(grey_full, a.analysis_size)
            t = tick("analysis resize (grey S x S)", t)
            analyse.measure_grey(grey)
            t = tick("grey metrics", t)
            analyse.measure_colour(flat)
            t = tick("colour means", t)
            image_features(flat)
            t = tick("image features (8 x 8 thumbnail)", t)
            hins.append(hash_inputs(grey))
            t = tick("hash image (64 x 64)", t)
    x = np.stack(hins)
    hash_batch(x[:2])  # imports scipy once, outside the timings
    for k in ("dhash", "phash", "ahash", "whash"):
        t = time.process_time()
        hash_batch(x, (k,))
        tick(f"{k} (batched)", t)
    return {k: round(1000.0 * v / len(paths), 4) for k, v in acc.items()}


def png_corpus(n: int) -> list[Path]:
    """Real PNG graphics (openclipart-png, every k-th file, < 2 MB), or [] when not installed."""
    root = Path("/usr/share/openclipart/png")
    if not root.is_dir():
        return []
    pngs = sorted(root.rglob("*.png"))
    step = max(1, len(pngs) // max(1, 2 * n))
    out = []
    for p in pngs[::step]:
        if p.stat().st_size < 2_000_000:
            with Image.open(p) as im:
                if max(im.size) <= 2048:  # graphics at display sizes; huge renders are another bench
                    out.append(p)
        if len(out) == n:
            break
    return out


def machine() -> dict[str, object]:
    import PIL
    import PIL.features

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_avg_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(PIL.features.check_feature("libjpeg_turbo")),
        "note": "machine shared with other jobs; wall rates are noisy, per-CPU-second rates less so",
    }


def _rounds(jobs: dict[str, object], n_rounds: int) -> dict[str, list[dict[str, float]]]:
    """Run each job once per round, interleaved (so slow phases of a shared machine hit all)."""
    out: dict[str, list[dict[str, float]]] = {k: [] for k in jobs}
    for r in range(n_rounds):
        for k, job in jobs.items():
            out[k].append(job())  # type: ignore[operator]
        print(f"round {r}: " + ", ".join(f"{k}={v[-1].get('img_per_cpu_s', v[-1]['img_per_s']):.0f} img/cpu-s" for k, v in out.items()),
              f"load={os.getloadavg()[0]:.1f}", flush=True)
    return out


def _best(runs: list[dict[str, float]], key: str = "img_per_cpu_s") -> dict[str, float]:
    return max(runs, key=lambda m: m[key])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-files", type=int, default=2000)
    ap.add_argument("--n-png", type=int, default=1000)
    ap.add_argument("--shard-sizes", default="1000,5000,20000")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (best kept)")
    ap.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "inventory.json"))
    args = ap.parse_args()
    n_files = 200 if args.quick else args.n_files
    n_png = 100 if args.quick else args.n_png
    shard_sizes = [200, 400] if args.quick else [int(s) for s in args.shard_sizes.split(",") if s]

    t_start = time.perf_counter()
    info = machine()
    paths = build_corpus(n_files)
    pngs = png_corpus(n_png)
    sizes = [Image.open(p).size for p in paths[:200]]
    cfg = InventoryConfig()
    S = cfg.analysis_size
    print(f"corpus: {len(paths)} JPEGs, {len(pngs)} PNG graphics, e.g. {sizes[:3]}", flush=True)

    bare_decode(paths[:100], None)  # warm the page cache and imports once
    rows = 2 * len(paths)  # each file twice: amortises the pool's start-up
    jobs = {
        "jpeg_full_decode": lambda: bare_decode(paths, None),
        "jpeg_draft_decode": lambda: bare_decode(paths, S),
        "jpeg_stage_1_worker": lambda: stage(paths, rows, 1, cfg),
        "jpeg_stage_2_workers_cpu": lambda: pool_cpu_efficiency(paths, rows, cfg),
        "jpeg_stage_1_worker_extra_hashes": lambda: stage(paths, rows, 1, replace(cfg, extra_hashes=True)),
    }
    if pngs:
        jobs["png_bare_decode"] = lambda: bare_decode(pngs, None)
        jobs["png_stage_1_worker"] = lambda: stage(pngs, len(pngs), 1, cfg)
    rounds = _rounds(jobs, args.rounds)
    steps = {"jpeg": step_profile(paths, cfg), **({"png": step_profile(pngs, cfg)} if pngs else {})}
    print(f"steps (CPU ms per image): {steps}", flush=True)
    wall_rounds = _rounds({"one": lambda: stage(paths, rows, 1, cfg), "two": lambda: stage(paths, rows, 2, cfg)}, 1)
    best = {k: _best(v) for k, v in rounds.items()}
    cpu = {k: round(v["img_per_cpu_s"], 1) for k, v in best.items()}
    one, two = _best(wall_rounds["one"], "img_per_s"), _best(wall_rounds["two"], "img_per_s")

    rss: dict[str, dict[str, float]] = {}
    for n in shard_sizes:
        with WorkerRssSampler() as sampler:
            res = stage(paths, n, 2, cfg, sampler)
            sampler.sample()
        parent_rss = (_proc_status(os.getpid(), "VmRSS") or 0) / 1024
        rss[str(n)] = {"worker_peak_rss_mb": round(sampler.peak_kb / 1024, 1),
                       "parent_rss_mb_after": round(parent_rss, 1),
                       "img_per_s": round(res["img_per_s"], 1),
                       "workers_sampled": len(sampler.n_workers_seen)}
        print(f"shard {n}: {rss[str(n)]}", flush=True)

    def ratio(a: str, b: str) -> float | None:
        return round(cpu[a] / cpu[b], 3) if a in cpu and b in cpu else None

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "how": "every figure in images per CPU-second of one core (time.process_time, plus reaped "
               "children for the pool), best of interleaved rounds in one run; wall rates are given "
               "beside them but a shared machine distorts them",
        "corpus": {"n_jpeg": len(paths), "jpeg": "q75-95, 500x375..1024x768, real photos + sprites",
                   "jpeg_example_sizes": sizes[:5], "n_png": len(pngs),
                   "png": "openclipart-png graphics <= 2048 px a side"},
        "config": {"analysis_size": S, "max_pixels": cfg.max_pixels, "chunk_size": cfg.chunk_size,
                   "start_method": cfg.start_method, "hash_columns": list(cfg.hash_columns)},
        "img_per_cpu_s": cpu,
        "steps_cpu_ms_per_image": steps,
        "draft_decode_cpu_ms_per_image": round(1000.0 / cpu["jpeg_draft_decode"], 4),
        "stage_vs_draft_decode_jpeg_cpu": ratio("jpeg_stage_1_worker", "jpeg_draft_decode"),
        "target_stage_vs_draft_decode_jpeg": 0.80,
        "stage_vs_full_decode_jpeg_cpu": ratio("jpeg_stage_1_worker", "jpeg_full_decode"),
        "stage_extra_hashes_vs_draft_decode_jpeg_cpu": ratio("jpeg_stage_1_worker_extra_hashes", "jpeg_draft_decode"),
        "stage_vs_bare_decode_png_cpu": ratio("png_stage_1_worker", "png_bare_decode"),
        "target_stage_vs_bare_decode_png": 1.0,
        "parallel_efficiency_2_workers_cpu": ratio("jpeg_stage_2_workers_cpu", "jpeg_stage_1_worker"),
        "target_parallel_efficiency_2_workers": 0.85,
        "pool_startup_cpu_s": round(best["jpeg_stage_2_workers_cpu"]["startup_cpu_s"], 2),
        "wall": {"stage_1_worker_img_per_s": round(one["img_per_s"], 1),
                 "stage_2_workers_img_per_s": round(two["img_per_s"], 1),
                 "scaling_2_workers_wall": round(two["img_per_s"] / one["img_per_s"], 3),
                 "parent_cpu_ms_per_img_2_workers": round(two["parent_cpu_ms_per_img"], 3)},
        # bench/suite.py (merge, projection) reads these names; per CPU-second of one core
        "cpu_stage_img_per_s_per_core": cpu["jpeg_stage_1_worker"],
        "decode_ceiling_img_per_s_per_core": cpu["jpeg_full_decode"],
        "stage_vs_decode_ratio": ratio("jpeg_stage_1_worker", "jpeg_full_decode"),
        "stage_vs_draft_decode_ratio": ratio("jpeg_stage_1_worker", "jpeg_draft_decode"),
        "scaling_2_workers": round(2 * cpu["jpeg_stage_2_workers_cpu"] / cpu["jpeg_stage_1_worker"], 3),
        "peak_rss_mb_by_shard_size": {k: v["worker_peak_rss_mb"] for k, v in rss.items()},
        "memory_by_shard_size": rss,
        "rounds_img_per_cpu_s": {k: [round(m["img_per_cpu_s"], 1) for m in v] for k, v in rounds.items()},
        "load_avg_at_end": os.getloadavg(),
        "bench_wall_s": round(time.perf_counter() - t_start, 1),
    }
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
