"""The token cache of a large corpus: time and memory of ``optimus-train``'s preparation, 1 rank vs 2.

Plain script (``nox -s bench -- token_cache`` runs it), prints a markdown table::

    python packages/optimus/benchmarks/bench_token_cache.py                  # 1 GB, 1 and 2 ranks
    python packages/optimus/benchmarks/bench_token_cache.py --gigabytes 0.05 # a quick look

It writes a text file of ``--gigabytes`` of embedded-grammar sentences (once: it is kept in
``--workdir`` and reused), then runs ``optimus-train --train-file FILE --steps 1`` on a fresh run
directory with ``--nproc-per-node`` 1 and 2. Rank 0 trains the tokenizers on the first 200 000
sentences and tokenizes the whole file into the memory-mapped cache while the other rank waits
inside ``run.main_process_first()``; then every rank opens the one cache and takes one step.

Measured from outside, by polling ``/proc`` every 0.2 s (the processes are not modified):

- *cache ready*: launch to the moment ``token_cache/meta.json`` exists (written last);
- *total*: launch to exit (includes interpreter start, the step and the final save);
- *peak RSS per rank*: ``VmHWM`` of each rank's process (the earliest process whose environment
  has ``RANK=r``; for one process, the launched process itself). Loader workers are not counted.

Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPLETE_MARKER = ".complete.json"  # written last: a file without it is regenerated
SENTENCES_PER_CHUNK = 200_000
POLL_S = 0.2


# --------------------------------------------------------------------------- the corpus


def _write_chunk(task: tuple[str, int]) -> int:
    """Chunk ``index`` of the corpus: embedded-grammar sentences of its own seed, one per line."""
    from optimus.grammar import generate_corpus

    path, index = task
    text = "".join(s.text + "\n" for s in generate_corpus(SENTENCES_PER_CHUNK, seed=100_000 + index))
    Path(path).write_text(text)
    return len(text.encode())


def generated_corpus(workdir: Path, gigabytes: float, workers: int) -> Path:
    """``workdir/corpus-<G>GB.txt`` of at least ``gigabytes`` GB, generated once and reused."""
    target = int(gigabytes * 1e9)
    path = workdir / f"corpus-{gigabytes:g}GB.txt"
    marker = workdir / f"corpus-{gigabytes:g}GB{COMPLETE_MARKER}"
    if (
        path.is_file()
        and marker.is_file()
        and json.loads(marker.read_text()).get("bytes") == path.stat().st_size
    ):
        return path
    started = time.perf_counter()
    parts = workdir / "parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    written, index, files = 0, 0, []
    with multiprocessing.Pool(workers) as pool:
        while written < target:
            tasks = [(str(parts / f"{index + i:05d}.txt"), index + i) for i in range(workers * 2)]
            written += sum(pool.map(_write_chunk, tasks))
            files += [Path(task[0]) for task in tasks]
            index += len(tasks)
    with open(path, "wb") as out:
        for file in files:
            out.write(file.read_bytes())
    shutil.rmtree(parts)
    marker.write_text(json.dumps({"bytes": path.stat().st_size}))
    with open(path, "rb") as text:
        lines = sum(1 for _ in text)
    print(
        f"generated {path} ({path.stat().st_size / 1e9:.2f} GB, {lines:,} sentences) "
        f"in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return path


# --------------------------------------------------------------------------- watching the processes


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry))
    return tree


def _descendants(root: int) -> list[int]:
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += tree.get(pid, [])
    return found


def _read_process(pid: int) -> tuple[str | None, int, float] | None:
    """(RANK from its environment, VmHWM in KiB, start time in clock ticks), or None once it is gone."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rank = next((item[5:].decode() for item in environ if item.startswith(b"RANK=")), None)
    peak = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    started = float(stat.rsplit(")", 1)[1].split()[19])
    return rank, peak, started


