"""Embedding stage: batching, chunk resume, ordering, OOM backoff, device failures, load errors,
checkpoint loading (local, s3, no pickle) and the real packaged EfficientNet-Lite0 weights."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from PIL import Image  # noqa: E402

from curation import storage  # noqa: E402
from curation.embedding import (  # noqa: E402
    EMBED_OUTPUT_SCHEMA,
    EfficientNetLite0Embedder,
    EmbedderLoadError,
    EmbedderSpec,
    OpenClipEmbedder,
    RetryableDeviceError,
    ZeroShotUnavailableError,
    build_embedder,
    chunk_uri,
    embed_shard,
    embeddings_to_numpy,
    map_lukemelas_state_dict,
    packaged_efficientnet_lite0_path,
    read_image_uri,
    split_errors,
)
from curation.embedding.spec import RANDOM_INIT  # noqa: E402
from curation.schema import EMBEDDING_COLUMNS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "tiny-test-clip"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("oc_cfg")
    (d / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(str(d))
    return TINY


@pytest.fixture()
def tiny(tiny_config):
    torch.manual_seed(0)
    return OpenClipEmbedder(tiny_config, "random", device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def effnet():
    return build_embedder(EmbedderSpec(device="cpu", batch_size=16))


class CountingForward:
    """Wraps an embedder's forward: counts calls, optionally fails on call number `fail_on`."""

    def __init__(self, embedder, fail_on: int | None = None, exc: BaseException | None = None):
        self.inner = embedder._forward_images
        self.calls = 0
        self.sizes: list[int] = []
        self.fail_on = fail_on
        self.exc = exc or RuntimeError("simulated kill")
        embedder._forward_images = self

    def __call__(self, x):
        self.calls += 1
        if self.fail_on is not None and self.calls >= self.fail_on:
            raise self.exc
        self.sizes.append(int(x.shape[0]))
        return self.inner(x)


