"""Partitioned (IVF) cross-shard index of the semantic pass: a query reads only the lists nearest it.

`query_pairs` streams every earlier representative past the shard's keys, so a shard's cross-shard
cost grows linearly with the corpus. This index bounds the rows a query examines instead:

* **Quantizer.** A two-level spherical k-means tree (`train_quantizer`, deterministic: fixed seed,
  rows in a fixed order): ``sqrt(n_lists)`` top centroids, each with children in proportion to its
  rows; the children are the lists. A row belongs to its nearest list (`Quantizer.nearest`: the
  children of its ``top_probe`` nearest top centroids are compared exactly).
* **Lists of bounded size: generations.** A quantizer is trained on the rows of shards 1..b, with
  ``n_lists = rows / list_rows``, and then frozen. Its generation serves the shards after b until
  the corpus has grown by ``growth`` (`generation_ends`: b = 1, 2, 3, 5, 8, 12, ... for 1.5): shard
  p queries the generation of the largest end b < p. So the lists a query reads hold between
  ``list_rows`` and ``growth * list_rows`` rows on average whatever the corpus size, and the number
  of lists grows with the corpus. Each generation's rows are stored once per generation (a row
  is copied ``growth / (growth - 1)`` times in all: 3 for 1.5), written when the generation is
  first needed (`build_generation`; rows never move within a written part).
* **Parts.** An index part (`IvfPart`: the generation's block of shards 1..b, or one later shard)
  keeps its rows sorted by list (``leaf_start``: the first row of every list), with the packed band
  keys (for the Hamming pre-filter), the `encode`d vector and any payload columns (e.g. cluster id,
  representative shard, thumbnail); plain .npy files, memory-mapped when read (`save_part` /
  `load_part`). Parts are merged by streaming list ranges (`merge_parts`: memory bounded).
* **Query.** Each query row probes its ``nprobe`` nearest lists (`Quantizer.probe`: the children of
  its ``top_probe`` nearest top centroids); every row of those lists in every part is a candidate,
  which passes the Hamming pre-filter of `hamming_limits` (a true pair is dropped with probability
  <= 1e-9) and is verified by exact cosine against the decoded index vector (`query_ivf`).
  Recall against brute force is measured (bench/semantic.py, ``scale.ivf_index``), not guaranteed:
  a near copy can fall in a list its query does not probe.

Cost per query row: ``sqrt(n_lists) * (1 + top_probe)`` centroid products plus ``nprobe`` lists of
``list_rows`` to ``growth * list_rows`` rows, i.e. ~sqrt(corpus) in the (cheap, dense) centroid
products and constant in the candidates. Measured (bench/semantic.py --ivf --full, synthetic
clustered 1280-d rows, ``scale.ivf_index``): candidates per query row stay flat from 100k to 5M
earlier rows (times the lists' fill), but the time does not: the centroid search grows, and so do
the pre-filter's survivors (finer lists hold closer rows), each verified by a random read of its
vector. Results depend only on the quantizer and the parts' rows, not on how rows are grouped into
parts (the row order within a list only orders equal results).

Why recall falls at a fixed nprobe as the corpus grows (bench/semantic.py --ivf-probe-recall,
``scale.ivf_index.probe_recall``: the quantizer alone, the fraction of planted copies whose list
is probed): with list_rows fixed, finer lists cut the synthetic rows' structureless within-topic
noise (1280 i.i.d. dimensions below 200 topics) into more cells, so a copy at cosine 0.968 lands
outside its query's nprobe nearest lists more often: nprobe 16 gives 1.0 at 3.9k lists (1M rows),
0.97 at 7.8k (2M), 0.69 at 18.5k (4.7M); nprobe 32 gives 0.985 there. It is not the top level
(top_probe 8 or 16: unchanged), not the sample size (148k rows instead of 131k: 0.72), and
spilling a row into its second list would add little (0.76 at nprobe 16); leaf_iters 3 helps at
nprobe 16 (0.83), not at 32. The exact triangle-inequality bound (read every list whose radius
plus acos(threshold) reaches the query) admits 2.6-4% of the lists at 1M-4.7M rows (41% at
100k; radii measured on the training sample, so a lower bound): 65k-125k rows per query, exact,
but linear in the corpus. So on this generator a bounded query needs nprobe to grow with the
lists (32 at 5M: cost 4.8x that of 100k, recall 0.9965); the 2x target is not met.
The generator is likely pessimistic here: its spectrum is much flatter than real embeddings'
(bench --ivf-spectrum, ``scale.ivf_index.spectrum``: the top 10 / 50 principal components hold
9% / 34% of the variance of synthetic rows, 44% / 68% of EfficientNet-Lite0 embeddings of 1,161
openclipart images), and real near copies' offsets are not measured; the IVF figures above were
not re-measured on a more realistic generator.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np

from curation.semantic.buckets import _pages, sorted_hits, verify_exact
from curation.semantic.config import SemanticDedupConfig
from curation.semantic.vectors import decode, query_vectors

__all__ = ["IvfConfig", "IvfPart", "IvfStats", "Quantizer", "ShardRows", "assign_part", "build_generation", "build_part",
           "generation_end", "generation_ends", "kmeans", "load_part", "load_quantizer", "merge_parts", "n_lists_for",
           "query_ivf", "save_part", "save_quantizer", "train_quantizer"]

_PART_ARRAYS = ("leaf_start", "band", "vec")


@dataclass(frozen=True)
class IvfConfig:
    """Settings of the partitioned index (invalid values raise ValueError; they are part of the
    index format except nprobe / top_probe, which only the query uses).

    list_rows: target rows per list when a generation's quantizer is trained (256).
    nprobe: lists probed per query row (16: recall >= 0.99 on the synthetic bench; 12: 0.984 at
    100k rows). top_probe: top centroids whose children are compared per query row (4);
    assign_probe: the same when rows are filed into lists (1: a row goes to a list of its nearest
    top centroid, where the biases balance the lists). growth: the corpus
    growth that starts a new generation (1.5: lists hold list_rows to 1.5 * list_rows rows on
    average). leaf_iters: Lloyd steps of the lists' centroids (0: seeded sample rows).
    balance_iters: steps of the per-list biases that even out the lists' sizes (`_balance`).
    sample_rows: rows the k-means is trained on (at least; 8 per list when more are needed, up to
    max_sample_rows). iters: Lloyd steps of the top centroids.
    Chosen on the synthetic bench (bench/semantic.py ``scale.ivf_index``)."""

    list_rows: int = 256
    nprobe: int = 16
    top_probe: int = 4
    growth: float = 1.5
    sample_rows: int = 65536
    max_sample_rows: int = 131072
    iters: int = 8
    leaf_iters: int = 0
    balance_iters: int = 24
    assign_probe: int = 1
    seed: int = 20240611

    def __post_init__(self) -> None:
        for name in ("list_rows", "nprobe", "top_probe", "sample_rows", "max_sample_rows", "iters", "assign_probe"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ivf {name} must be >= 1, got {getattr(self, name)}")
        if self.leaf_iters < 0 or self.balance_iters < 0:
            raise ValueError(f"ivf leaf_iters and balance_iters must be >= 0, got {self.leaf_iters}, {self.balance_iters}")
        if not 1.05 <= self.growth <= 16:
            raise ValueError(f"ivf growth must be in [1.05, 16], got {self.growth}")

    def format_settings(self) -> dict:
        """The settings that fix the index's layout (a corpus must keep them across shards)."""
        d = asdict(self)
        d.pop("nprobe")
        d.pop("top_probe")
        return d


