"""Per-viewpoint panoramic image features: 36 views × D floats for every (scan, viewpoint).

Three on-disk forms, one interface (:class:`FeatureStore`: ``store[scan, viewpoint] → (36, D) float32``):

* **R2R TSV** — the standard precomputed-feature file of the R2R/EnvDrop family (e.g.
  ``ResNet-152-imagenet.tsv``): tab-separated, no header, fields
  ``scanId, viewpointId, image_w, image_h, vfov, features`` where ``features`` is base64 of
  ``36 × D`` little-endian float32 (D = 2048 for ResNet-152). :class:`TsvFeatureStore` indexes the byte
  offset of every line once and decodes lines lazily.
* **memory-mapped .npy folder** — ``features.npy`` of shape ``(N, 36, D)`` (float16 or float32) beside
  ``index.json`` (``{"keys": ["<scan>_<viewpoint>", …], "num_views": 36, "feature_size": D}``).
  :class:`NpyFeatureStore` maps it read-only; only the rows touched are paged in.
* **safetensors** — one ``.safetensors`` file with tensor ``features`` ``(N, 36, D)`` and the key list
  (JSON) in its metadata under ``"keys"``; rows are sliced lazily.

:func:`convert_tsv` turns a TSV into either store (float16 by default: half the disk, same accuracy
for ResNet features after the agent's first projection). A missing viewpoint raises a
:class:`~dgm_core.errors.UserError` that names the scan, the viewpoint and the store.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from dgm_core.errors import UserError
from prevalent.env.angles import NUM_VIEWS

TSV_FIELDS = ("scanId", "viewpointId", "image_w", "image_h", "vfov", "features")


def feature_key(scan: str, viewpoint: str) -> str:
    """The key a store files a viewpoint under: ``"<scan>_<viewpoint>"`` (as the reference code)."""
    return f"{scan}_{viewpoint}"


class FeatureStore:
    """Read-only mapping ``(scan, viewpoint) → float32 array (36, feature_size)`` with an LRU cache.

    Subclasses implement :meth:`_load_row`; :meth:`open` picks the right one from a path.
    """

    num_views: int = NUM_VIEWS
    feature_size: int

    def __init__(self, keys: Iterable[str], feature_size: int, source: str, cache_size: int = 4096) -> None:
        self._row = {key: i for i, key in enumerate(keys)}
        self.feature_size = int(feature_size)
        self.source = source
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    @staticmethod
    def open(path: str | Path, cache_size: int = 4096) -> FeatureStore:
        """Open a store: a ``.tsv`` file, a ``.safetensors`` file, or a folder with ``features.npy``."""
        path = Path(path)
        if path.is_dir():
            return NpyFeatureStore(path, cache_size=cache_size)
        if not path.is_file():
            raise UserError(f"feature store {path} does not exist")
        if path.suffix == ".safetensors":
            return SafetensorsFeatureStore(path, cache_size=cache_size)
        if path.suffix == ".npy":
            return NpyFeatureStore(path.parent, cache_size=cache_size)
        return TsvFeatureStore(path, cache_size=cache_size)

    def __len__(self) -> int:
        return len(self._row)

    def keys(self) -> list[str]:
        """All ``"<scan>_<viewpoint>"`` keys of the store."""
        return list(self._row)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, tuple):
            item = feature_key(*item)
        return item in self._row

    def __getitem__(self, item: tuple[str, str]) -> np.ndarray:
        scan, viewpoint = item
        key = feature_key(scan, viewpoint)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        row = self._row.get(key)
        if row is None:
            raise UserError(f"no image features for scan {scan} viewpoint {viewpoint} in {self.source}")
        feats = np.asarray(self._load_row(row), dtype=np.float32).reshape(self.num_views, self.feature_size)
        if self._cache_size > 0:
            self._cache[key] = feats
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return feats

    def require(self, needed: Iterable[tuple[str, str]], purpose: str) -> None:
        """Check up front that every ``(scan, viewpoint)`` in ``needed`` has features.

        One :class:`UserError` names what is missing, scan by scan (a scan the store lacks
        entirely, or its missing viewpoints), so a run stops before it starts instead of when an
        agent first stands there.
        """
        wanted: dict[str, set[str]] = {}
        for scan, viewpoint in needed:
            wanted.setdefault(scan, set()).add(viewpoint)
        problems = []
        for scan in sorted(wanted):
            missing = sorted(vp for vp in wanted[scan] if feature_key(scan, vp) not in self._row)
            if len(missing) == len(wanted[scan]):
                problems.append(f"scan {scan} (none of its {len(missing)} viewpoints)")
            elif missing:
                shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                problems.append(f"scan {scan} viewpoint(s) {shown}")
        if problems:
            more = f" (and {len(problems) - 5} more scans)" if len(problems) > 5 else ""
            raise UserError(
                f"feature store {self.source} lacks features needed by {purpose}: "
                + "; ".join(problems[:5])
                + more
            )

    def _load_row(self, row: int) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.source}, viewpoints={len(self)}, feature_size={self.feature_size})"
        )


class InMemoryFeatureStore(FeatureStore):
    """A store over a dict ``{(scan, viewpoint): (36, D) array}`` — for tests and generated data."""

    def __init__(self, features: Mapping[tuple[str, str], np.ndarray]) -> None:
        items = list(features.items())
        if not items:
            raise UserError("an in-memory feature store needs at least one viewpoint")
        size = int(np.asarray(items[0][1]).shape[-1])
        super().__init__([feature_key(s, v) for (s, v), _ in items], size, "<memory>", cache_size=0)
        self._data = [np.asarray(a, dtype=np.float32) for _, a in items]

    def _load_row(self, row: int) -> np.ndarray:
        return self._data[row]


class NpyFeatureStore(FeatureStore):
    """A folder with a memory-mapped ``features.npy`` ``(N, 36, D)`` and ``index.json``."""

    def __init__(self, folder: str | Path, cache_size: int = 4096) -> None:
        folder = Path(folder)
        index_path, array_path = folder / "index.json", folder / "features.npy"
        for p in (index_path, array_path):
            if not p.is_file():
                raise UserError(f"feature store {folder}: missing {p.name}")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{index_path}: malformed JSON ({err})") from None
        self._array = np.load(array_path, mmap_mode="r")
        if self._array.ndim != 3 or self._array.shape[0] != len(index["keys"]):
            raise UserError(
                f"{array_path}: shape {self._array.shape} does not match {len(index['keys'])} keys × 36 × D"
            )
        super().__init__(index["keys"], self._array.shape[2], str(folder), cache_size)
        self.num_views = int(self._array.shape[1])

    def _load_row(self, row: int) -> np.ndarray:
        return self._array[row]


class SafetensorsFeatureStore(FeatureStore):
    """One ``.safetensors`` file: tensor ``features`` ``(N, 36, D)``, metadata ``keys`` (JSON list)."""

    def __init__(self, path: str | Path, cache_size: int = 4096) -> None:
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="numpy")
        metadata = self._file.metadata() or {}
        if "keys" not in metadata or "features" not in set(self._file.keys()):
            raise UserError(f"{path}: not a feature store (needs tensor 'features' and metadata 'keys')")
        self._slice = self._file.get_slice("features")
        shape = self._slice.get_shape()
        super().__init__(json.loads(metadata["keys"]), shape[2], str(path), cache_size)
        self.num_views = int(shape[1])

    def _load_row(self, row: int) -> np.ndarray:
        return self._slice[row : row + 1][0]


class TsvFeatureStore(FeatureStore):
    """The standard R2R feature TSV, indexed by line offset once and decoded lazily per viewpoint."""

    def __init__(self, path: str | Path, cache_size: int = 4096) -> None:
        self.path = Path(path)
        keys, self._offsets = [], []
        feature_size = None
        offset = 0
        with self.path.open("rb") as f:
            for line_no, line in enumerate(f, start=1):
                fields = line.rstrip(b"\r\n").split(b"\t")
                if len(fields) != len(TSV_FIELDS):
                    raise UserError(
                        f"{self.path}:{line_no}: expected {len(TSV_FIELDS)} tab-separated fields "
                        f"({', '.join(TSV_FIELDS)}), found {len(fields)}"
                    )
                if feature_size is None:
                    n_floats = len(base64.b64decode(fields[5])) // 4
                    if n_floats % NUM_VIEWS:
                        raise UserError(f"{self.path}:{line_no}: {n_floats} floats is not 36 views × D")
                    feature_size = n_floats // NUM_VIEWS
                keys.append(feature_key(fields[0].decode(), fields[1].decode()))
                self._offsets.append(offset)
                offset += len(line)
        if feature_size is None:
            raise UserError(f"{self.path}: empty feature file")
        super().__init__(keys, feature_size, str(self.path), cache_size)

    def _load_row(self, row: int) -> np.ndarray:
        with self.path.open("rb") as f:
            f.seek(self._offsets[row])
            fields = f.readline().rstrip(b"\r\n").split(b"\t")
        return np.frombuffer(base64.b64decode(fields[5]), dtype="<f4")


def iter_tsv(path: str | Path) -> Iterator[tuple[str, str, np.ndarray]]:
    """Yield ``(scan, viewpoint, features (36, D) float32)`` from an R2R feature TSV, in file order."""
    store = TsvFeatureStore(path, cache_size=0)
    for key in list(store.keys()):
        scan, viewpoint = key.split("_", 1)
        yield scan, viewpoint, store[scan, viewpoint]


def write_tsv(path: str | Path, items: Iterable[tuple[str, str, np.ndarray]], vfov: int = 60) -> Path:
    """Write ``(scan, viewpoint, (36, D) array)`` items as a standard R2R feature TSV (640×480 images)."""
    path = Path(path)
    with path.open("w") as f:
        for scan, viewpoint, feats in items:
            blob = base64.b64encode(np.ascontiguousarray(feats, dtype="<f4").tobytes()).decode()
            f.write(f"{scan}\t{viewpoint}\t640\t480\t{vfov}\t{blob}\n")
    return path


def write_feature_store(
    out: str | Path, items: Iterable[tuple[str, str, np.ndarray]], dtype: str = "float16"
) -> Path:
    """Write items ``(scan, viewpoint, (36, D))`` as a ``.npy`` folder or, for ``*.safetensors``, a file.

    The array is written to a temporary name and moved into place, so an interrupted write never leaves
    a half store where a good one was.
    """
    out = Path(out)
    keys, rows = [], []
    for scan, viewpoint, feats in items:
        keys.append(feature_key(scan, viewpoint))
        rows.append(np.asarray(feats, dtype=dtype))
    if not rows:
        raise UserError("no features to write")
    array = np.stack(rows)
    if out.suffix == ".safetensors":
        from safetensors.numpy import save_file

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        save_file({"features": array}, str(tmp), metadata={"keys": json.dumps(keys)})
        tmp.replace(out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "features.tmp.npy"
    np.save(tmp, array)
    tmp.replace(out / "features.npy")
    index = {"keys": keys, "num_views": int(array.shape[1]), "feature_size": int(array.shape[2])}
    (out / "index.json").write_text(json.dumps(index))
    return out


def convert_tsv(tsv_path: str | Path, out: str | Path, dtype: str = "float16") -> Path:
    """Convert an R2R feature TSV into a memory-mapped ``.npy`` folder or a ``.safetensors`` file."""
    return write_feature_store(out, iter_tsv(tsv_path), dtype=dtype)
