"""64-bit perceptual hashes, batched: aHash, dHash, pHash, wHash, bit-identical to imagehash.

Bit order = row-major, first bit most significant, i.e. the integer value of imagehash's hex
string. The input of every hash is the 64 x 64 grey hash image of `curation.imaging.metrics`
(`HASH_INPUT_LEN` = 4,096 bytes per image). `hash_batch` computes the four hashes (or those asked for) for N images at
once, exactly like imagehash: LANCZOS to 8x8 (aHash), 9x8 (dHash), 32x32 (pHash) as batched matrix
products reproducing Pillow's fixed-point resampler (`curation.imaging.lanczos`), a batched DCT
via scipy.fftpack over an (N, 32, 32) array, and the Haar steps of wHash (`image_scale=64`, with
imagehash's default removal of the lowest LL band) on (N, 64, 64) with pywt's exact floating-point
operations (`haar_dwt2` / `haar_idwt2`). Results equal `imagehash.average_hash / dhash / phash /
whash(image_scale=64)` applied to the hash image (tests/unit/test_imaging.py checks this).
Downstream (dedup) reads pHash and dHash only (`KEPT_HASHES`); aHash and wHash (`EXTRA_HASHES`,
wHash being ~0.25 ms of the ~0.35 ms the four cost per image) are computed on request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curation.imaging.lanczos import lanczos_resize_batch

WHASH_IMAGE_SCALE = 64
# The per-image hash input is the 64 x 64 hash image, flattened (uint8).
HASH_INPUT_LEN = WHASH_IMAGE_SCALE * WHASH_IMAGE_SCALE
HASH_COLUMNS = ("ahash", "dhash", "phash", "whash")
DETAIL_COLUMN = "phash256"  # Binary: the 256-bit pHash (`phash256_batch`), dedup's verification feature
DETAIL_BYTES = 32

_BIT_WEIGHTS = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, 64) booleans, row-major, first bit most significant -> (N,) uint64."""
    b = np.asarray(bits, dtype=bool).reshape(len(bits), 64)
    return (b.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def ahash_batch(pixels: np.ndarray) -> np.ndarray:
    """aHash of (N, 8, 8) uint8 arrays: pixel > mean (== imagehash.average_hash)."""
    p = np.asarray(pixels)
    mean = p.reshape(len(p), -1).astype(np.float64).mean(axis=1)
    return pack_bits(p > mean[:, None, None])


def dhash_batch(pixels: np.ndarray) -> np.ndarray:
    """dHash of (N, 8, 9) uint8 arrays (rows x cols): right neighbour brighter (== imagehash.dhash)."""
    p = np.asarray(pixels)
    return pack_bits(p[:, :, 1:] > p[:, :, :-1])


def phash_batch(pixels: np.ndarray) -> np.ndarray:
    """pHash of (N, 32, 32) uint8 arrays: batched 2-D DCT-II, 8x8 low band > its median
    (== imagehash.phash)."""
    import scipy.fftpack  # here, not at import: scipy costs ~1 s, and `curation.imaging` is
    # imported when the Dagster definitions load (assets.embeddings uses the open policy)

    p = np.asarray(pixels, dtype=np.float64)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(p, axis=1), axis=2)
    low = dct[:, :8, :8].reshape(len(p), 64)
    med = np.median(low, axis=1)
    return pack_bits(low > med[:, None])


def phash256_batch(pixels: np.ndarray) -> np.ndarray:
    """256-bit pHash of (N, 64, 64) uint8 hash images: batched 2-D DCT-II, 16x16 low band > its
    median, packed row-major, first bit most significant (N, 32) uint8 (== the bytes of
    imagehash.phash(hash_image, hash_size=16), whose 64 x 64 LANCZOS input is the hash image
    itself). Dedup's verification feature (`DETAIL_COLUMN`): at 16 x 16 frequencies it tells apart
    look-alikes the 64-bit hashes and the 8 x 8 thumbnail cannot (two shirts of one cut, a family of
    line drawings), while resizes and re-encodes of one picture keep it within ~40 bits. Cost, in
    stage 1's workers per chunk of files (`curation.inventory.hash_chunk`): with dHash + pHash about
    0.07 CPU ms an image in chunks of 4 (0.05 in 16, 0.10 in 512: small batches stay in cache), ~3%
    of stage 1."""
    import scipy.fftpack  # here, not at import (see phash_batch)

    p = np.asarray(pixels, dtype=np.float64).reshape(-1, WHASH_IMAGE_SCALE, WHASH_IMAGE_SCALE)
    if len(p) == 0:
        return np.zeros((0, DETAIL_BYTES), dtype=np.uint8)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(p, axis=1), axis=2)
    low = dct[:, :16, :16].reshape(len(p), 256)
    med = np.median(low, axis=1)
    return np.packbits(low > med[:, None], axis=1)