def generation_ends(growth: float, upto: int) -> list[int]:
    """Shard positions b (1-based) whose index a new generation starts from: 1, then
    max(b + 1, ceil(b * growth)), up to and including the first >= upto."""
    out = [1]
    while out[-1] < upto:
        out.append(max(out[-1] + 1, math.ceil(out[-1] * growth - 1e-9)))
    return out


def generation_end(position: int, growth: float) -> int:
    """The generation shard `position` (1-based) queries: the largest end b < position (0: none)."""
    if position <= 1:
        return 0
    return max(b for b in generation_ends(growth, position - 1) if b < position)


# --------------------------------------------------------------------------------------------------
# Quantizer
# --------------------------------------------------------------------------------------------------


def _unit(c: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.where(n > 0, n, 1.0)).astype(np.float32)


def _argmax_rows(x: np.ndarray, c: np.ndarray, block: int = 8192) -> np.ndarray:
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), block):
        out[s:s + block] = np.argmax(np.asarray(x[s:s + block], np.float32) @ c.T, axis=1)
    return out


def kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """(min(k, n), dim) unit centroids of spherical k-means on unit rows `x` (float32): initial
    centroids a seeded sample of rows, `iters` Lloyd steps (an empty cluster keeps its centroid).
    Deterministic."""
    n = len(x)
    k = max(1, min(k, n))
    c = x[np.sort(np.random.default_rng(seed).choice(n, k, replace=False))].astype(np.float32)
    if k == 1 and iters:
        return _unit(x.sum(axis=0, keepdims=True, dtype=np.float64).astype(np.float32))
    for _ in range(iters):
        a = _argmax_rows(x, c)
        nz = np.bincount(a, minlength=k) > 0
        sums = np.zeros_like(c)
        for s in range(0, n, 8192):  # cluster sums as one-hot matrix products (bounded memory)
            ab = a[s:s + 8192]
            onehot = np.zeros((k, len(ab)), np.float32)
            onehot[ab, np.arange(len(ab))] = 1.0
            sums += onehot @ np.asarray(x[s:s + 8192], np.float32)
        c = np.where(nz[:, None], _unit(sums), c)
    return c


