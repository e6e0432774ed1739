"""`make demo` timed on a fresh clone: the figure the README quotes for the demo.

    python -m bench.demo_time [--origin /work/main] [--branch integ] [--clone /tmp/demo-fresh]
                              [--venv /work/main/.venv] [--out bench/results/demo.json]

Clones `--branch` of `--origin` into an empty `--clone` folder, links `--venv` in as the clone's
`.venv` (so the measurement leaves out the one-off ~5-minute `pip install`; the JSON says so), and
runs `make -o .venv/.installed demo` there under `nice` (`-o` keeps make from reinstalling into the
shared venv). Every console line is timestamped as it arrives, so the JSON holds the whole wall time
and the phases between make's echoed commands: set-up + corpus build, the `curate run`
(registration, every shard, semantic pass, summary) and `demo.evaluate`. It also records the
console's line count and its first and last lines, the demo's evaluation (`reports/demo_eval.json`),
the machine and the load average at start and end, and every stage's `elapsed_s` / row count per
shard from the clone's Dagster instance. Exits non-zero, writing nothing, when the demo fails.

`--deadline-s N` stops the demo after N seconds and records what finished (`"complete": false`);
`--collect LOG` records, the same way, a clone's demo that was started earlier with its console
saved in LOG (the wall time then runs from the clone's creation to LOG's last write).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, machine, today

#: the first words of make's echoed command that starts each phase
PHASES = (("setup_and_corpus", "mkdir -p"), ("curate_run", "-m orchestration.cli run"),
          ("evaluate", "-m demo.evaluate"))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fresh_clone(origin: str, branch: str, clone: Path, venv: Path) -> str:
    """An empty `clone` folder holding `branch` of `origin`, with `venv` linked as `.venv`; its commit."""
    if clone.exists():
        shutil.rmtree(clone)
    subprocess.run(["git", "clone", "-q", "--branch", branch, origin, str(clone)], check=True)
    (clone / ".venv").symlink_to(venv.resolve())
    return subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def timed_lines(cmd: list[str], cwd: Path, env: dict,
                deadline_s: float | None = None) -> tuple[int | None, list[tuple[float, str]]]:
    """Run `cmd`, echo and timestamp (seconds since start) every output line; (exit status, lines).
    Past `deadline_s` the command's process group is stopped and the status is None."""
    import signal
    import threading

    t0 = time.monotonic()
    lines = []
    stopped = threading.Event()
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1, start_new_session=True) as proc:
        def stop() -> None:
            stopped.set()
            os.killpg(proc.pid, signal.SIGTERM)

        timer = threading.Timer(deadline_s, stop) if deadline_s else None
        if timer:
            timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))
            print(line, end="", flush=True)
    if timer:
        timer.cancel()
    lines.append((time.monotonic() - t0, ""))
    return (None if stopped.is_set() else proc.returncode), lines


def stage_records(clone: Path) -> dict[str, dict[str, dict]]:
    """{shard or 'corpus': {stage: {rows, elapsed_s}}} from the clone's instance's materialisations."""
    import dagster as dg

    out: dict[str, dict[str, dict]] = {}
    os.environ["DAGSTER_HOME"] = str(clone / "dagster_home")  # its dagster.yaml reads it
    with dg.DagsterInstance.from_config(str(clone / "dagster_home")) as instance:
        for key in instance.get_asset_keys():
            for rec in instance.fetch_materializations(key, limit=1000).records:
                mat = rec.asset_materialization
                if mat is None:
                    continue
                meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
                out.setdefault(mat.partition or "corpus", {})[key.to_user_string()] = {
                    "rows": meta.get("dagster/row_count"), "elapsed_s": meta.get("elapsed_s")}
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def phase_seconds(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds between the echoed commands that start each phase (the last phase ends at exit)."""
    starts = []
    for name, marker in PHASES:
        at = next((t for t, text in lines if marker in text), None)
        if at is not None:
            starts.append((name, at))
    end = lines[-1][0]
    return {name: round((starts[i + 1][1] if i + 1 < len(starts) else end) - at, 1)
            for i, (name, at) in enumerate(starts)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--origin", default="/work/main")
    ap.add_argument("--branch", default="integ")
    ap.add_argument("--clone", default="/tmp/demo-fresh")
    ap.add_argument("--venv", default=str(REPO / ".venv") if (REPO / ".venv").exists() else "/work/main/.venv")
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "demo.json"))
    ap.add_argument("--deadline-s", type=float, default=None, help="stop the demo after this long")
    ap.add_argument("--collect", default=None, metavar="LOG",
                    help="do not run: record the demo already run in --clone, its console saved in LOG")
    ap.add_argument("--note", default=None, help="a remark stored with the result")
    args = ap.parse_args(argv)

    clone = Path(args.clone)
    if args.collect:
        commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], check=True, capture_output=True,
                                text=True).stdout.strip()
        load_start = None
        # from the clone's creation to the console's last line
        wall = Path(args.collect).stat().st_mtime - (clone / ".git" / "HEAD").stat().st_mtime
        lines = [(0.0, ln) for ln in Path(args.collect).read_text().splitlines()] + [(wall, "")]
        finished = (clone / "data" / "outputs" / "reports" / "demo_eval.json").exists()
        status = 0 if finished else None  # demo.evaluate, the demo's last step, wrote its result
    else:
        commit = fresh_clone(args.origin, args.branch, clone, Path(args.venv))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATION_", "DAGSTER_"))}
        env["PYTHONPATH"] = str(clone)  # the clone's code, not the shared venv's editable install
        load_start = _load()
        t0 = time.monotonic()
        status, lines = timed_lines(["nice", "-n", str(args.nice), "make", "-o", ".venv/.installed", "demo"],
                                    clone, env, args.deadline_s)
        wall = time.monotonic() - t0
        if status not in (0, None):
            print(f"demo_time: make demo failed (exit {status}); nothing written", file=sys.stderr)
            return 1
    eval_path = clone / "data" / "outputs" / "reports" / "demo_eval.json"
    console = [text for _, text in lines[:-1]]
    result = {
        "date": today(),
        "machine": machine(),
        "load_average_start": load_start,
        "load_average_end": _load(),
        "niceness": args.nice,
        "clone": {"origin": args.origin, "branch": args.branch, "commit": commit},
        "venv": f"linked from {args.venv}: the one-off pip install (~5 min) is NOT in wall_seconds",
        "command": "make -o .venv/.installed demo",
        "complete": status == 0,
        "note": args.note,
        "wall_seconds": round(wall, 1),
        "phase_seconds": phase_seconds(lines) if not args.collect else None,
        "stages": stage_records(clone),
        "console_lines": len(console),
        "console_debug_lines": sum(" DEBUG " in t or " - DEBUG - " in t for t in console),
        "console_first_lines": console[:8],
        "console_last_lines": console[-12:],
        "demo_eval": json.loads(eval_path.read_text()) if eval_path.exists() else None,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"demo_time: {wall:.0f} s wall -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
