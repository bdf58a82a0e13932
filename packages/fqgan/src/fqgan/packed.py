"""Packed image folders: an image folder decoded once into memory-mapped ``uint8`` shards.

``fqgan-prepare folder:DIR --resolution R --out PACKED`` (:func:`pack_image_folder`) writes::

    PACKED/index.json           format, resolution, counts, class names, shards, skipped files
                                (with reasons) and a fingerprint of the source listing
    PACKED/images-00000.npy     uint8 (n, 3, R, R), the images in listing order (then -00001, …)
    PACKED/labels.npy           int64 (N,), the class of every image
    PACKED/files.txt            the source file of every image, one relative path a line

The pixels are exactly those of ``--data folder:DIR`` (both decode with
:func:`fqgan.folders.decode_image`, in :func:`fqgan.folders.list_image_folder`'s order).
The folder is built under a hidden temporary name and renamed into place when complete, so a
crash never leaves a ``PACKED`` that looks finished; ``index.json`` marks a packed folder.

:class:`PackedImages` reads it back for training and evaluation. Opening it reads only
``index.json`` and the shards' headers; the pixels are memory-mapped read-only on the first
``dataset[i]`` in each process (the loader workers), so the page cache holds one copy shared by
every rank and worker, and the object the training process keeps is a few paths.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

import fqgan
from dgm_core.errors import UserError
from dgm_core.runtime.files import TMP_PREFIX, atomic_directory
from fqgan.folders import decode_in_order, list_image_folder

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
LABELS_FILE = "labels.npy"
FILES_FILE = "files.txt"
FORMAT = "fqgan-packed-images"
FORMAT_VERSION = 1
DEFAULT_SHARD_BYTES = 256 * 2**20
# How the pixels were made, recorded in index.json for whoever reads the folder without this code.
TRANSFORM = "RGB; centre crop to a square and bicubic resize (PIL ImageOps.fit); layout N, C, H, W"


def _prepare_hint(folder: Path) -> str:
    return f"create it with `fqgan-prepare folder:DIR --resolution R --out {folder}`"


# --------------------------------------------------------------------------- reading


def read_index(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder/index.json``, checked to be a packed folder this version can read."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"packed image folder not found: {folder}; {_prepare_hint(folder)}")
    path = folder / INDEX_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a packed image folder (no {INDEX_FILE}); {_prepare_hint(folder)}")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is unreadable ({error}); pack the folder again") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"{path} does not describe a packed image folder (format {FORMAT!r} expected)")
    if index.get("version") != FORMAT_VERSION:
        raise UserError(
            f"{folder} is packed in format version {index.get('version')}; this fqgan reads "
            f"version {FORMAT_VERSION}: pack the folder again with this version's fqgan-prepare"
        )
    return index


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a ``.npy`` file, read without mapping its data."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        if fortran_order:
            raise ValueError("Fortran-ordered array")
        return tuple(shape), dtype, handle.tell()


class PackedImages(Dataset):
    """A folder written by ``fqgan-prepare``: ``dataset[i]`` is ``(uint8 (3, R, R) tensor, label)``.

    Construction checks the index and every file's header and size (a truncated shard is an
    error here, not a crash mid-training) but maps nothing: each process maps the shards on
    its first ``dataset[i]``, and pickling (to spawned loader workers) leaves the maps behind.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        index = read_index(self.folder)
        self.name = f"packed:{folder}"
        self.resolution = int(index["resolution"])
        self.class_names = [str(name) for name in index["class_names"]]
        self.num_classes = len(self.class_names)
        self.skipped = int(index["num_skipped"])
        self._shard_paths = [self.folder / shard["file"] for shard in index["shards"]]
        counts = [int(shard["num_images"]) for shard in index["shards"]]
        self._starts = [0]
        for count in counts:
            self._starts.append(self._starts[-1] + count)
        if self._starts[-1] != int(index["num_images"]):
            raise UserError(f"{self.folder / INDEX_FILE}: the shards' counts do not add up to num_images")
        for path, count in zip(self._shard_paths, counts):
            self._check_file(path, (count, 3, self.resolution, self.resolution), np.dtype(np.uint8))
        self._check_file(self.folder / LABELS_FILE, (len(self),), np.dtype(np.int64))
        self._shards: list[np.ndarray] | None = None
        self._labels: np.ndarray | None = None

    def _check_file(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        damaged = f"packed image folder {self.folder} is damaged: {path.name}"
        if not path.is_file():
            raise UserError(f"{damaged} is missing; pack the folder again")
        try:
            found_shape, found_dtype, offset = _npy_header(path)
        except (OSError, ValueError) as error:
            raise UserError(
                f"{damaged} is not a readable .npy file ({error}); pack the folder again"
            ) from None
        if found_shape != shape or found_dtype != dtype:
            raise UserError(
                f"{damaged} holds {found_dtype} {found_shape}, the index says {dtype} {shape}; "
                "pack the folder again"
            )
        expected = offset + int(np.prod(shape)) * dtype.itemsize
        if path.stat().st_size != expected:
            raise UserError(
                f"{damaged} has {path.stat().st_size} bytes instead of {expected} (truncated?); "
                "pack the folder again"
            )

    def __len__(self) -> int:
        return self._starts[-1]

    def _open(self) -> None:
        self._shards = [np.load(path, mmap_mode="r") for path in self._shard_paths]
        self._labels = np.load(self.folder / LABELS_FILE, mmap_mode="r")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} packed images")
        if self._shards is None:
            self._open()
        assert self._shards is not None and self._labels is not None
        shard = bisect.bisect_right(self._starts, index) - 1
        # A copy: the batch must not keep the map alive, nor be written through it.
        pixels = np.array(self._shards[shard][index - self._starts[shard]])
        return torch.from_numpy(pixels), int(self._labels[index])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = state["_labels"] = None  # a pickled memmap would be a full copy
        return state

    def uint8_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every image in order, ``batch_size`` at a time, read sequentially (real-data statistics).

        The maps are local to this call, so the dataset object stays unopened.
        """
        for path in self._shard_paths:
            shard = np.load(path, mmap_mode="r")
            for start in range(0, shard.shape[0], batch_size):
                yield torch.from_numpy(np.array(shard[start : start + batch_size]))


# --------------------------------------------------------------------------- writing


@dataclass
class PackResult:
    """What :func:`pack_image_folder` did."""

    out: Path
    num_images: int
    num_classes: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    up_to_date: bool = False  # the folder already held this source at this resolution: nothing written
    seconds: float = 0.0


def _existing_output(out: Path, fingerprint: str, resolution: int, overwrite: bool) -> dict | None:
    """The index of an ``out`` packed from the same listing at the same resolution, else ``None``.

    Refuses (one-line error) anything it must not replace: a file, a non-empty folder that is
    not a packed folder, and — without ``overwrite`` — a packed folder of another source or
    resolution.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return None
    try:
        index = read_index(out)
    except UserError:
        raise UserError(
            f"--out {out} is a non-empty folder that fqgan-prepare did not write; refusing to replace "
            "it (choose a new or empty folder)"
        ) from None
    same = index.get("source", {}).get("fingerprint") == fingerprint and index.get("resolution") == resolution
    if same:
        return index
    if not overwrite:
        raise UserError(
            f"--out {out} already holds images packed from another source listing or at another "
            f"resolution ({index.get('resolution')} px); pass --overwrite to replace it"
        )
    return None