def _top_k(sc: np.ndarray, k: int) -> np.ndarray:
    """(n, k) column indices of each row's k highest scores, highest first, ties by index."""
    if k >= sc.shape[1]:
        return np.lexsort((np.broadcast_to(np.arange(sc.shape[1]), sc.shape), -sc), axis=1)[:, :k]
    if k == 1:
        return np.argmax(sc, axis=1)[:, None]  # the first maximum: ties by index
    part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
    o = np.lexsort((part, -np.take_along_axis(sc, part, axis=1)), axis=1)
    return np.take_along_axis(part, o, axis=1)


@dataclass(frozen=True)
class Quantizer:
    """Two-level quantizer: `top` (m1, dim) unit centroids; `leaves` (m, dim) unit list centroids,
    grouped by top centroid (top c's children are leaves[start[c]:start[c + 1]])."""

    top: np.ndarray
    leaves: np.ndarray
    start: np.ndarray
    bias: np.ndarray | None = None  # (m,) subtracted from a list's cosine (balances the lists' sizes)

    @property
    def n_lists(self) -> int:
        return len(self.leaves)

    def probe(self, x: np.ndarray, k: int, top_probe: int) -> np.ndarray:
        """(n, k) the k nearest lists (highest cosine) of each unit row of `x` among the children of
        its `top_probe` nearest top centroids; -1 where fewer exist. Deterministic."""
        x = np.asarray(x, np.float32)
        n, m1 = len(x), len(self.top)
        t = min(top_probe, m1)
        out = np.full((n, k), -1, np.int64)
        if n == 0:
            return out
        for s in range(0, n, 16384):
            xb = x[s:s + 16384]
            tops = _top_k(xb @ self.top.T, t)
            best_s = np.full((len(xb), t, k), -np.inf, np.float32)
            best_l = np.full((len(xb), t, k), -1, np.int64)
            flat = tops.ravel()
            order = np.argsort(flat, kind="stable")
            bounds = np.searchsorted(flat[order], np.arange(m1 + 1))
            for c in range(m1):
                sel = order[bounds[c]:bounds[c + 1]]
                lo, hi = int(self.start[c]), int(self.start[c + 1])
                if len(sel) == 0 or hi == lo:
                    continue
                qi, slot = sel // t, sel % t
                sc = xb[qi] @ self.leaves[lo:hi].T
                if self.bias is not None:
                    sc -= self.bias[lo:hi]
                kk = min(k, hi - lo)
                idx = _top_k(sc, kk)
                best_s[qi, slot, :kk] = np.take_along_axis(sc, idx, axis=1)
                best_l[qi, slot, :kk] = idx + lo
            bs, bl = best_s.reshape(len(xb), -1), best_l.reshape(len(xb), -1)
            o = np.lexsort((bl, -bs), axis=1)[:, :k]  # highest cosine first, ties by list id
            sel_s = np.take_along_axis(bs, o, axis=1)
            out[s:s + len(xb), :o.shape[1]] = np.where(np.isfinite(sel_s), np.take_along_axis(bl, o, axis=1), -1)
        return out

    def nearest(self, x: np.ndarray, top_probe: int) -> np.ndarray:
        """(n,) each row's list: its nearest list among the children of its top_probe nearest tops."""
        return self.probe(x, 1, top_probe)[:, 0]


