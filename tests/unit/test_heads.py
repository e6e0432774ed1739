"""Model heads over embeddings (curation/heads.py): LAION-shaped MLPs built here, loaded safely."""

from __future__ import annotations

import numpy as np
import pytest

from curation.heads import LAION_AESTHETIC, LAION_NSFW, HeadLoadError, HeadSpec, load_head, model_matches, with_uri
from tests.conftest import mnist_digits
from tests.s3server import s3, s3_server  # noqa: F401  (fixtures)

torch = pytest.importorskip("torch")


def _aesthetic_mlp(dim: int = 768):
    """The LAION improved-aesthetic-predictor architecture (linear layers + dropout)."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1)).eval()


def _embeddings(n: int = 32, dim: int = 768) -> np.ndarray:
    x, _ = mnist_digits(n)
    x = x.reshape(n, -1)[:, :dim].astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _torch_scores(model, x: np.ndarray, sigmoid: bool = False) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x))[:, 0]
        return (torch.sigmoid(out) if sigmoid else out).numpy()


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_laion_shaped_aesthetic_head_scores_like_torch(tmp_path, fmt):
    model = _aesthetic_mlp()
    path = tmp_path / f"aesthetic.{fmt}"
    if fmt == "pth":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    head = load_head(with_uri(LAION_AESTHETIC, str(path)))
    x = _embeddings()
    np.testing.assert_allclose(head.score(x), _torch_scores(model, x), rtol=1e-4, atol=1e-5)
    head.check_embedder("open_clip:ViT-L-14:openai", 768)


def test_nsfw_shaped_head_with_relu_and_sigmoid(tmp_path):
    nn = torch.nn
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(768, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1)).eval()
    torch.save(model.state_dict(), tmp_path / "nsfw.pt")
    head = load_head(with_uri(LAION_NSFW, str(tmp_path / "nsfw.pt")))
    x = _embeddings()
    s = head.score(x)
    np.testing.assert_allclose(s, _torch_scores(model, x, sigmoid=True), rtol=1e-4, atol=1e-6)
    assert ((s > 0) & (s < 1)).all()
    assert (head.reasons(s) == (s > 0.5)).all()


def test_mismatched_embedder_or_dimension_fails_naming_the_setting(tmp_path):
    torch.save(_aesthetic_mlp().state_dict(), tmp_path / "a.pth")
    head = load_head(with_uri(LAION_AESTHETIC, str(tmp_path / "a.pth")))
    with pytest.raises(HeadLoadError, match=r"heads.aesthetic.embedding_model"):
        head.check_embedder("timm:tf_efficientnet_lite0:packaged", 1280)
    with pytest.raises(HeadLoadError, match="expects 768-d"):
        head.check_embedder("open_clip:ViT-L-14:openai", 1024)
    bad = HeadSpec(name="aesthetic", uri=str(tmp_path / "a.pth"), embedding_model="x", dim=512)
    with pytest.raises(HeadLoadError, match=r"takes 768 inputs, expected 512 \(heads.aesthetic.dim=512\)"):
        load_head(bad)


def test_pickled_code_is_refused_and_missing_files_are_named(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"layers.0.weight": Evil()}))
    with pytest.raises(HeadLoadError, match="cannot load safely"):
        load_head(with_uri(LAION_AESTHETIC, str(tmp_path / "evil.pt")))
    with pytest.raises(HeadLoadError, match="does not exist"):
        load_head(with_uri(LAION_AESTHETIC, str(tmp_path / "nope.safetensors")))
    with pytest.raises(HeadLoadError, match=r"heads.aesthetic.uri"):
        load_head(LAION_AESTHETIC)


def test_hub_head_offline_fails_at_once_with_what_to_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HeadLoadError, match="local path or s3://"):
        load_head(with_uri(LAION_AESTHETIC, "hf-hub:someorg/aesthetic/sac+logos+ava1-l14-linearMSE.pth"))


def test_head_from_s3(s3, tmp_path):
    from curation import storage

    model = _aesthetic_mlp()
    torch.save(model.state_dict(), tmp_path / "a.pth")
    uri = s3.uri("models/aesthetic.pth")
    storage.write_bytes_atomic(uri, (tmp_path / "a.pth").read_bytes())
    head = load_head(with_uri(LAION_AESTHETIC, uri))
    x = _embeddings(8)
    np.testing.assert_allclose(head.score(x), _torch_scores(model, x), rtol=1e-4, atol=1e-5)


def test_spec_validation_and_model_matching():
    assert model_matches("open_clip:ViT-L-14", "open_clip:ViT-L-14:openai")
    assert not model_matches("open_clip:ViT-L-14", "open_clip:ViT-L-14-336:openai")
    with pytest.raises(ValueError, match="a threshold needs a reason"):
        HeadSpec(name="a", uri="x", embedding_model="m", dim=4, reject_below=1.0)
    with pytest.raises(ValueError, match="heads.a.hidden_activation"):
        HeadSpec(name="a", uri="x", embedding_model="m", dim=4, hidden_activation="tanh")
