"""Streaming image folders: memory and time to the first training step, as the dataset grows.

Plain script (``nox -s bench -- streaming`` runs it), prints markdown tables::

    python packages/fqgan/benchmarks/bench_streaming.py                    # 20 000 and 200 000 PNGs
    python packages/fqgan/benchmarks/bench_streaming.py --sizes 2000 20000 --folder-contrast 2000

For each size N it generates N small PNGs in 10 class folders (once: they are kept in
``--workdir`` and reused), packs them with ``fqgan-prepare``, then starts ``fqgan-train
--data packed:DIR`` in a fresh process and measures:

- *time to first step*: from launching the process to the end of step 1 (interpreter start,
  imports, opening the data, building the models, starting the loader workers, one D and one
  G update);
- *peak RSS*: of the training process (``ru_maxrss``) and of its largest loader worker
  (``ru_maxrss`` of the children, read after they have been joined). RSS counts the pages of
  the memory-mapped shards a process has touched; they are page cache, shared by every process.
  A forked worker's RSS also counts the pages it shares with the training process;
- *private* (in brackets): peak anonymous memory (``RssAnon``, sampled every 20 ms), what each
  process costs beyond the shared page cache. A worker drawing random images faults in a
  neighbourhood of pages around each one, so its RSS grows with the dataset's size while its
  private memory does not.

Each training row is the median of ``--repeats`` fresh processes (peak RSS: the largest), after
one unmeasured start that warms the page cache for the interpreter and libraries.

``fqgan-prepare``'s own wall time and peak RSS (the main process and the largest decoder) are
reported too, and for contrast ``fqgan-train --data folder:DIR`` at ``--folder-contrast`` images,
which decodes every image into the training process first. The goal: the packed rows stay within
15 % of each other whatever N. 200 000 files of 16×16 take about 1 GB of disk (file-system blocks).

Linux only (``ru_maxrss`` in KiB, ``/proc`` for the machine description).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = 10
GENERATE_CHUNK = 1000
COMPLETE_MARKER = ".complete.json"  # written last: a folder without it is regenerated
GOAL = 1.15  # largest / smallest packed dataset, for time and memory


# --------------------------------------------------------------------------- the data


def _write_pngs(task: tuple[str, int, int, int]) -> None:
    """PNGs ``start .. start + count - 1`` of a generated folder: smooth colour ramps plus noise."""
    import numpy as np
    from PIL import Image

    folder, start, count, size = task
    rng = np.random.default_rng(start)
    ramp = np.linspace(0, 1, size)[None, :, None] * np.linspace(0, 1, size)[:, None, None]
    for index in range(start, start + count):
        colour = rng.uniform(0, 255, 3)
        pixels = ramp * colour + rng.normal(0, 12, (size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(Path(folder) / f"class_{index % CLASSES:02d}" / f"{index:07d}.png")


def generated_folder(workdir: Path, count: int, size: int, workers: int) -> Path:
    """``workdir/pngs-N-SxS``: N PNGs in 10 class folders, generated once and reused."""
    folder = workdir / f"pngs-{count}-{size}x{size}"
    wanted = {"count": count, "size": size, "classes": CLASSES}
    marker = folder / COMPLETE_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for label in range(CLASSES):
        (folder / f"class_{label:02d}").mkdir(parents=True)
    started = time.perf_counter()
    tasks = [
        (str(folder), start, min(GENERATE_CHUNK, count - start), size)
        for start in range(0, count, GENERATE_CHUNK)
    ]
    with multiprocessing.Pool(workers) as pool:
        pool.map(_write_pngs, tasks)
    marker.write_text(json.dumps(wanted))
    print(f"generated {count} PNGs in {folder} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return folder


# --------------------------------------------------------------------------- measured child processes


def _peak_rss_mib() -> tuple[float, float]:
    """Peak RSS of this process and of the largest of its joined children, in MiB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _anonymous_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PrivateMemoryWatch:
    """Peak private (anonymous) memory of this process and of its largest child, sampled every 20 ms.

    ``ru_maxrss`` also counts the pages of the memory-mapped shards a process has touched: page
    cache, shared by all processes and reclaimable. A worker reading random images touches pages
    in proportion to the dataset's size (the kernel maps a whole neighbourhood per fault), so its
    RSS grows with N while its own memory does not. Anonymous memory is what each process costs.
    """

    def __init__(self) -> None:
        import threading

        self.own = self.children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.02):
            self.own = max(self.own, _anonymous_kib(me) or 0)
            try:
                children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
            except OSError:
                children = []
            for child in children:
                self.children = max(self.children, _anonymous_kib(int(child)) or 0)

    def __enter__(self) -> PrivateMemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, float]:
        return {"private": self.own / 1024, "worker_private": self.children / 1024}