def train_quantizer(x: np.ndarray, n_lists: int, icfg: IvfConfig) -> Quantizer:
    """Two-level spherical k-means on unit rows `x` (the training sample, float32): ceil(sqrt(n_lists))
    top centroids, then each top cell's rows split into lists in proportion to its share of rows
    (at least one list per non-empty cell). Deterministic (icfg.seed)."""
    x = np.asarray(x, np.float32)
    n_lists = max(1, min(n_lists, len(x)))
    top = kmeans(x, math.ceil(math.sqrt(n_lists)), icfg.iters, icfg.seed)
    a = _argmax_rows(x, top)
    counts = np.bincount(a, minlength=len(top))
    leaves, start, keep, bias = [], [0], [], []
    for c in range(len(top)):
        if counts[c] == 0:
            continue
        rows = x[a == c]
        m = max(1, round(n_lists * counts[c] / len(x)))
        leaves.append(kmeans(rows, m, icfg.leaf_iters, icfg.seed + 1 + c))
        bias.append(_balance(rows @ leaves[-1].T, icfg.balance_iters))
        start.append(start[-1] + len(leaves[-1]))
        keep.append(c)
    return Quantizer(top=top[keep], leaves=np.concatenate(leaves), start=np.asarray(start, np.int64),
                     bias=np.concatenate(bias).astype(np.float32))


def _balance(sc: np.ndarray, iters: int) -> np.ndarray:
    """(m,) per-list biases b such that argmax(sc - b) fills the m lists about evenly on the sample
    rows `sc` (n, m) of cosines: b grows for lists above the mean size, shrinks below, by a step of
    the typical gap between a row's two best lists (high-dimensional k-means and sampled centroids
    make "hub" lists that attract many times their share; without the bias a query's lists are
    mostly hubs). Deterministic."""
    n, m = sc.shape
    b = np.zeros(m, np.float32)
    if m < 2 or iters == 0:
        return b
    two = -np.partition(-sc, 1, axis=1)[:, :2]
    step = float(np.median(two[:, 0] - two[:, 1]))
    mean = n / m
    for it in range(iters):
        cnt = np.bincount(np.argmax(sc - b, axis=1), minlength=m)
        b += (step / (1 + it / 4)) * np.clip(cnt / mean - 1.0, -1.0, 2.0).astype(np.float32)
    return b


def save_quantizer(q: Quantizer, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, top=q.top, leaves=q.leaves, start=q.start,
             bias=q.bias if q.bias is not None else np.zeros(len(q.leaves), np.float32))
    os.replace(tmp, path)


