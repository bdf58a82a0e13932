"""Image folders on disk: which files are images of which class, and how one file becomes pixels.

Both ways of training on a folder go through here, so they see the same images in the same
order with the same pixels: ``--data folder:DIR`` decodes every file into memory
(:func:`fqgan.data.load_image_folder`), and ``fqgan-prepare`` decodes them once into
memory-mapped shards (:mod:`fqgan.packed`).

- :func:`list_image_folder`: sub-folders holding images are the classes (sorted by name), their
  image files (sorted) the items; a folder without such sub-folders is one class.
- :func:`decode_image`: RGB, centre-cropped to a square and resized (bicubic) to the resolution.
- :func:`decode_in_order`: many files, decoded in worker processes, results in listing order.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgm_core.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")

# Files per task sent to a decoder process: large enough that the pickling round trip is
# small next to the decoding, small enough that the in-flight window stays a few MB.
DECODE_CHUNK = 64


@dataclass(frozen=True)
class FolderListing:
    """The image files of a folder, in the order every consumer uses, with their class labels."""

    root: Path
    class_names: list[str]
    files: list[Path]
    labels: list[int]

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def fingerprint(self) -> str:
        """A hash of every file's relative path, class, size and modification time.

        It changes when a file is added, removed, renamed, moved to another class or rewritten,
        so a packed copy can tell whether it still matches its source.
        """
        digest = hashlib.sha256()
        for path, label in zip(self.files, self.labels):
            stat = path.stat()
            digest.update(f"{label}\t{self.relative(path)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return f"sha256:{digest.hexdigest()}"


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_image_folder(directory: str | os.PathLike) -> FolderListing:
    """Classes and image files of ``directory`` (see the module docstring); errors name the folder."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _image_files(d)]
    groups = [(d.name, _image_files(d)) for d in class_dirs] or [(root.name, _image_files(root))]
    files = [path for _, paths in groups for path in paths]
    if not files:
        raise UserError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    labels = [label for label, (_, paths) in enumerate(groups) for _ in paths]
    return FolderListing(root, [name for name, _ in groups], files, labels)


def decode_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """One file as ``uint8 (resolution, resolution, 3)``: RGB, centre crop to a square, bicubic resize.

    Raises what PIL raises for a file it cannot read (:func:`decode_chunk` turns that into a reason).
    """
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.fit(img.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
        return np.array(img, dtype=np.uint8)  # a writable copy, not a view of PIL's buffer


def _unreadable_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image, UnidentifiedImageError

    # DecompressionBombError: an image over twice PIL's pixel limit, refused rather than decoded.
    return (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_chunk(paths: Sequence[Path], resolution: int) -> list[tuple[np.ndarray | None, str]]:
    """``(pixels, "")`` for each readable file, ``(None, reason)`` for each unreadable one."""
    unreadable = _unreadable_errors()
    results: list[tuple[np.ndarray | None, str]] = []
    for path in paths:
        try:
            results.append((decode_image(path, resolution), ""))
        except unreadable as error:
            results.append((None, f"{type(error).__name__}: {error}"))
    return results


def decode_in_order(
    paths: Sequence[Path], resolution: int, workers: int = 0
) -> Iterator[tuple[np.ndarray | None, str]]:
    """:func:`decode_chunk`'s results for ``paths``, in order, decoded by ``workers`` processes.

    ``workers == 0`` decodes here. Otherwise at most ``2 × workers`` chunks are in flight, so
    memory stays bounded however fast the consumer is; a decoder process that dies (a crash
    inside an image library) is reported as an error naming the files it was decoding.
    """
    chunks = (paths[start : start + DECODE_CHUNK] for start in range(0, len(paths), DECODE_CHUNK))
    if workers <= 0:
        for chunk in chunks:
            yield from decode_chunk(chunk, resolution)
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    pending: deque = deque()

    def finished() -> list[tuple[np.ndarray | None, str]]:
        chunk, future = pending.popleft()
        try:
            return future.result()
        except BrokenProcessPool:
            raise UserError(
                f"an image decoder process died while reading {chunk[0]} … {chunk[-1]}; "
                "run again with --workers 0 to see which file makes the image library crash"
            ) from None

    try:
        for chunk in chunks:
            pending.append((chunk, pool.submit(decode_chunk, chunk, resolution)))
            if len(pending) >= 2 * workers:
                yield from finished()
        while pending:
            yield from finished()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
