"""Shared helpers of the benchmark suite: a corpus of real images of a given size, machine facts."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gb, 1), "python": platform.python_version()}


def today() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def demo_corpus() -> Path:
    """The demo corpus (built by `make demo` / `python -m demo.corpus`): ~6,000 real images."""
    from demo.corpus import build_demo_corpus

    corpus = REPO / "data" / "demo_corpus"
    build_demo_corpus(corpus, REPO / "data" / "demo_fewshot")
    return corpus


def linked_corpus(dst: Path, n: int) -> Path:
    """A folder of `n` real images: the demo corpus's decodable files, hard-linked (no copy) and
    repeated under distinct names when n exceeds the corpus."""
    if dst.exists() and sum(1 for _ in dst.rglob("*.*")) == n:
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    src = sorted(p for p in demo_corpus().rglob("*") if p.is_file() and not p.name.startswith(".")
                 and "broken" not in p.parts)
    for i in range(n):
        p = src[i % len(src)]
        target = dst / f"{i // 1000:04d}" / f"{i:07d}{p.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(p, target)
    return dst
