"""The embedding stage's decode processes (curation/embedding/decode_pool.py): the same arrays and
the same per-image errors as decoding in threads, a worker that dies costs only its image, and
embed_shard gives the same embeddings either way."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from curation.embedding.chunks import ChunkLayout
from curation.embedding.decode_pool import DecodePool, DecodeSpec, decode_rows
from curation.embedding.producer import BatchProducer
from curation.imaging.policy import decode_rgb, rgb_opener, source_reader
from tests.conftest import arcade_sprites, skimage_photo

pytest.importorskip("torch")

POISON = b"\x89PNG-poison"


def dies_on_poison(data: bytes) -> Image.Image:
    """decode_rgb, except that a worker given POISON dies the way a segfaulting decoder does."""
    if data.startswith(POISON):
        os._exit(11)
    return decode_rgb(data)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("pool")
    out = []
    for i, p in enumerate(arcade_sprites()[::40][:10]):  # real sprites, most with transparency
        out.append(str(shutil.copyfile(p, d / f"s{i}{p.suffix}")))
    skimage_photo("chelsea").save(d / "cat.jpg", quality=90)
    out.append(str(d / "cat.jpg"))
    grey = np.asarray(skimage_photo("camera").resize((96, 96)))
    Image.fromarray(np.dstack([grey, np.where(grey > 80, 255, 0).astype(np.uint8)]), "LA").save(d / "la.png")
    out.append(str(d / "la.png"))  # two-channel grey + alpha
    (d / "broken.png").write_bytes(Path(out[0]).read_bytes()[:60])
    out.append(str(d / "broken.png"))
    out.append(str(d / "missing.png"))
    return out


class Geometry:
    """What BatchProducer reads of an embedder: batch size, device and the input geometry."""

    def __init__(self, size: int = 64, batch_size: int = 8):
        from curation.embedding.decode_pool import to_model_array

        self.image_size, self.resize_size, self.batch_size, self.device = size, size + 8, batch_size, "cpu"
        self.pil_to_array = lambda img: to_model_array(img, self.resize_size, self.image_size)


def drain(producer: BatchProducer) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    producer.start()
    arrays, errs = {}, {}
    while (b := producer.get()) is not None:
        arrays.update(zip(b.host_positions, b.host if b.host is not None else [], strict=True))
        errs.update(b.errors)
    producer.join()
    return arrays, errs


def test_processes_give_the_arrays_and_errors_of_threads(files):
    emb = Geometry()
    layout = ChunkLayout(total=len(files), chunk_size=len(files))
    stats = {"load_wait_s": 0.0, "assemble_s": 0.0, "gpu_decode_s": 0.0}
    root = os.path.dirname(files[0])
    threads = drain(BatchProducer(emb, files, layout, [0], rgb_opener(root), None, 2, 1, dict(stats)))
    pool = DecodePool(DecodeSpec(decode_rgb, emb.resize_size, emb.image_size), processes=2)
    try:
        procs = drain(BatchProducer(emb, files, layout, [0], rgb_opener(root), source_reader(root), 3, 1, dict(stats),
                                    decode_pool=pool))
    finally:
        pool.close()
    assert sorted(threads[0]) == sorted(procs[0]) == list(range(len(files) - 2))
    for k, arr in threads[0].items():
        assert arr.shape == (64, 64, 3)
        np.testing.assert_array_equal(arr, procs[0][k])
    n = len(files)
    assert threads[1] == procs[1] and sorted(procs[1]) == [n - 2, n - 1]
    assert procs[1][n - 2].startswith(("truncated: ", "corrupt: ")) and "broken.png" in procs[1][n - 2]
    assert procs[1][n - 1].startswith("not_found: ")


def test_a_worker_that_dies_costs_only_its_own_image(files):
    rows = [(f, Path(f).read_bytes()) for f in files[:6]]
    rows.insert(3, ("poison.png", POISON))
    spec = DecodeSpec(dies_on_poison, 40, 32)
    pool = DecodePool(spec, processes=2)
    try:
        out = pool.decode(rows)
        again = pool.decode(rows[:3])  # the pool was rebuilt and keeps working
    finally:
        pool.close()
    assert [k for k, _ in out] == ["hwc", "hwc", "hwc", "err", "hwc", "hwc", "hwc"]
    assert out[3][1].startswith("worker_crashed: the decoding process died on poison.png")
    expected = decode_rows(spec, [r for r in rows if r[1] != POISON])
    for got, want in zip([o for o in out if o[0] == "hwc"], expected, strict=True):
        np.testing.assert_array_equal(got[1], want[1])
    assert [k for k, _ in again] == ["hwc"] * 3


def test_bad_process_counts_are_refused():
    with pytest.raises(ValueError, match="decode processes must be >= 1"):
        DecodePool(DecodeSpec(decode_rgb, 40, 32), processes=0)


def test_embed_shard_in_processes_matches_threads(files, tmp_path):
    from curation.embedding import EmbedderSpec, build_embedder, embed_shard, embeddings_to_numpy

    model = build_embedder(EmbedderSpec(device="cpu", batch_size=8))  # packaged EfficientNet-Lite0 weights
    root = os.path.dirname(files[0])
    items = pl.DataFrame({"image_id": [f"i{i}" for i in range(len(files))], "uri": files})
    common = dict(read_bytes=source_reader(root), chunk_size=5)
    threads = embed_shard(items, rgb_opener(root), model, str(tmp_path / "t"), "s", **common)
    procs = embed_shard(items, rgb_opener(root), model, str(tmp_path / "p"), "s", decode_bytes=decode_rgb,
                        decode_processes=2, **common)
    assert threads["error"].to_list() == procs["error"].to_list()
    ok = threads["error"].is_null()
    assert ok.sum() == len(files) - 2
    a, b = embeddings_to_numpy(threads.filter(ok)), embeddings_to_numpy(procs.filter(ok))
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="decode_processes > 0 needs decode_bytes"):
        embed_shard(items, rgb_opener(root), model, str(tmp_path / "x"), "s", decode_processes=2)