def pack_image_folder(
    source: str | os.PathLike,
    out: str | os.PathLike,
    resolution: int,
    *,
    workers: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> PackResult:
    """Decode every image of ``source`` once into a packed folder at ``out`` (module docstring).

    ``workers`` decoder processes (0: decode here). Unreadable files are skipped, logged and
    listed with their reasons in ``index.json``. ``out`` may be new or an empty folder; a packed
    folder of the same source listing and resolution is left as it is (``up_to_date``); another
    packed folder is replaced only with ``overwrite``; anything else is refused.
    """
    started = time.monotonic()
    if resolution < 1:
        raise UserError(f"--resolution must be a positive number of pixels, got {resolution}")
    out = Path(out).expanduser()
    listing = list_image_folder(source)
    fingerprint = listing.fingerprint()
    existing = _existing_output(out, fingerprint, resolution, overwrite)
    if existing is not None:
        return PackResult(
            out,
            int(existing["num_images"]),
            len(existing["class_names"]),
            list(existing["skipped"]),
            up_to_date=True,
            seconds=time.monotonic() - started,
        )
    leftovers = sorted(out.parent.glob(f"{TMP_PREFIX}{out.name}-*")) if out.parent.is_dir() else []
    if leftovers:
        log.warning(
            "temporary folder(s) of an interrupted fqgan-prepare beside %s (delete them if no packing "
            "is running): %s",
            out,
            ", ".join(p.name for p in leftovers),
        )

    total = len(listing.files)
    image_bytes = 3 * resolution * resolution
    buffer = np.empty((min(total, max(1, shard_bytes // image_bytes)), 3, resolution, resolution), np.uint8)
    labels = np.empty(total, dtype=np.int64)
    shards: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    kept = filled = 0
    report_every = max(1, total // 20)
    with atomic_directory(out) as tmp:

        def write_shard() -> None:
            name = f"images-{len(shards):05d}.npy"
            np.save(tmp / name, buffer[:filled])
            shards.append({"file": name, "num_images": filled})

        with (tmp / FILES_FILE).open("w") as sources:
            decoded = decode_in_order(listing.files, resolution, workers)
            for done, (path, label, (pixels, reason)) in enumerate(
                zip(listing.files, listing.labels, decoded), start=1
            ):
                if pixels is None:
                    skipped.append({"file": listing.relative(path), "reason": reason})
                    log.warning("skipping unreadable image %s (%s)", path, reason)
                else:
                    buffer[filled] = pixels.transpose(2, 0, 1)
                    labels[kept] = label
                    sources.write(listing.relative(path) + "\n")
                    filled, kept = filled + 1, kept + 1
                    if filled == buffer.shape[0]:
                        write_shard()
                        filled = 0
                if done % report_every == 0:
                    log.info("decoded %d / %d files (%d skipped)", done, total, len(skipped))
        if filled:
            write_shard()
        if kept == 0:
            raise UserError(f"none of the {total} image file(s) in {listing.root} could be read")
        np.save(tmp / LABELS_FILE, labels[:kept])
        index = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "resolution": resolution,
            "dtype": "uint8",
            "layout": "NCHW",
            "transform": TRANSFORM,
            "num_images": kept,
            "num_classes": len(listing.class_names),
            "class_names": listing.class_names,
            "class_counts": np.bincount(labels[:kept], minlength=len(listing.class_names)).tolist(),
            "shards": shards,
            "labels": LABELS_FILE,
            "files": FILES_FILE,
            "num_skipped": len(skipped),
            "skipped": skipped,
            "source": {"folder": str(listing.root.resolve()), "num_files": total, "fingerprint": fingerprint},
            "created_by": f"fqgan {fqgan.__version__}",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    if skipped:
        log.warning("skipped %d unreadable image(s) in %s", len(skipped), listing.root)
    return PackResult(
        out, kept, len(listing.class_names), skipped, up_to_date=False, seconds=time.monotonic() - started
    )