def _images(tmp_path, n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    d = tmp_path / "imgs"
    d.mkdir(exist_ok=True)
    uris = []
    for i in range(n):
        base = rng.integers(0, 256, size=(1, 1, 3))
        noise = rng.integers(-40, 40, size=(40 + i % 7, 48, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        p = d / f"im{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(p)
        uris.append(str(p))
    ids = [hashlib.sha1(u.encode()).hexdigest()[:16] for u in uris]
    return pl.DataFrame({"image_id": ids, "uri": uris})


def _reference(embedder, items: pl.DataFrame) -> np.ndarray:
    return embedder.embed_images([read_image_uri(u) for u in items["uri"]])


def test_import_is_lazy():
    code = ("import sys; import curation.embedding, curation.classify, resources.models; "
            "bad = [m for m in ('torch', 'open_clip', 'timm', 'torchvision', 'sklearn') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_no_module_of_the_embedding_package_imports_torch():
    import pkgutil

    import curation.embedding as pkg

    modules = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))
    assert {"models", "checkpoints", "gpu_decode", "chunks", "producer", "shard", "io"} <= set(modules)
    for mod in ["curation.embedding"] + [f"curation.embedding.{m}" for m in modules]:
        code = (f"import sys, {mod}; bad = [m for m in ('torch', 'torchvision', 'open_clip', 'timm') "
                f"if m in sys.modules]; assert not bad, ({mod!r}, bad)")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_embed_shard_order_batching_normalisation(tiny, tmp_path):
    items = _images(tmp_path, 13).sample(fraction=1.0, shuffle=True, seed=3)
    ref = _reference(tiny, items)
    counter = CountingForward(tiny)
    progress = []
    out = embed_shard(items, read_image_uri, tiny, str(tmp_path / "chunks"), "shard-7", chunk_size=5,
                      num_workers=2, progress=lambda done, total: progress.append((done, total)))
    assert out.schema == pl.Schema(EMBED_OUTPUT_SCHEMA)
    assert out["image_id"].to_list() == items["image_id"].to_list()  # input order kept
    assert set(out["shard"]) == {"shard-7"} and set(out["model"]) == {f"open_clip:{TINY}:random-init"}
    assert out["error"].null_count() == 13
    emb = embeddings_to_numpy(out)
    assert emb.shape == (13, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(emb, ref, atol=2e-3)  # float16 storage precision
    assert np.array_equal(emb, emb.astype(np.float16).astype(np.float32))  # stored at fp16 precision
    # chunks of 5, 5, 3 rows in batches of <= 4: 2 + 2 + 1 forward passes, none larger than 4
    assert counter.calls == 5 and max(counter.sizes) == 4
    assert progress[-1] == (13, 13)
    assert sorted(os.listdir(tmp_path / "chunks")) == ["_meta.json"] + [f"chunk-0000{i}.parquet" for i in range(3)]
    ok, bad = split_errors(out)
    assert ok.columns == list(EMBEDDING_COLUMNS) and bad.height == 0


def test_resume_after_kill_reuses_chunks(tiny, tmp_path):
    items = _images(tmp_path, 13)
    cdir = str(tmp_path / "chunks")
    full = embed_shard(items, read_image_uri, tiny, str(tmp_path / "ref"), "s", chunk_size=5, num_workers=2)

    killer = CountingForward(tiny, fail_on=5)  # chunk 0: calls 1-2, chunk 1: calls 3-4, dies in chunk 2
    with pytest.raises(RuntimeError, match="simulated kill"):
        embed_shard(items, read_image_uri, tiny, cdir, "s", chunk_size=5, num_workers=2)
    tiny._forward_images = killer.inner
    done = sorted(f for f in os.listdir(cdir) if f.startswith("chunk-"))
    assert done == ["chunk-00000.parquet", "chunk-00001.parquet"]
    mtimes = {f: os.stat(os.path.join(cdir, f)).st_mtime_ns for f in done}

    counter = CountingForward(tiny)
    out = embed_shard(items, read_image_uri, tiny, cdir, "s", chunk_size=5, num_workers=2)
    assert counter.calls == 1  # only the 3-row last chunk was computed
    assert {f: os.stat(os.path.join(cdir, f)).st_mtime_ns for f in done} == mtimes
    assert out["image_id"].to_list() == items["image_id"].to_list()
    np.testing.assert_array_equal(embeddings_to_numpy(out), embeddings_to_numpy(full))

    # everything done: a rerun computes nothing
    tiny._forward_images = counter.inner
    counter = CountingForward(tiny)
    embed_shard(items, read_image_uri, tiny, cdir, "s", chunk_size=5, num_workers=2)
    assert counter.calls == 0


def test_corrupt_or_stale_chunk_is_recomputed(tiny, tmp_path):
    items = _images(tmp_path, 10)
    cdir = str(tmp_path / "chunks")
    first = embed_shard(items, read_image_uri, tiny, cdir, "s", chunk_size=4, num_workers=1)
    path = chunk_uri(cdir, 1)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated: footer gone
    with pytest.raises(storage.CorruptOutputError):
        storage.read_parquet(path)
    # chunk 2 holds other ids (e.g. the manifest changed): stale
    storage.write_parquet(storage.read_parquet(chunk_uri(cdir, 2)).with_columns(pl.lit("x").alias("image_id")),
                          chunk_uri(cdir, 2))
    counter = CountingForward(tiny)
    out = embed_shard(items, read_image_uri, tiny, cdir, "s", chunk_size=4, num_workers=1)
    assert counter.calls == 2  # chunk 1 (4 rows) and chunk 2 (2 rows); chunk 0 reused
    assert out.equals(first)


def test_oom_halves_batch_and_continues(tiny, tmp_path):
    items = _images(tmp_path, 11)
    ref = _reference(tiny, items)
    tiny.batch_size = 8
    inner = tiny._forward_images
    seen = []

    def flaky(x):
        seen.append(int(x.shape[0]))
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return inner(x)

    tiny._forward_images = flaky
    out = embed_shard(items, read_image_uri, tiny, str(tmp_path / "c"), "s", chunk_size=16, num_workers=2)
    assert tiny.batch_size == 2
    assert seen[:3] == [8, 4, 2] and max(s for s in seen[3:]) == 2
    np.testing.assert_allclose(embeddings_to_numpy(out), ref, atol=2e-3)


def test_oom_at_batch_one_and_lost_device_are_retryable(tiny, tmp_path):
    items = _images(tmp_path, 3)
    tiny.batch_size = 1
    CountingForward(tiny, fail_on=1, exc=torch.cuda.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(RetryableDeviceError, match="out of memory"):
        embed_shard(items, read_image_uri, tiny, str(tmp_path / "a"), "s", num_workers=1)
    tiny._forward_images = tiny._forward_images.inner
    CountingForward(tiny, fail_on=1, exc=RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(RetryableDeviceError, match="illegal memory access"):
        embed_shard(items, read_image_uri, tiny, str(tmp_path / "b"), "s", num_workers=1)
    tiny._forward_images = tiny._forward_images.inner
    CountingForward(tiny, fail_on=1, exc=ValueError("a bug"))  # not a device failure: not retryable
    with pytest.raises(ValueError, match="a bug"):
        embed_shard(items, read_image_uri, tiny, str(tmp_path / "c"), "s", num_workers=1)


def test_undecodable_images_get_an_error_row(tiny, tmp_path):
    items = _images(tmp_path, 6)
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"<html>not an image</html>")
    trunc = tmp_path / "imgs" / "trunc.jpg"
    trunc.write_bytes(open(items["uri"][0], "rb").read()[:200])
    extra = pl.DataFrame({"image_id": ["bad0", "trunc0", "gone0"],
                          "uri": [str(bad), str(trunc), str(tmp_path / "missing.jpg")]})
    items = pl.concat([items.head(2), extra, items.tail(4)])
    out = embed_shard(items, read_image_uri, tiny, str(tmp_path / "c"), "s", chunk_size=4, num_workers=2)
    assert out["image_id"].to_list() == items["image_id"].to_list()
    errs = dict(zip(out["image_id"], out["error"]))
    assert errs["bad0"].startswith("not_an_image")
    assert errs["trunc0"].split(":")[0] in ("truncated", "corrupt")
    assert errs["gone0"].startswith("not_found")
    assert out.filter(pl.col("error").is_not_null())["embedding"].null_count() == 3
    ok, failed = split_errors(out)
    assert ok.height == 6 and failed["image_id"].to_list() == ["bad0", "trunc0", "gone0"]


def test_batch_producer_cuts_batches_in_order_within_chunks(tiny, tmp_path):
    from skimage import data

    from curation.embedding.chunks import ChunkLayout
    from curation.embedding.producer import BatchProducer

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    paths = []
    for i, arr in enumerate(photos):
        paths.append(str(tmp_path / f"p{i}.png"))
        Image.fromarray(arr).save(paths[-1])
    uris = [paths[i % 4] for i in range(150)]
    uris[80] = str(tmp_path / "missing.png")
    tiny.batch_size = 64
    stats = {"load_wait_s": 0.0, "assemble_s": 0.0, "gpu_decode_s": 0.0}
    producer = BatchProducer(tiny, uris, ChunkLayout(total=150, chunk_size=100), [0, 1], read_image_uri,
                             None, num_workers=2, prefetch_batches=1, stats=stats)
    producer.start()
    batches = []
    while (b := producer.get()) is not None:
        batches.append(b)
    producer.join()
    # the first batch is 1/8 of the batch size; batches never span chunks; the last one of a chunk says so
    assert [(b.chunk, b.positions[0], b.positions[-1] + 1, b.last_in_chunk) for b in batches] == [
        (0, 0, 8, False), (0, 8, 72, False), (0, 72, 100, True), (1, 0, 50, True)]
    third = batches[2]
    assert third.errors.keys() == {80} and third.errors[80].startswith("not_found: ")
    assert third.host_positions == [p for p in range(72, 100) if p != 80]
    assert third.host.shape == (27, tiny.image_size, tiny.image_size, 3) and third.host.dtype == np.uint8
    np.testing.assert_array_equal(third.host[0], tiny.pil_to_array(read_image_uri(uris[72])))
    assert stats["load_wait_s"] > 0 and stats["gpu_decode_s"] == 0


# --- loading --------------------------------------------------------------------------------------


def test_clear_errors_for_models_that_cannot_load(tiny_config, tmp_path):
    with pytest.raises(EmbedderLoadError, match="EMBEDDER_PRETRAINED"):
        build_embedder(EmbedderSpec(kind="open_clip", model_name="ViT-B-32", pretrained="no_such_tag"))
    with pytest.raises(EmbedderLoadError, match="does not exist.*EMBEDDER_PRETRAINED"):
        build_embedder(EmbedderSpec(kind="open_clip", model_name=tiny_config, pretrained=str(tmp_path / "x.pt")))
    with pytest.raises(EmbedderLoadError, match="EMBEDDER_PRETRAINED"):
        build_embedder(EmbedderSpec(kind="open_clip", model_name=tiny_config, pretrained=None))
    with pytest.raises(EmbedderLoadError, match="EMBEDDER_MODEL"):
        build_embedder(EmbedderSpec(kind="open_clip", model_name="ViT-Nope", pretrained="random"))
    with pytest.raises(EmbedderLoadError, match="EMBEDDER_KIND"):
        build_embedder(EmbedderSpec(kind="resnet"))
    with pytest.raises(EmbedderLoadError, match="does not exist"):
        build_embedder(EmbedderSpec(pretrained=str(tmp_path / "missing.pth")))
    if not torch.cuda.is_available():
        with pytest.raises(EmbedderLoadError, match="EMBEDDER_DEVICE"):
            build_embedder(EmbedderSpec(kind="open_clip", model_name=tiny_config, pretrained="random",
                                        device="cuda"))


def test_hub_tag_offline_fails_at_once_never_random(tiny_config, monkeypatch):
    """A real hub tag that cannot be fetched (no network here) raises; it is never replaced by
    random weights (open_clip alone only warns)."""
    import open_clip.factory as factory

    def offline(*a, **k):
        raise OSError("hub unreachable (simulated offline)")

    # make the download fail fast and deterministically whether or not this machine has network
    monkeypatch.setattr(factory, "download_pretrained", offline, raising=False)
    monkeypatch.setattr(factory, "download_pretrained_from_hf", offline, raising=False)
    with pytest.raises(EmbedderLoadError, match="could not load open_clip weights ViT-B-32/laion2b_s34b_b79k"):
        OpenClipEmbedder("ViT-B-32", "laion2b_s34b_b79k", device="cpu")


def test_checkpoint_path_safetensors_and_pt(tiny, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.detach().clone().contiguous() for k, v in tiny.model.state_dict().items()}
    st_path, pt_path = str(tmp_path / "m.safetensors"), str(tmp_path / "m.pt")
    save_file(sd, st_path)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, pt_path)
    imgs = [Image.fromarray(np.full((40, 40, 3), c, np.uint8)) for c in (10, 120, 250)]
    ref = tiny.embed_images(imgs)
    for path in (st_path, pt_path):
        e = OpenClipEmbedder(TINY, path, device="cpu")
        assert e.model_id.startswith(f"open_clip:{TINY}:sha256-")
        np.testing.assert_allclose(e.embed_images(imgs), ref, atol=1e-5)
        assert e.embed_texts(["a cat", "a dog"]).shape == (2, 32)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_in_checkpoint_is_refused(tiny, tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"state_dict": tiny.model.state_dict(), "payload": _Evil()}, path)
    with pytest.raises(EmbedderLoadError, match="safely"):
        OpenClipEmbedder(TINY, path, device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_checkpoint_from_s3(tiny, tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    import boto3
    from safetensors.torch import save

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(storage, "_FS_CACHE", {})
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="models")
        sd = {k: v.detach().clone().contiguous() for k, v in tiny.model.state_dict().items()}
        s3.put_object(Bucket="models", Key="clip/tiny.safetensors", Body=save(sd))
        e = OpenClipEmbedder(TINY, "s3://models/clip/tiny.safetensors", device="cpu")
        img = [Image.fromarray(np.full((40, 40, 3), 77, np.uint8))]
        np.testing.assert_allclose(e.embed_images(img), tiny.embed_images(img), atol=1e-5)
        with pytest.raises(EmbedderLoadError, match="does not exist"):
            OpenClipEmbedder(TINY, "s3://models/clip/missing.safetensors", device="cpu")
    finally:
        server.stop()


# --- the real packaged EfficientNet-Lite0 ----------------------------------------------------------


def test_packaged_weights_map_strictly_and_classify_real_photos():
    import timm
    from skimage import data

    sd = torch.load(packaged_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(map_lukemelas_state_dict(sd, model.state_dict()), strict=True)
    emb = EfficientNetLite0Embedder(device="cpu")
    px = torch.stack([emb.pil_to_uint8(Image.fromarray(a)) for a in (data.chelsea(), data.coffee())])
    with torch.inference_mode():
        top = model(emb.normalize(px)).argmax(1).tolist()
    assert 281 <= top[0] <= 285  # a cat (tabby / tiger / Persian / Siamese / Egyptian)
    assert top[1] == 967  # espresso


def test_efficientnet_near_duplicates_are_closest(effnet):
    from skimage import data

    photos = {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut(),
              "rocket": data.rocket(), "camera": data.camera(), "motorcycle": data.immunohistochemistry()}
    imgs = {k: Image.fromarray(v).convert("RGB") for k, v in photos.items()}
    orig = imgs["chelsea"]
    small = orig.resize((orig.width * 3 // 5, orig.height * 3 // 5), Image.BILINEAR)
    import io

    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=45)
    dup = Image.open(io.BytesIO(buf.getvalue()))
    names = list(imgs)
    emb = effnet.embed_images([imgs[n] for n in names] + [dup])
    assert emb.shape == (len(names) + 1, 1280)
    sims = emb[:-1] @ emb[-1]
    assert names[int(np.argmax(sims))] == "chelsea"
    others = np.delete(sims, names.index("chelsea"))
    assert sims[names.index("chelsea")] > 0.85 and sims[names.index("chelsea")] - others.max() > 0.2


def test_efficientnet_has_no_zero_shot(effnet):
    assert effnet.model_id == "timm:tf_efficientnet_lite0:efficientnet-lite0-57934424"
    assert effnet.dim == 1280 and not effnet.supports_text and effnet.name == effnet.model_id
    with pytest.raises(ZeroShotUnavailableError, match="zero-shot classification is unavailable"):
        effnet.embed_texts(["a cat"])
    with pytest.raises(ZeroShotUnavailableError):
        _ = effnet.logit_scale


def test_resource_builds_offline_default_once(monkeypatch):
    from resources.models import EmbedderResource

    res = EmbedderResource(device="cpu")
    assert res.spec() == EmbedderSpec(device="cpu")
    a, b = res.get_embedder(), EmbedderResource(device="cpu").get_embedder()
    assert a is b and a.model_id.startswith("timm:tf_efficientnet_lite0:")


def test_spec_from_env():
    spec = EmbedderSpec.from_env({"EMBEDDER_KIND": "open_clip", "EMBEDDER_BATCH_SIZE": "64",
                                  "EMBEDDER_DEVICE": "cuda:1"})
    assert spec == EmbedderSpec(kind="open_clip", model_name="ViT-B-32", pretrained="laion2b_s34b_b79k",
                                device="cuda:1", precision="auto", batch_size=64)
    assert EmbedderSpec.from_env({}) == EmbedderSpec()


def test_which_jpegs_go_to_nvjpeg(tmp_path):
    import io

    from curation.embedding.gpu_decode import jpeg_ok_for_gpu as _jpeg_ok_for_gpu

    def enc(img, **kw) -> bytes:
        b = io.BytesIO()
        img.save(b, **kw)
        return b.getvalue()

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    plain = enc(img, format="JPEG")
    exif = img.getexif()
    exif[0x0112] = 6  # rotated: nvJPEG would ignore the orientation
    assert _jpeg_ok_for_gpu(plain) and _jpeg_ok_for_gpu(plain + b"\x00\x00")
    assert not _jpeg_ok_for_gpu(plain[: len(plain) // 2])  # truncated: PIL reports it, nvJPEG would not
    assert not _jpeg_ok_for_gpu(enc(img, format="JPEG", exif=exif.tobytes()))
    assert not _jpeg_ok_for_gpu(enc(img, format="PNG"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_path_matches_cpu_path(tiny_config, tmp_path):
    e = OpenClipEmbedder(tiny_config, "random", device="cuda", batch_size=8)
    items = _images(tmp_path, 12)  # half JPEG (nvJPEG), half PNG (CPU)
    from curation.embedding import read_bytes_uri

    a = embed_shard(items, read_image_uri, e, str(tmp_path / "a"), "s", chunk_size=5, read_bytes=read_bytes_uri)
    b = embed_shard(items, read_image_uri, e, str(tmp_path / "b"), "s", chunk_size=5, gpu_decode="off")
    cos = (embeddings_to_numpy(a) * embeddings_to_numpy(b)).sum(1)
    assert cos.min() > 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_path_writes_the_imagenet_labels(effnet, tmp_path):
    gpu = EfficientNetLite0Embedder(device="cuda", precision="fp16", batch_size=8)
    items = _photo_items(tmp_path, ["chelsea", "coffee", "camera", "rocket"])  # 2 JPEG (nvJPEG), 2 PNG (CPU)
    from curation.embedding import read_bytes_uri

    a = embed_shard(items, read_image_uri, gpu, str(tmp_path / "a"), "s", chunk_size=3, read_bytes=read_bytes_uri)
    b = embed_shard(items, read_image_uri, effnet, str(tmp_path / "b"), "s", chunk_size=3)
    assert a["in_topk_labels"].null_count() == 0 and set(a["in_topk_labels"].list.len()) == {5}
    assert a["in_topk_labels"].list.first().to_list() == b["in_topk_labels"].list.first().to_list()
    np.testing.assert_allclose(a["in_topk_probs"].list.first().to_numpy(), b["in_topk_probs"].list.first().to_numpy(),
                               atol=0.05)


def test_reader_errors_keep_their_code_at_the_embedding_stage():
    from curation import errors
    from curation.embedding.errors import format_image_error as _fmt_error
    from curation.reader import InputError

    assert _fmt_error(InputError(errors.SYMLINK_OUTSIDE_ROOT, "link escapes")).startswith("symlink_outside_root: ")
    assert _fmt_error(FileNotFoundError("gone")).startswith("not_found: ")
    assert _fmt_error(ValueError("bug")).startswith("internal_error: ")


# --- ImageNet labels from the EfficientNet-Lite0 head ----------------------------------------------

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # indices 281-285


def _photo_items(tmp_path, names: list[str]) -> pl.DataFrame:
    from skimage import data

    d = tmp_path / "photos"
    d.mkdir(exist_ok=True)
    uris = []
    for i, name in enumerate(names):
        p = d / f"{name}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(getattr(data, name)()).convert("RGB").save(p)
        uris.append(str(p))
    return pl.DataFrame({"image_id": names, "uri": uris})


def test_imagenet_top5_of_real_photos_through_embed_shard(effnet, tmp_path):
    """The packaged weights label real photos: chelsea is a cat, coffee an espresso, the cameraman
    stands at a tripod, the rocket is a missile / projectile / space shuttle."""
    import timm

    names = ["chelsea", "coffee", "camera", "rocket"]
    items = _photo_items(tmp_path, names)
    items = pl.concat([items, pl.DataFrame({"image_id": ["gone"], "uri": [str(tmp_path / "missing.png")]})])
    out = embed_shard(items, read_image_uri, effnet, str(tmp_path / "chunks"), "s", chunk_size=3, num_workers=2)
    assert out.schema == pl.Schema(EMBED_OUTPUT_SCHEMA)
    top = {r["image_id"]: r for r in out.iter_rows(named=True)}
    assert top["gone"]["in_topk_labels"] is None and top["gone"]["in_topk_probs"] is None
    for name in names:
        labels, probs = top[name]["in_topk_labels"], top[name]["in_topk_probs"]
        assert len(labels) == len(probs) == 5 and len(set(labels)) == 5
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-5
    assert top["chelsea"]["in_topk_labels"][0] in CAT_CLASSES
    assert len(CAT_CLASSES & set(top["chelsea"]["in_topk_labels"])) >= 2
    assert top["coffee"]["in_topk_labels"][0] == "espresso" and top["coffee"]["in_topk_probs"][0] > 0.5
    assert "tripod" in top["camera"]["in_topk_labels"]
    assert {"missile", "projectile", "space shuttle"} & set(top["rocket"]["in_topk_labels"])
    # the head gives what the full timm classifier gives (no second pass: same pooled features)
    sd = torch.load(packaged_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(map_lukemelas_state_dict(sd, model.state_dict()), strict=True)
    px = torch.stack([effnet.pil_to_uint8(read_image_uri(u)) for u in items["uri"][:4]])
    with torch.inference_mode():
        ref = torch.softmax(model(effnet.normalize(px)), dim=-1).topk(5)
    for i, name in enumerate(names):
        assert top[name]["in_topk_labels"] == [effnet.class_names[j] for j in ref.indices[i].tolist()]
        np.testing.assert_allclose(top[name]["in_topk_probs"], ref.values[i].numpy(), atol=1e-4)
    # and the embedding is still the L2-normalised pooled features
    np.testing.assert_allclose(embeddings_to_numpy(out.head(4)), _reference(effnet, items.head(4)), atol=2e-3)


def test_imagenet_class_names_from_timm():
    from timm.data import ImageNetInfo

    from curation.embedding import imagenet_class_names
    from curation.embedding.imagenet import short_class_names

    names = imagenet_class_names()
    info = ImageNetInfo()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[1] == "goldfish" and names[967] == "espresso" and names[281] == "tabby"
    assert info.index_to_description(1) == "goldfish, Carassius auratus"
    assert names[134] == f"crane ({info.index_to_label_name(134)})" and names[517].startswith("crane (n")
    with pytest.raises(ValueError, match="synsets"):
        short_class_names(["a"], [])


def test_models_without_a_head_write_null_imagenet_columns(tiny, tmp_path):
    items = _images(tmp_path, 5)
    out = embed_shard(items, read_image_uri, tiny, str(tmp_path / "c"), "s", chunk_size=2, num_workers=1)
    assert out.schema == pl.Schema(EMBED_OUTPUT_SCHEMA) and not tiny.has_head
    assert out["in_topk_labels"].null_count() == out["in_topk_probs"].null_count() == 5
    rand = EfficientNetLite0Embedder(RANDOM_INIT, device="cpu", batch_size=4)  # a random head labels nothing
    assert not rand.has_head and rand.info()["imagenet_topk"] == 0
    assert rand.embed_images_topk([read_image_uri(items["uri"][0])]).topk_idx is None


def _drop_imagenet_columns(cdir: str) -> list[str]:
    """Rewrite every chunk of `cdir` as written before the ImageNet columns existed."""
    paths = sorted(os.path.join(cdir, f) for f in os.listdir(cdir) if f.startswith("chunk-"))
    for p in paths:
        storage.write_parquet(storage.read_parquet(p).drop("in_topk_labels", "in_topk_probs"), p)
    return paths


def test_resume_from_chunks_without_imagenet_columns(tiny, effnet, tmp_path):
    # open_clip (no head): old chunks are reused, their ImageNet columns null
    items = _images(tmp_path, 7)
    cdir = str(tmp_path / "clip")
    first = embed_shard(items, read_image_uri, tiny, cdir, "s", chunk_size=3, num_workers=1)
    _drop_imagenet_columns(cdir)
    counter = CountingForward(tiny)
    again = embed_shard(items, read_image_uri, tiny, cdir, "s", chunk_size=3, num_workers=1)
    assert counter.calls == 0 and again.equals(first)
    # EfficientNet (with a head): old chunks lack the labels, so they are recomputed
    photos = _photo_items(tmp_path, ["chelsea", "coffee", "astronaut"])
    edir = str(tmp_path / "eff")
    ref = embed_shard(photos, read_image_uri, effnet, edir, "s", chunk_size=2, num_workers=1)
    _drop_imagenet_columns(edir)
    counter = CountingForward(effnet)
    try:
        out = embed_shard(photos, read_image_uri, effnet, edir, "s", chunk_size=2, num_workers=1)
        assert counter.calls == 2 and out.equals(ref)
        assert out["in_topk_labels"].null_count() == 0
        # a different top-k never reuses chunks of another
        effnet.topk = 3
        calls = counter.calls
        out3 = embed_shard(photos, read_image_uri, effnet, edir, "s", chunk_size=2, num_workers=1)
        assert counter.calls == calls + 2 and set(out3["in_topk_labels"].list.len()) == {3}
        assert out3["in_topk_labels"].list.first().to_list() == ref["in_topk_labels"].list.first().to_list()
    finally:
        effnet.topk = 5
        effnet._forward_images = counter.inner


def test_imagenet_columns_for_classification_rows(effnet, tmp_path):
    from curation.embedding import IMAGENET_COLUMNS, add_imagenet_columns, imagenet_columns

    photos = _photo_items(tmp_path, ["chelsea", "coffee"])
    photos = pl.concat([photos, pl.DataFrame({"image_id": ["gone"], "uri": [str(tmp_path / "nope.png")]})])
    emb = embed_shard(photos, read_image_uri, effnet, str(tmp_path / "c"), "s", num_workers=1)
    cols = imagenet_columns(emb)
    assert cols.schema == pl.Schema(IMAGENET_COLUMNS)
    assert cols["image_id"].to_list() == ["chelsea", "coffee"]  # embedded rows only
    assert cols["in_label"].to_list() == emb["in_topk_labels"].list.first().to_list()[:2]
    assert cols["in_prob"].to_list() == emb["in_topk_probs"].list.first().to_list()[:2]
    cls = pl.DataFrame({"image_id": ["coffee", "chelsea", "other"], "zs_label": ["a", "b", "c"]})
    joined = add_imagenet_columns(cls, emb)
    assert joined["image_id"].to_list() == ["coffee", "chelsea", "other"]
    assert joined["in_label"][0] == "espresso" and joined["in_label"][1] in CAT_CLASSES
    assert joined["in_label"][2] is None and joined.columns == ["image_id", "zs_label", *list(IMAGENET_COLUMNS)[1:]]
    # embeddings written before the ImageNet columns existed: nulls, not an error
    legacy = imagenet_columns(emb.drop("in_topk_labels", "in_topk_probs"))
    assert legacy.schema == pl.Schema(IMAGENET_COLUMNS) and legacy["in_label"].null_count() == 2
