"""What can be checked of the images without a Docker engine: the Dockerfiles' base Python satisfies
requires-python, they install the project from the same pyproject.toml under the tested pins, the
build context they COPY is enough to build the project's wheel (built here from exactly those
paths), and the runtime user/command agree with the Helm chart and orchestration/k8s.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


def instructions(name: str) -> list[tuple[str, str]]:
    text = (ROOT / name).read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def arg_defaults(ins) -> dict[str, str]:
    out = {}
    for op, rest in ins:
        if op == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            out.setdefault(k, v)
    return out


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_python_satisfies_requires_python(name):
    ins = instructions(name)
    args = arg_defaults(ins)
    froms = [rest for op, rest in ins if op == "FROM"]
    assert len(froms) == 2, "a build stage and a slim runtime stage"
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for f in froms:
        image = f.split()[0].replace("${PYTHON_VERSION}", args["PYTHON_VERSION"])
        m = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim-bookworm", image)
        assert m, f"{name}: unexpected base image {image!r}"
        assert Version(m.group(1)) in requires, f"{name}: {image} does not satisfy requires-python {requires}"
    # and it is the Python the tests run on
    assert args["PYTHON_VERSION"] == f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_installs_the_project_from_its_pyproject_under_the_tested_pins(name):
    ins = instructions(name)
    copied = set()
    for op, rest in ins:
        if op == "COPY" and not rest.startswith("--from"):
            *srcs, _dst = rest.split()
            copied |= {s.rstrip("/") for s in srcs}
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], "deploy/constraints.txt"} <= copied
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in include} <= copied, "every package the pyproject installs is in the context"
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    assert re.search(r"pip install [^;&]*--constraint deploy/constraints\.txt \.(\s|;|$)", runs), runs
    assert "pip check" in runs
    assert not re.search(r"pip install [^;&]*-r ", runs), "dependencies come from pyproject.toml, not a requirements file"
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1] == "10001:10001"


def test_constraints_pin_every_dependency_to_the_tested_version():
    pins = constraints()
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]
    for dep in deps:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} violates {req.specifier}"
    # the pins are what is installed where the tests run (regenerate constraints.txt otherwise)
    stale = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(installed).public != Version(version).public:
            stale[name] = (version, installed)
    assert not stale, f"deploy/constraints.txt disagrees with the tested venv (pinned, installed): {stale}"


def test_runtime_matches_the_chart_and_the_k8s_security_context():
    from orchestration import k8s

    values = yaml.safe_load((ROOT / "helm" / "image-curation" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == k8s.RUN_AS_USER == 10001
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    for name in DOCKERFILES:
        ins = instructions(name)
        cmd = [rest for op, rest in ins if op == "CMD"][-1]
        assert yaml.safe_load(cmd) == ["dagster", "api", "grpc", "-m", values["codeServer"]["module"],
                                       "-h", "0.0.0.0", "-p", str(values["codeServer"]["port"])]
        env = " ".join(rest for op, rest in ins if op == "ENV")
        # a read-only root filesystem: every cache and HOME point into the /tmp emptyDir
        for var in ("HOME=/tmp/home", "TMPDIR=/tmp", "XDG_CACHE_HOME=/tmp/cache", "MPLCONFIGDIR=/tmp/mpl",
                    "PYTHONDONTWRITEBYTECODE=1"):
            assert var in env, f"{name}: {var}"
        assert [rest for op, rest in ins if op == "EXPOSE"] == [str(values["codeServer"]["port"])]


@pytest.mark.timeout(240)
def test_the_copied_context_builds_the_project_wheel(tmp_path):
    """Build the wheel from exactly the paths the Dockerfile COPYs (no network, no isolation)."""
    ins = instructions("Dockerfile")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    ignored = {"__pycache__"}
    for op, rest in ins:
        if op != "COPY" or rest.startswith("--from"):
            continue
        *srcs, _dst = rest.split()
        for s in srcs:
            src = ROOT / s.rstrip("/")
            assert src.exists(), f"Dockerfile COPYs {s}, which is not in the repository"
            dst = ctx / s.rstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*ignored, "*.pyc"))
            else:
                shutil.copyfile(src, dst)
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(out), str(ctx)], capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("image_curation-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("orchestration/definitions.py", "orchestration/k8s.py", "curation/storage.py",
                   "resources/corpus.py", "partitions/shards.py", "assets/__init__.py"):
        assert module in names, f"{module} missing from the wheel built from the Docker context"
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Requires-Python: <3.13,>=3.11" in text or "Requires-Python: >=3.11,<3.13" in text
    assert "Requires-Dist: dagster==1.13.27" in text and "Requires-Dist: dagster-k8s==0.29.27" in text