def child_train(argv: list[str]) -> dict:
    """Run fqgan-train here, noting when the first step's G update returns."""
    import gc

    import fqgan.train as train_module

    first_step: dict[str, float] = {}
    generator_update = train_module.GANSteps.generator_update

    def noting_the_first(self, step, n):
        result = generator_update(self, step, n)
        first_step.setdefault("done_at", time.time())
        return result

    train_module.GANSteps.generator_update = noting_the_first
    with PrivateMemoryWatch() as watch:
        status = train_module.main(argv)
        gc.collect()  # the loader's workers are joined when its iterator goes
    own, workers = _peak_rss_mib()
    return {
        "status": status,
        "first_step_done_at": first_step.get("done_at"),
        "rss": own,
        "worker_rss": workers,
        **watch.report(),
    }


def child_prepare(argv: list[str]) -> dict:
    from fqgan.prepare import main

    with PrivateMemoryWatch() as watch:
        status = main(argv)
    own, workers = _peak_rss_mib()
    return {"status": status, "rss": own, "worker_rss": workers, **watch.report()}


def measure_median(data: str, run_dir: Path, args: argparse.Namespace) -> dict:
    """``--repeats`` fresh training processes; each figure is the median over them (RSS: the largest).

    Each process trains in an emptied ``run_dir``: a finished run left there would be resumed and
    take no step.
    """
    reports = []
    for _ in range(args.repeats):
        shutil.rmtree(run_dir, ignore_errors=True)
        reports.append(measure("train", train_args(data, run_dir, args), args.threads))
    first_steps = sorted(report["first_step"] for report in reports)
    return {
        "first_step": first_steps[len(first_steps) // 2],
        "first_steps": first_steps,
        **{
            key: max(report[key] for report in reports)
            for key in ("rss", "worker_rss", "private", "worker_private")
        },
    }


def measure(kind: str, argv: list[str], threads: int) -> dict:
    """Run a child process (``kind``: train or prepare) and return its report plus its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, "--", *argv]
    launched = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - launched
    if done.returncode != 0 or not done.stdout.strip():
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"bench_streaming: {kind} {' '.join(argv)} failed (exit {done.returncode})")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["status"] != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"bench_streaming: {kind} {' '.join(argv)} exited with {report['status']}")
    report["wall"] = wall
    if report.get("first_step_done_at"):
        report["first_step"] = report["first_step_done_at"] - launched
    return report


# --------------------------------------------------------------------------- the table


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model}, {cores} cores available; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def train_args(data: str, run_dir: Path, args: argparse.Namespace) -> list[str]:
    return [
        "--data", data, "--resolution", str(args.image_size), "--arch", "dcgan", "--g-ch", "8", "--d-ch", "8",
        "--fq-layers", "0,1,2", "--batch-size", str(args.batch_size), "--d-steps", "1", "--steps", "2",
        "--num-workers", str(args.loader_workers), "--run-dir", str(run_dir), "--log-every", "1",
        "--checkpoint-every", "0", "--sample-every", "1000", "--num-grid-samples", "4", "--no-progress",
        "--device", "cpu",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000], help="Dataset sizes.")
    parser.add_argument(
        "--folder-contrast",
        type=int,
        default=20_000,
        help="Also train on folder: (in RAM) at this size (0: no).",
    )
    parser.add_argument(
        "--image-size", type=int, default=16, help="PNG side = training resolution (16, 32, 64)."
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loader-workers", type=int, default=2, help="fqgan-train --num-workers.")
    parser.add_argument(
        "--prepare-workers", type=int, default=-1, help="fqgan-prepare --workers (-1: all cores)."
    )
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the measured processes.")
    parser.add_argument("--repeats", type=int, default=3, help="Training processes per row (median time).")
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "fqgan-bench-streaming"),
        help="Where the generated PNGs (kept for later runs), packed folders and runs go.",
    )
    parser.add_argument("--child", choices=("train", "prepare"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        child = child_train if args.child == "train" else child_prepare
        report = child(rest[1:] if rest[:1] == ["--"] else rest)
        print(json.dumps(report))
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # One unmeasured start first, so no row pays for reading torch and fqgan from a cold disk.
    subprocess.run([sys.executable, "-c", "import fqgan.train, fqgan.prepare"], check=True)
    load_before = _load()
    sizes = sorted(set(args.sizes))
    prepared, trained = [], []
    for size in sizes:
        source = generated_folder(workdir, size, args.image_size, cores)
        packed = workdir / f"packed-{size}-{args.image_size}"
        shutil.rmtree(packed, ignore_errors=True)  # measure a real packing, not an up-to-date no-op
        prepare = [f"folder:{source}", "--resolution", str(args.image_size), "--out", str(packed)]
        prepared.append((size, measure("prepare", [*prepare, "--workers", str(args.prepare_workers)], 1)))
        report = measure_median(f"packed:{packed}", workdir / "runs" / f"packed-{size}", args)
        trained.append(("packed", size, report))
    if args.folder_contrast:
        source = generated_folder(workdir, args.folder_contrast, args.image_size, cores)
        report = measure_median(f"folder:{source}", workdir / "runs" / f"folder-{args.folder_contrast}", args)
        trained.append(("folder (in RAM)", args.folder_contrast, report))

    print(f"Machine: {_machine()}")
    print(f"Load average (1/5/15 min): {load_before} before, {_load()} after")
    print(
        f"fqgan-train: dcgan ch 8 at {args.image_size}×{args.image_size}, batch {args.batch_size}, "
        f"--num-workers {args.loader_workers}, OMP_NUM_THREADS={args.threads}; median of {args.repeats} "
        "fresh processes per row (peak RSS: the largest)\n"
    )
    columns = [
        "data",
        "images",
        "time to first step",
        "peak RSS, training process (private)",
        "peak RSS, loader worker (private)",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|")
    for kind, size, report in trained:
        main_rss = f"{report['rss']:.0f} MiB ({report['private']:.0f})"
        worker = (
            f"{report['worker_rss']:.0f} MiB ({report['worker_private']:.0f})"
            if kind == "packed"
            else "– (no workers)"
        )
        print(f"| {kind} | {size:,} | {report['first_step']:.2f} s | {main_rss} | {worker} |")
    packed_rows = [report for kind, _, report in trained if kind == "packed"]
    if len(packed_rows) > 1:
        small, large = packed_rows[0], packed_rows[-1]
        ratios = {
            "time to first step": large["first_step"] / small["first_step"],
            "training process RSS": large["rss"] / small["rss"],
            "training process private": large["private"] / small["private"],
            "loader worker RSS": large["worker_rss"] / max(small["worker_rss"], 1e-9),
            "loader worker private": large["worker_private"] / max(small["worker_private"], 1e-9),
        }
        verdict = ", ".join(
            f"{name} ×{ratio:.2f} ({'within' if abs(ratio - 1) <= GOAL - 1 else 'OUTSIDE'} the 15 % goal)"
            for name, ratio in ratios.items()
        )
        print(f"\npacked, {sizes[-1]:,} vs {sizes[0]:,} images: {verdict}")
    print(
        "\n| fqgan-prepare | images | wall time | peak RSS, main (private) "
        "| peak RSS, largest decoder (private) |"
    )
    print("|---|---|---|---|---|")
    for size, report in prepared:
        rss = f"{report['rss']:.0f} MiB ({report['private']:.0f})"
        decoder = f"{report['worker_rss']:.0f} MiB ({report['worker_private']:.0f})"
        print(f"| --workers {args.prepare_workers} | {size:,} | {report['wall']:.1f} s | {rss} | {decoder} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