def run_and_watch(command: list[str], cache_meta: Path, env: dict) -> dict:
    """Run ``command``; return its wall time, when ``cache_meta`` appeared and each rank's peak RSS (MiB)."""
    launched = time.time()
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - read back on failure, closed at exit
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    processes: dict[int, tuple[str | None, int, float]] = {}
    cache_ready = None
    while process.poll() is None:
        for pid in _descendants(process.pid):
            seen = _read_process(pid)
            if seen is not None:
                processes[pid] = seen
        if cache_ready is None and cache_meta.is_file():
            cache_ready = time.time() - launched
        time.sleep(POLL_S)
    total = time.time() - launched
    if process.returncode != 0:
        log.seek(0)
        sys.stderr.write(log.read()[-4000:])
        raise SystemExit(f"bench_token_cache: {' '.join(command)} failed (exit {process.returncode})")
    ranks: dict[str, tuple[float, int]] = {}  # rank -> (start time, peak KiB) of its earliest process
    for pid, (rank, peak, started) in processes.items():
        rank = rank if rank is not None else ("0" if pid == process.pid else None)
        if rank is not None and (rank not in ranks or started < ranks[rank][0]):
            ranks[rank] = (started, peak)
    return {
        "total": total,
        "cache_ready": cache_ready,
        "rss": {int(rank): peak / 1024 for rank, (_, peak) in ranks.items()},
    }


# --------------------------------------------------------------------------- the table


def _machine() -> str:
    model = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    cores = len(os.sched_getaffinity(0))
    system = f"{platform.system()} {platform.release()}; Python {platform.python_version()}"
    return f"{model}, {cores} cores available; {system}"


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gigabytes", type=float, default=1.0, help="Size of the generated text file.")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="--nproc-per-node values.")
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "optimus-bench-token-cache"),
        help="Where the generated corpus (kept for later runs) and the run directories go.",
    )
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    corpus = generated_corpus(workdir, args.gigabytes, cores)
    executable = shutil.which("optimus-train")
    if executable is None:
        raise SystemExit("bench_token_cache: optimus-train is not on PATH (install the optimus package)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    load_before = _load()
    rows = []
    for ranks in args.ranks:
        run_dir = workdir / f"run-{ranks}"
        shutil.rmtree(run_dir, ignore_errors=True)
        command = [
            executable, "--train-file", str(corpus), "--run-dir", str(run_dir), "--steps", "1",
            "--batch-size", "8", "--eval-sentences", "50", "--eval-every", "0", "--num-samples", "0",
            "--checkpoint-every", "0", "--log-every", "1", "--no-progress", "--device", "cpu",
            "--nproc-per-node", str(ranks),
        ]  # fmt: skip
        report = run_and_watch(command, run_dir / "token_cache" / "meta.json", env)
        meta = json.loads((run_dir / "token_cache" / "meta.json").read_text())
        cache_bytes = sum(f.stat().st_size for f in (run_dir / "token_cache").iterdir())
        rows.append((ranks, report, meta, cache_bytes))
        print(f"{ranks} rank(s): {json.dumps(report)}", file=sys.stderr)

    print(f"Machine: {_machine()}")
    print(f"Load average (1/5/15 min): {load_before} before, {_load()} after")
    print(
        f"optimus-train --train-file ({corpus.stat().st_size / 1e9:.2f} GB, "
        f"{rows[0][2]['num_sentences']:,} training sentences) --steps 1, fresh run directory\n"
    )
    print("| ranks | cache ready | total | peak RSS per rank | cache on disk |")
    print("|---|---|---|---|---|")
    for ranks, report, _, cache_bytes in rows:
        rss = ", ".join(f"rank {rank}: {mib:.0f} MiB" for rank, mib in sorted(report["rss"].items()))
        ready = f"{report['cache_ready']:.0f} s" if report["cache_ready"] is not None else "–"
        print(f"| {ranks} | {ready} | {report['total']:.0f} s | {rss} | {cache_bytes / 1e9:.2f} GB |")
    if len(rows) > 1:
        one, many = rows[0][1], rows[-1][1]
        print(f"\ntotal time, {rows[-1][0]} ranks vs {rows[0][0]}: ×{many['total'] / one['total']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