# ---- Haar wavelet steps of imagehash.whash, batched, with pywt's exact floating-point operations ----
#
# pywt computes each Haar output as a two-term sum of products with the tap 0.7071067811865476
# (dwt: a = c*x[2k+1] + c*x[2k], d = -c*x[2k+1] + c*x[2k]; idwt: x[2k] = c*a + c*d,
# x[2k+1] = c*a - c*d; axis -2 first on decomposition, axis -1 first on reconstruction). A sum of
# two terms does not depend on evaluation order, so these numpy expressions give bit-identical
# coefficients (tests compare them with pywt), several times faster on a batch than pywt's
# generic n-d code.

_HAAR = 0.7071067811865476


def _haar_split(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    if axis == -2:
        even, odd = x[..., 0::2, :], x[..., 1::2, :]
    else:
        even, odd = x[..., 0::2], x[..., 1::2]
    return _HAAR * odd + _HAAR * even, (-_HAAR) * odd + _HAAR * even


def _haar_merge(a: np.ndarray, d: np.ndarray, axis: int) -> np.ndarray:
    shape = list(a.shape)
    shape[axis] *= 2
    out = np.empty(shape, dtype=np.float64)
    if axis == -2:
        out[..., 0::2, :] = _HAAR * a + _HAAR * d
        out[..., 1::2, :] = _HAAR * a + (-_HAAR) * d
    else:
        out[..., 0::2] = _HAAR * a + _HAAR * d
        out[..., 1::2] = _HAAR * a + (-_HAAR) * d
    return out


def haar_dwt2(x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """== pywt.dwt2(x, "haar", axes=(-2, -1)) for even sizes: (cA, (cH, cV, cD))."""
    a, d = _haar_split(x, -2)
    aa, ad = _haar_split(a, -1)
    da, dd = _haar_split(d, -1)
    return aa, (da, ad, dd)


def haar_idwt2(aa: np.ndarray, details: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """== pywt.idwt2((cA, (cH, cV, cD)), "haar", axes=(-2, -1))."""
    da, ad, dd = details
    return _haar_merge(_haar_merge(aa, ad, -1), _haar_merge(da, dd, -1), -2)


def whash_batch(pixels: np.ndarray) -> np.ndarray:
    """wHash of (N, 64, 64) uint8 arrays (haar, lowest LL removed; == imagehash.whash(image_scale=64))."""
    a = np.asarray(pixels, dtype=np.float64) / 255.0
    levels = int(np.log2(WHASH_IMAGE_SCALE))
    details = []
    for _ in range(levels):  # wavedec2(level=6)
        a, det = haar_dwt2(a)
        details.append(det)
    a = a * 0  # imagehash: coeffs[0] *= 0 (remove the lowest LL band)
    for det in reversed(details):  # waverec2
        a = haar_idwt2(a, det)
    for _ in range(levels - 3):  # wavedec2(level=3)[0]: the 8 x 8 LL band
        a, _det = haar_dwt2(a)
    low = a.reshape(len(a), 64)
    med = np.median(low, axis=1)
    return pack_bits(low > med[:, None])


# What downstream stages read (dedup: pHash + dHash); aHash and wHash are opt-in extras.
KEPT_HASHES = ("dhash", "phash")
EXTRA_HASHES = ("ahash", "whash")

_HASHERS = {
    "ahash": lambda x: ahash_batch(lanczos_resize_batch(x, 8, 8)),
    "dhash": lambda x: dhash_batch(lanczos_resize_batch(x, 9, 8)),
    "phash": lambda x: phash_batch(lanczos_resize_batch(x, 32, 32)),
    "whash": whash_batch,
}


def hash_batch(inputs: np.ndarray | Sequence[np.ndarray],
               columns: Sequence[str] = HASH_COLUMNS) -> dict[str, np.ndarray]:
    """The hashes named in `columns` (default all four) of N hash images ((N, 64, 64) or
    (N, HASH_INPUT_LEN) uint8), computed like imagehash: LANCZOS to 8x8 / 9x8 / 32x32 for
    aHash / dHash / pHash (batched, exact), the 64 x 64 image itself for wHash(image_scale=64)."""
    unknown = [c for c in columns if c not in _HASHERS]
    if unknown:
        raise ValueError(f"hash columns must be among {HASH_COLUMNS}, got {unknown}")
    x = np.asarray(inputs, dtype=np.uint8).reshape(-1, WHASH_IMAGE_SCALE, WHASH_IMAGE_SCALE)
    if len(x) == 0:
        return {k: np.zeros(0, dtype=np.uint64) for k in columns}
    return {k: _HASHERS[k](x) for k in columns}


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    return int(bin((int(a) ^ int(b)) & 0xFFFFFFFFFFFFFFFF).count("1"))

