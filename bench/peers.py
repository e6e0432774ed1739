"""Peers benchmark (not a test): stage 1 beside the tools people would otherwise use, on the same
files, in one run. Writes bench/results/peers.json.

Files: the inventory bench's JPEG photos (500x375 .. 1024x768) and PNG graphics (Debian's
openclipart-png, <= 2048 px a side), both from bench/inventory.py, hard-linked into one folder
(data/bench/peers_corpus).
Each peer runs in its OWN virtual environment that this script creates under data/bench/venvs/
(`python -m venv` + `pip install` of pinned versions; a failed install is recorded with pip's
last lines, not hidden), as one single-threaded process over the whole list:
  * imagehash   Image.open, first frame, transparency composited on white, `imagehash.phash`
  * imagededup  `PHash(verbose=False).encode_images(dir, num_enc_workers=1)` (its CPU includes
                any worker process it starts)
  * fastdup     `fastdup.create(...).run(num_threads=1)` (CPU), if it installs
Stage 1 runs in a subprocess of this repository's interpreter: `iter_inventory(workers=1)` alone,
and followed by the hash dedup of its output (`curation.dedup.dedup_shard`).
For each: images/s (wall) and images per CPU-second of its work loop (timed inside the child,
after its imports; the start-up CPU is the rest of the child's user+sys from wait4), and peak RSS
(the child's own VmHWM, imports included; ru_maxrss would carry the parent's RSS across exec). Ratios: stage 1 / each peer, and stage 1 / the fastest peer (goal >= 5).

Usage: python -m bench.peers [--n-jpeg 1000] [--n-png 500] [--skip-install]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, machine, today

VENVS = REPO / "data" / "bench" / "venvs"
CORPUS = REPO / "data" / "bench" / "peers_corpus"

# name -> (pip arguments, extra index for the CPU-only torch wheels or None)
PEERS: dict[str, tuple[list[str], str | None]] = {
    "imagehash": (["imagehash==4.3.2", "pillow==11.3.0"], None),
    # torch from PyPI, the versions of deploy/constraints.txt (the CPU-only index is not reachable
    # from every machine); imagededup imports torch even for PHash
    "imagededup": (["imagededup==0.3.3.post2", "torch==2.14.1", "torchvision==0.29.1"], None),
    "fastdup": (["fastdup==2.54"], None),
}

# Every script prints one JSON line: images done, and the CPU (process_time) and wall time of its
# work loop only, after its imports (start-up is reported separately, from wait4).
_TIMER = """
import json, resource, sys, time
def _cpu():  # this process + its reaped children (peers that fan out to worker processes)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ru.ru_utime + ru.ru_stime
_c0, _w0 = _cpu(), time.perf_counter()
def done(n):
    cpu, wall = _cpu() - _c0, time.perf_counter() - _w0
    hwm = next((int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")), 0)
    print(json.dumps({"n": n, "cpu_s": cpu, "wall_s": wall, "vmhwm_mb": hwm / 1024}))
"""

IMAGEHASH_SCRIPT = r"""
import sys, imagehash
from PIL import Image
""" + _TIMER + r"""
n = 0
for p in open(sys.argv[1]).read().split("\n"):
    if not p:
        continue
    with Image.open(p) as im:
        im.seek(0)
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        str(imagehash.phash(Image.alpha_composite(bg, im).convert("RGB")))
        n += 1
done(n)
"""

IMAGEDEDUP_SCRIPT = r"""
import sys
from imagededup.methods import PHash
hasher = PHash(verbose=False)
""" + _TIMER + r"""
enc = hasher.encode_images(image_dir=sys.argv[2], num_enc_workers=1)
done(sum(1 for v in enc.values() if v))
"""

FASTDUP_SCRIPT = r"""
import sys, fastdup
""" + _TIMER + r"""
fd = fastdup.create(work_dir=sys.argv[3], input_dir=sys.argv[2])
fd.run(num_threads=1, overwrite=True, verbose=False)
done(len(open(sys.argv[1]).read().split()))
"""

STAGE_SCRIPT = r"""
import sys, hashlib, os
import polars as pl
from curation.inventory import InventoryConfig, iter_inventory
from curation.schema import MANIFEST_SCHEMA
""" + _TIMER + r"""
paths = [p for p in open(sys.argv[1]).read().split("\n") if p]
m = pl.DataFrame([{"image_id": hashlib.sha1(p.encode()).hexdigest()[:16], "uri": p,
                   "rel_path": os.path.basename(p), "listed_bytes": None, "listed_mtime": None}
                  for p in paths], schema=MANIFEST_SCHEMA)
inv = pl.concat(list(iter_inventory(m, "peers", sys.argv[2], InventoryConfig(), workers=1)))
if sys.argv[3] == "dedup":
    from curation.dedup import dedup_shard
    dedup_shard(inv, None)
assert inv["error_code"].null_count() == len(paths), inv.filter(pl.col("error_code").is_not_null())
done(len(paths))
"""


def _pip_tail(out: str, n: int = 6) -> str:
    return "\n".join(out.strip().splitlines()[-n:])


def ensure_venv(name: str, skip_install: bool = False) -> tuple[Path | None, str | None]:
    """The venv's python for peer `name`, created and installed once (marker file INSTALLED);
    (None, why) when it cannot be installed."""
    venv = VENVS / name
    py = venv / "bin" / "python"
    marker = venv / "INSTALLED"
    failed = venv / "FAILED"
    if marker.exists():
        return py, None
    if failed.exists():
        return None, failed.read_text()
    if skip_install:
        return None, "not installed (--skip-install)"
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pkgs, index = PEERS[name]
    cmd = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pkgs]
    if index:
        cmd += ["--extra-index-url", index]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        why = f"pip install {' '.join(pkgs)} failed (rc={proc.returncode}): {_pip_tail(proc.stderr or proc.stdout)}"
        failed.write_text(why)
        return None, why
    marker.write_text(" ".join(pkgs))
    return py, None


def build_corpus(n_jpeg: int, n_png: int) -> list[Path]:
    """Hard links of the inventory bench's JPEG photos and openclipart PNGs in one folder."""
    from bench.inventory import build_corpus as jpeg_corpus
    from bench.inventory import png_corpus

    out = CORPUS / f"j{n_jpeg}_p{n_png}"
    done = out / "DONE"
    if not done.exists():
        out.mkdir(parents=True, exist_ok=True)
        jpegs = jpeg_corpus(n_jpeg)[:n_jpeg]
        pngs = png_corpus(n_png)  # the inventory bench's PNG graphics (<= 2048 px a side)
        for i, p in enumerate(jpegs + pngs):
            target = out / f"{i:06d}{p.suffix}"
            if not target.exists():
                real = p.resolve()  # Debian links duplicate cliparts with (relative) symlinks
                try:
                    os.link(real, target)
                except OSError:
                    target.write_bytes(real.read_bytes())
        done.write_text("ok")
    return sorted(p for p in out.iterdir() if p.suffix in (".jpg", ".png"))


def timed_child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    # read the pipes in this thread without reaping, then wait4 for the rusage of this child only
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "stdout": out.decode(errors="replace")[-300:],
            "stderr": err.decode(errors="replace")[-1500:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-jpeg", type=int, default=1000)
    ap.add_argument("--n-png", type=int, default=500)
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ", ".join(PEERS))
    ap.add_argument("--setup-only", action="store_true", help="create the venvs and exit")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "peers.json"))
    args = ap.parse_args()

    chosen = [p for p in args.peers.split(",") if p]
    unknown = [p for p in chosen if p not in PEERS]
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; allowed: {', '.join(PEERS)}")
    venvs = {name: ensure_venv(name, args.skip_install) for name in chosen}
    if args.setup_only:
        print({k: (str(v[0]) if v[0] else v[1]) for k, v in venvs.items()})
        return
    files = build_corpus(args.n_jpeg, args.n_png)
    listing = Path(tempfile.mkdtemp(prefix="peers_")) / "files.txt"
    listing.write_text("\n".join(str(p) for p in files) + "\n")
    folder = str(files[0].parent)
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    stage_env = {**one_thread, "PYTHONPATH": str(REPO)}
    here = str(Path(sys.executable))

    runs: dict[str, dict[str, object]] = {}
    jobs: dict[str, list[str]] = {
        "stage1": [here, "-c", STAGE_SCRIPT, str(listing), folder, "-"],
        "stage1_plus_dedup": [here, "-c", STAGE_SCRIPT, str(listing), folder, "dedup"],
    }
    scripts = {"imagehash": IMAGEHASH_SCRIPT, "imagededup": IMAGEDEDUP_SCRIPT, "fastdup": FASTDUP_SCRIPT}
    for name, (py, why) in venvs.items():
        if py is None:
            runs[name] = {"ok": False, "why": why}
            continue
        work = tempfile.mkdtemp(prefix=f"peer_{name}_")
        jobs[name] = [str(py), "-c", scripts[name], str(listing), folder, work]
    for name, cmd in jobs.items():
        print(f"running {name} ...", flush=True)
        res = timed_child(cmd, stage_env if name.startswith("stage1") else one_thread)
        ok = res["rc"] == 0
        entry: dict[str, object] = {"ok": ok, "process_wall_s": round(res["wall_s"], 2),
                                    "process_cpu_s": round(res["cpu_s"], 2)}
        if ok:
            work = json.loads(str(res["stdout"]).strip().splitlines()[-1])
            entry.update(peak_rss_mb=round(work["vmhwm_mb"], 1), images=work["n"], work_cpu_s=round(work["cpu_s"], 2), work_wall_s=round(work["wall_s"], 2),
                         startup_cpu_s=round(float(res["cpu_s"]) - work["cpu_s"], 2),
                         img_per_s=round(len(files) / work["wall_s"], 1),
                         img_per_cpu_s=round(len(files) / max(work["cpu_s"], 1e-9), 1))
        else:
            entry["why"] = f"rc={res['rc']}: {res['stderr'][-800:]}"
        runs[name] = entry
        print(f"  {name}: {entry}", flush=True)

    peers_ok = {k: v for k, v in runs.items() if not k.startswith("stage1") and v.get("ok")}
    ratios: dict[str, object] = {}
    for stage_key in ("stage1", "stage1_plus_dedup"):
        s = runs.get(stage_key, {})
        if not s.get("ok"):
            continue
        for peer, v in peers_ok.items():
            ratios[f"{stage_key}_vs_{peer}_cpu"] = round(s["img_per_cpu_s"] / v["img_per_cpu_s"], 2)
        if peers_ok:
            fastest = max(peers_ok, key=lambda k: peers_ok[k]["img_per_cpu_s"])
            ratios[f"{stage_key}_vs_fastest_peer_cpu"] = round(s["img_per_cpu_s"] / peers_ok[fastest]["img_per_cpu_s"], 2)
            ratios["fastest_peer"] = fastest
    result = {
        "date": today(),
        "machine": {**machine(), "load_avg_at_start": os.getloadavg()},
        "corpus": {"n_files": len(files), "n_jpeg": sum(p.suffix == ".jpg" for p in files),
                   "n_png": sum(p.suffix == ".png" for p in files),
                   "kind": "JPEG photos 500x375..1024x768 (bench/inventory.py) + openclipart-png graphics"},
        "how": "each peer one single-threaded process over the same files; CPU = user+sys of that process "
               "(wait4); rates per CPU-second are the comparable figure on a shared machine",
        "runs": runs,
        "ratios": ratios,
        "goal": "stage1_vs_fastest_peer_cpu >= 5",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"], indent=2))


if __name__ == "__main__":
    main()