def load_quantizer(path: str) -> Quantizer:
    with np.load(path) as z:
        return Quantizer(top=z["top"], leaves=z["leaves"], start=z["start"], bias=z["bias"] if "bias" in z else None)


# --------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------


@dataclass
class IvfPart:
    """Rows of one part sorted by list: leaf_start (n_lists + 1,) int64, band (n, words) uint64
    (packed band keys), vec (n, width) the encoded vectors, payload {name: (n, ...) array}."""

    leaf_start: np.ndarray
    band: np.ndarray
    vec: np.ndarray
    payload: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.leaf_start[-1])


def build_part(lists: np.ndarray, n_lists: int, band: np.ndarray, vec: np.ndarray,
               payload: dict[str, np.ndarray] | None = None) -> IvfPart:
    """A part from rows with their list ids (`Quantizer.nearest`): rows sorted by list (stable)."""
    lists = np.asarray(lists, np.int64)
    order = np.argsort(lists, kind="stable")
    counts = np.bincount(lists, minlength=n_lists) if len(lists) else np.zeros(n_lists, np.int64)
    leaf_start = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return IvfPart(leaf_start, np.ascontiguousarray(band[order]), np.ascontiguousarray(vec[order]),
                   {k: np.ascontiguousarray(v[order]) for k, v in (payload or {}).items()})


