"""CPU decoding for the embedding stage: reader threads alone vs. threads + decode processes
(`curation.embedding.decode_pool`), against the fastest the cores do the same work.

The same real PNG graphics (openclipart-png when installed, else the arcade sprites PyPI ships),
decoded, composited on white and resized to the model input (224 px, `to_model_array`) three ways,
in one run, interleaved, best of `--rounds`:

* threads: the embedding stage's `BatchProducer` with `--workers` reader threads decoding (what a
  GPU host did for every non-JPEG row);
* processes: the same producer with a `DecodePool` of `--workers` processes (threads read);
* ceiling: `--workers` independent processes, each decoding its share of the files with
  `decode_rows` (no producer, no pickling of results): the cores doing only the decode.

No model runs: this isolates the decode that feeds a GPU. Writes bench/results/decode_pool.json
(wall images/s; on a shared machine compare the ratios of one run).

    .venv/bin/python -m bench.decode_pool [--n 600] [--workers N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, machine

OPENCLIPART = Path("/usr/share/openclipart/png")
SIZE = 224


def corpus(n: int) -> tuple[list[str], str]:
    files = sorted(str(p) for p in OPENCLIPART.rglob("*.png")) if OPENCLIPART.is_dir() else []
    kind = "openclipart-png graphics"
    if not files:
        from demo.corpus import arcade_images

        files, kind = [str(p) for p in arcade_images()], "arcade sprites and tiles (PyPI arcade)"
    small = [f for f in files if os.path.getsize(f) < 2_000_000]  # as in stage 1's benches: no giant posters
    step = max(1, len(small) // n)
    return small[::step][:n], kind


def _decode_share(paths: list[str]) -> int:
    from curation.embedding.decode_pool import DecodeSpec, decode_rows
    from curation.imaging.policy import decode_rgb

    rows = [(p, Path(p).read_bytes()) for p in paths]
    return sum(k == "hwc" for k, _ in decode_rows(DecodeSpec(decode_rgb, SIZE + 32, SIZE), rows))


class _Geometry:
    def __init__(self) -> None:
        from curation.embedding.decode_pool import to_model_array

        self.image_size, self.resize_size, self.batch_size, self.device = SIZE, SIZE + 32, 64, "cpu"
        self.pil_to_array = lambda img: to_model_array(img, self.resize_size, self.image_size)


def _producer_rate(files: list[str], workers: int, processes: bool) -> float:
    from curation.embedding.chunks import ChunkLayout
    from curation.embedding.decode_pool import DecodePool, DecodeSpec
    from curation.embedding.producer import BatchProducer
    from curation.imaging.policy import decode_rgb, rgb_opener, source_reader

    emb: Any = _Geometry()  # what BatchProducer reads of an embedder (no model runs here)
    pool = DecodePool(DecodeSpec(decode_rgb, emb.resize_size, emb.image_size), workers) if processes else None
    if pool is not None:
        pool.decode([(files[0], Path(files[0]).read_bytes())] * workers)  # workers started before the clock
    stats = {"load_wait_s": 0.0, "assemble_s": 0.0, "gpu_decode_s": 0.0}
    try:
        t = time.perf_counter()
        producer = BatchProducer(emb, files, ChunkLayout(total=len(files), chunk_size=len(files)), [0],
                                 rgb_opener(None), source_reader(None), workers + 2 if processes else workers, 2,
                                 stats, decode_pool=pool)
        producer.start()
        rows = 0
        while (b := producer.get()) is not None:
            rows += len(b.host_positions)
        producer.join()
        dt = time.perf_counter() - t
    finally:
        if pool is not None:
            pool.close()
    assert rows == len(files), f"{len(files) - rows} files failed to decode"
    return len(files) / dt


def _ceiling_rate(files: list[str], workers: int) -> float:
    shares = [files[i::workers] for i in range(workers)]
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        list(pool.map(_decode_share, [s[:2] for s in shares]))  # workers started and warm
        t = time.perf_counter()
        done = sum(pool.map(_decode_share, shares))
        dt = time.perf_counter() - t
    assert done == len(files)
    return len(files) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench/results/decode_pool.json"))
    args = ap.parse_args()
    files, kind = corpus(args.n)
    load0 = os.getloadavg()
    runs: dict[str, list[float]] = {"threads": [], "processes": [], "ceiling": []}
    for _ in range(args.rounds):
        runs["threads"].append(_producer_rate(files, args.workers, processes=False))
        runs["processes"].append(_producer_rate(files, args.workers, processes=True))
        runs["ceiling"].append(_ceiling_rate(files, args.workers))
        print({k: round(v[-1], 1) for k, v in runs.items()}, flush=True)
    best = {k: max(v) for k, v in runs.items()}
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "load_avg_at_start": list(load0), "load_avg_at_end": list(os.getloadavg())},
        "corpus": {"files": len(files), "kind": kind, "output": f"{SIZE}x{SIZE} RGB (composited on white)"},
        "workers": args.workers,
        "how": ("wall images/s, best of interleaved rounds; threads = BatchProducer decoding in its reader "
                "threads; processes = the same producer with a DecodePool; ceiling = independent processes "
                "decoding disjoint shares (no producer, no result transfer)"),
        "img_per_s": {k: round(v, 1) for k, v in best.items()},
        "rounds_img_per_s": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "processes_over_threads": round(best["processes"] / best["threads"], 3),
        "processes_over_ceiling": round(best["processes"] / best["ceiling"], 3),
        "threads_over_ceiling": round(best["threads"] / best["ceiling"], 3),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("img_per_s", "processes_over_threads", "processes_over_ceiling")}))


if __name__ == "__main__":
    main()
