"""``fqgan-prepare``: pack an image folder once, for ``fqgan-train --data packed:DIR`` and ``fqgan-eval``.

    fqgan-prepare folder:imagenet64/train --resolution 64 --out imagenet64/train-64
    fqgan-train --preset imagenet64 --data packed:imagenet64/train-64

Every image is decoded once (in ``--workers`` processes), centre-cropped and resized
exactly as ``--data folder:DIR`` does, and written into memory-mapped ``uint8`` shards with
an ``index.json`` (counts, classes, skipped files and why, a fingerprint of the source
listing); see :mod:`fqgan.packed`. Training then maps the shards read-only in its loader
workers: no per-process copy, no decoding before the first step.

The output folder appears only when complete. An existing ``--out`` packed from the same
files at the same resolution is left as it is (running the command again is a no-op);
one packed from something else is replaced only with ``--overwrite``; any other non-empty
folder is refused.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass

from dgm_core import cli
from dgm_core.cli import option
from dgm_core.errors import UserError
from fqgan.folders import available_cores
from fqgan.packed import DEFAULT_SHARD_BYTES, PackResult, pack_image_folder

SOURCE_PREFIX = "folder:"


@dataclass
class PrepareConfig:
    """Options of ``fqgan-prepare``."""

    source: str = option(
        "",
        help="The image folder to pack, as folder:DIR (also accepted as the first argument); class "
        "sub-folders as for fqgan-train --data folder:DIR.",
        metavar="folder:DIR",
    )
    out: str = option("", help="The packed folder to write (new, empty, or packed before).", metavar="PACKED")
    resolution: int = option(0, help="Image size in pixels (required: that of the model you will train).")
    workers: int = option(-1, help="Decoder processes (-1: one per core; 0: decode in this process).")
    shard_mib: int = option(
        DEFAULT_SHARD_BYTES // 2**20, help="Approximate size of each images-NNNNN.npy shard, in MiB."
    )
    overwrite: bool = option(False, help="Replace an --out packed from another source or resolution.")


def prepare(cfg: PrepareConfig) -> PackResult:
    """Pack ``cfg.source`` into ``cfg.out``; prints one summary line and returns what was done."""
    if not cfg.source:
        raise UserError("name the image folder to pack: fqgan-prepare folder:DIR --resolution R --out PACKED")
    if not cfg.out:
        raise UserError("--out PACKED is required: the folder to write the packed images to")
    if cfg.resolution < 1:
        raise UserError(f"--resolution R is required (a positive number of pixels), got {cfg.resolution}")
    if cfg.shard_mib < 1:
        raise UserError(f"--shard-mib must be at least 1, got {cfg.shard_mib}")
    if cfg.source.startswith(SOURCE_PREFIX):
        source = cfg.source[len(SOURCE_PREFIX) :]
    elif re.match(r"[a-z0-9]+:", cfg.source):  # another --data kind, e.g. packed:DIR
        raise UserError(f"fqgan-prepare packs image folders: expected folder:DIR, got {cfg.source!r}")
    else:
        source = cfg.source  # a plain path means the same as folder:path
    workers = available_cores() if cfg.workers < 0 else cfg.workers
    if not logging.getLogger().handlers:  # skipped files and progress go to stderr
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = pack_image_folder(
        source,
        cfg.out,
        cfg.resolution,
        workers=workers,
        shard_bytes=cfg.shard_mib * 2**20,
        overwrite=cfg.overwrite,
    )
    if result.up_to_date:
        print(
            f"{result.out} is up to date: {result.num_images} images packed from the same files at "
            f"{cfg.resolution}×{cfg.resolution}; nothing written"
        )
    else:
        print(
            f"packed {result.num_images} images ({result.num_classes} classes, {len(result.skipped)} "
            f"unreadable file(s) skipped) at {cfg.resolution}×{cfg.resolution} into {result.out} in "
            f"{result.seconds:.1f} s; train with --data packed:{result.out}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # `fqgan-prepare folder:DIR ...`: the source comes first
        argv = ["--source", argv[0], *argv[1:]]
    return cli.run(prepare, PrepareConfig, argv, prog="fqgan-prepare", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