def save_part(part: IvfPart, folder: str) -> None:
    """Write the part's arrays as .npy files into `folder` (replaced atomically: written beside it
    under a temporary name, then renamed)."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".part-", dir=parent)
    for name in _PART_ARRAYS:
        np.save(os.path.join(tmp, f"{name}.npy"), getattr(part, name))
    for name, arr in part.payload.items():
        np.save(os.path.join(tmp, f"p_{name}.npy"), arr)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_part(folder: str, mmap: bool = True) -> IvfPart:
    """A part saved by `save_part` (arrays memory-mapped unless mmap=False). FileNotFoundError when
    the folder or an array is missing."""
    def read(path: str) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r" if mmap else None)
        except ValueError:  # an empty array cannot be memory-mapped
            return np.load(path)

    arrays = {n: read(os.path.join(folder, f"{n}.npy")) for n in _PART_ARRAYS}
    payload = {f[2:-4]: read(os.path.join(folder, f))
               for f in sorted(os.listdir(folder)) if f.startswith("p_") and f.endswith(".npy")}
    return IvfPart(np.asarray(arrays["leaf_start"]), arrays["band"], arrays["vec"], payload)


def _rows_of(arr: np.ndarray, a: int, b: int) -> np.ndarray:
    """Rows a..b of an array; of a memory-mapped .npy file by a plain read (its pages are not mapped
    into the process, so merging a large part does not grow the resident set)."""
    if isinstance(arr, np.memmap) and arr.filename and arr.flags.c_contiguous:
        row = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
        with open(arr.filename, "rb") as f:
            f.seek(arr.offset + a * row)
            return np.frombuffer(f.read((b - a) * row), arr.dtype).reshape((b - a,) + arr.shape[1:])
    return np.asarray(arr[a:b])


def merge_parts(parts: list[IvfPart], folder: str, chunk_rows: int = 1 << 17) -> None:
    """Write the rows of `parts` (same quantizer) as one part in `folder`, streaming ranges of lists
    (memory bounded by ~chunk_rows rows; the files are written sequentially): within a list, rows
    of earlier parts first."""
    parts = [p for p in parts if p is not None]
    ls = np.sum([p.leaf_start for p in parts], axis=0).astype(np.int64)
    n, m = int(ls[-1]), len(ls) - 1
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".part-", dir=parent)

    def column(p: IvfPart, name: str) -> np.ndarray:
        return p.band if name == "band" else p.vec if name == "vec" else p.payload[name[2:]]

    names = ["band", "vec"] + [f"p_{k}" for k in parts[0].payload]
    np.save(os.path.join(tmp, "leaf_start.npy"), ls)
    files = {}
    for name in names:
        ref = column(parts[0], name)
        dtype = np.result_type(*[column(p, name).dtype for p in parts])
        f = open(os.path.join(tmp, f"{name}.npy"), "wb")  # noqa: SIM115 - closed below
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                                 "shape": (n,) + tuple(ref.shape[1:])})
        files[name] = (f, dtype)
    try:
        l0 = 0
        while l0 < m:
            l1 = min(m, max(int(np.searchsorted(ls, ls[l0] + chunk_rows, side="right")) - 1, l0 + 1))
            lists: list[np.ndarray] = []
            pieces: dict[str, list[np.ndarray]] = {name: [] for name in names}
            for p in parts:
                a, b = int(p.leaf_start[l0]), int(p.leaf_start[l1])
                lists.append(np.repeat(np.arange(l0, l1), np.diff(np.asarray(p.leaf_start[l0:l1 + 1]))))
                for name in names:
                    pieces[name].append(_rows_of(column(p, name), a, b))
            order = np.argsort(np.concatenate(lists), kind="stable")
            for name, (f, dtype) in files.items():
                f.write(np.ascontiguousarray(np.concatenate(pieces[name]).astype(dtype, copy=False)[order]).tobytes())
            l0 = l1
    finally:
        for f, _dtype in files.values():
            f.close()
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def n_lists_for(rows: int, icfg: IvfConfig) -> int:
    """Lists of a generation trained on `rows` rows: rows / list_rows (at least 1)."""
    return max(1, round(rows / icfg.list_rows))


ShardRows = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]  # packed band keys, encoded vectors, payload


def assign_part(rows: ShardRows, quant: Quantizer, cfg: SemanticDedupConfig, icfg: IvfConfig,
                block: int = 65536) -> IvfPart:
    """One shard's rows (band, vec, payload) as a part of `quant`'s lists (`Quantizer.nearest` of the
    decoded vectors, comparing the children of the assign_probe nearest top centroids)."""
    band, vec, payload = rows
    lists = np.concatenate([quant.nearest(decode(np.asarray(vec[s:s + block]), cfg), icfg.assign_probe)
                            for s in range(0, len(vec), block)]) if len(vec) else np.empty(0, np.int64)
    return build_part(lists, quant.n_lists, band, vec, payload)


def build_generation(shards, folder: str, cfg: SemanticDedupConfig, icfg: IvfConfig,
                     quant: Quantizer | None = None) -> tuple[Quantizer, IvfPart]:
    """Train a generation's quantizer on the rows of `shards()` (called twice: an iterable of
    `ShardRows`, one per shard in order) and write their part, sorted by list, to `folder`/block
    (quantizer: `folder`/quantizer.npz). The training sample is uniform and deterministic: the rows
    with the smallest seeded random keys (seed, shard number), at most icfg.max_sample_rows (memory
    bounded by that sample plus one shard's rows; the part is merged by streaming). `quant`: reuse
    this quantizer instead of training one (e.g. rebuilding the block after a shard changed)."""
    if quant is None:
        keys_kept, vec_kept, total = np.empty(0), None, 0
        for j, (_band, vec, _payload) in enumerate(shards()):
            total += len(vec)
            if len(vec) == 0:
                continue
            r = np.random.default_rng([icfg.seed, j]).random(len(vec))
            kk = np.concatenate([keys_kept, r])
            vv = np.asarray(vec) if vec_kept is None else np.concatenate([vec_kept, np.asarray(vec)])
            if len(kk) > icfg.max_sample_rows:
                sel = np.sort(np.argpartition(kk, icfg.max_sample_rows - 1)[:icfg.max_sample_rows])
                kk, vv = kk[sel], vv[sel]
            keys_kept, vec_kept = kk, vv
        if vec_kept is None:
            raise ValueError("a generation needs at least one row")
        n_lists = n_lists_for(total, icfg)
        ns = min(len(keys_kept), max(icfg.sample_rows, 8 * n_lists))
        sel = np.sort(np.argsort(keys_kept, kind="stable")[:ns])
        quant = train_quantizer(decode(vec_kept[sel], cfg), n_lists, icfg)
        del vec_kept
    os.makedirs(folder, exist_ok=True)
    save_quantizer(quant, os.path.join(folder, "quantizer.npz"))
    work = tempfile.mkdtemp(prefix=".build-", dir=folder)
    try:
        parts = []
        for j, rows in enumerate(shards()):
            save_part(assign_part(rows, quant, cfg, icfg), os.path.join(work, f"{j:06d}"))
            parts.append(load_part(os.path.join(work, f"{j:06d}")))
        merge_parts(parts, os.path.join(folder, "block"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return quant, load_part(os.path.join(folder, "block"))


# --------------------------------------------------------------------------------------------------
# Query
# --------------------------------------------------------------------------------------------------


@dataclass
class IvfStats:
    """What `query_ivf` examined: candidates (query row, part row) pairs in the probed lists, verified
    (passed the Hamming pre-filter), bytes_read (4 KiB pages of the parts' arrays touched), lists
    (of the quantizer), earlier_rows, parts, probe_s (centroid search seconds)."""

    earlier_rows: int = 0
    parts: int = 0
    lists: int = 0
    candidates: int = 0
    verified: int = 0
    bytes_read: int = 0
    probe_s: float = 0.0


def _hamming_keep(qband: np.ndarray, band: np.ndarray, qq: np.ndarray, rr: np.ndarray,
                  max_hamming: np.ndarray) -> np.ndarray:
    keep = np.empty(len(qq), bool)
    for b in range(0, len(qq), 1 << 16):
        q, r = qq[b:b + (1 << 16)], rr[b:b + (1 << 16)]
        keep[b:b + (1 << 16)] = np.bitwise_count(qband[q] ^ band[r]).sum(axis=1, dtype=np.int64) <= max_hamming[q]
    return keep


def _by_query(part: IvfPart, probes: np.ndarray, qband: np.ndarray, max_hamming: np.ndarray | None,
              stats: IvfStats, query_chunk: int):
    """(q, r) candidate pairs of a part (all rows of the probed lists), chunk of query rows by
    chunk, with the Hamming pre-filter applied pair by pair (small parts: few rows per list)."""
    ls = np.asarray(part.leaf_start)
    k = probes.shape[1]
    for s in range(0, len(probes), query_chunk):
        pr = probes[s:s + query_chunk].ravel()
        qi = np.repeat(np.arange(s, s + len(pr) // k, dtype=np.int64), k)
        ok = pr >= 0
        pr, qi = pr[ok], qi[ok]
        lo = ls[pr]
        cnt = ls[pr + 1] - lo
        total = int(cnt.sum())
        if total == 0:
            continue
        stats.candidates += total
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        rr = np.repeat(lo, cnt) + (np.arange(total, dtype=np.int64) - first)
        qq = np.repeat(qi, cnt)
        stats.bytes_read += _pages(np.concatenate([pr, pr + 1]), 8)
        if max_hamming is not None:
            stats.bytes_read += _pages(rr, 8, part.band.shape[1] * 8)
            keep = _hamming_keep(qband, part.band, qq, rr, max_hamming)
            qq, rr = qq[keep], rr[keep]
        yield qq, rr


def _by_list(part: IvfPart, probes: np.ndarray, qband: np.ndarray, max_hamming: np.ndarray, stats: IvfStats,
             batch: int = 1 << 16):
    """The same pairs as `_by_query` after the Hamming pre-filter, list by list: each probed list's
    band keys are read once (a contiguous slice) and compared with all its query rows at once."""
    ls = np.asarray(part.leaf_start)
    k = probes.shape[1]
    flat = probes.ravel()
    qof = np.repeat(np.arange(len(probes), dtype=np.int64), k)
    ok = flat >= 0
    flat, qof = flat[ok], qof[ok]
    o = np.argsort(flat, kind="stable")
    lists, qs = flat[o], qof[o]
    starts = np.flatnonzero(np.concatenate(([True], lists[1:] != lists[:-1])))
    ends = np.append(starts[1:], len(lists))
    out_q, out_r, n = [], [], 0
    for a, b in zip(starts.tolist(), ends.tolist()):
        lst = int(lists[a])
        lo, hi = int(ls[lst]), int(ls[lst + 1])
        if hi == lo:
            continue
        rows = np.asarray(part.band[lo:hi])
        stats.candidates += (b - a) * (hi - lo)
        stats.bytes_read += _pages(np.arange(lo, hi), 8, rows.shape[1] * 8)
        step = max(1, (1 << 18) // (hi - lo))  # bounded temporaries for long lists probed by many rows
        for c in range(a, b, step):
            q = qs[c:min(b, c + step)]
            ham = np.bitwise_count(qband[q][:, None, :] ^ rows[None, :, :]).sum(axis=2, dtype=np.int64)
            qi, ri = np.nonzero(ham <= max_hamming[q][:, None])
            if len(qi):
                out_q.append(q[qi])
                out_r.append(ri + lo)
                n += len(qi)
        if n >= batch:
            yield np.concatenate(out_q), np.concatenate(out_r)
            out_q, out_r, n = [], [], 0
    if out_q:
        yield np.concatenate(out_q), np.concatenate(out_r)


def query_ivf(
    parts: list[IvfPart], quant: Quantizer, x: np.ndarray, qband: np.ndarray, cfg: SemanticDedupConfig,
    icfg: IvfConfig, *, max_hamming: np.ndarray | None = None, raw_index: bool = True, query_chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, IvfStats]:
    """Pairs (query row q, part p, row r of part p) with cosine >= cfg.threshold among the rows of the
    nprobe lists nearest each unit row of `x`, sorted by (q, p, r), with their cosines and `IvfStats`.
    qband: the rows' packed band keys (`pack_bits` of `band_keys`); max_hamming: the per-row limit
    (`hamming_limits`) on the Hamming distance to a candidate's band keys (None: no pre-filter).
    raw_index: the parts hold `encode`d vectors (decoded for verified rows only). Deterministic."""
    import time

    stats = IvfStats(earlier_rows=int(sum(len(p) for p in parts)), parts=len(parts), lists=quant.n_lists)
    e = np.empty(0, np.int64)
    if len(x) == 0 or stats.earlier_rows == 0:
        return e, e, e, np.empty(0, np.float32), stats
    qvec = query_vectors(np.asarray(x, np.float32), cfg)  # the quantizer lives in the index vectors' space
    t0 = time.perf_counter()
    probes = quant.probe(qvec, icfg.nprobe, icfg.top_probe)
    stats.probe_s = time.perf_counter() - t0
    dec = (lambda v: decode(v, cfg)) if raw_index else None
    hits: list[tuple[np.ndarray, ...]] = []
    for pi, part in enumerate(parts):
        if len(part) == 0:
            continue
        if len(part.leaf_start) != quant.n_lists + 1:
            raise ValueError(f"part {pi} has {len(part.leaf_start) - 1} lists, the quantizer {quant.n_lists}")
        batches = (_by_list(part, probes, qband, max_hamming, stats)
                   if max_hamming is not None and len(part) >= 8 * quant.n_lists
                   else _by_query(part, probes, qband, max_hamming, stats, query_chunk))
        for qq, rr in batches:
            stats.verified += len(qq)
            if len(qq):
                hits.append(verify_exact(qq, rr, pi, qvec, part.vec, cfg, dec, stats))
    return (*sorted_hits(hits), stats)
