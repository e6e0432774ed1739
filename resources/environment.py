"""The one place that reads the deployment's environment variables.

Contract
--------
* `ENV_VARS` lists every environment variable the code location and the `curate` CLI read: name,
  meaning, default, allowed values (it generates docs/configuration.md). Each is parsed and checked
  here and nowhere else in resources/ and orchestration/cli.py (orchestration/k8s.py reads its own
  CURATION_K8S_* variables, listed here for the reference; s3fs reads the AWS_* ones).
* A bad value is a `SettingError`: a `dagster.Failure` that is never retried, whose message is ONE
  line ``SETTING=VALUE: what is allowed``. The CLI prints that line and exits with status 2.
* Nothing is read at import time. `read(name)` parses the current value (raising `SettingError`);
  `value_or_default(name)` returns the default for a bad value so that definitions still load, and
  `check(names)` raises for the bad ones: every resource calls it when a run or a sensor tick sets
  it up (`setup_for_execution`), so a bad variable fails that run or tick with its one line instead
  of taking the code location down.
* Resource fields take their defaults from here rather than from `dg.EnvVar`: an EnvVar must be
  set (it has no default) and a bad value surfaces as a config-type error, not as this one line.
  No secret is a resource field (s3fs reads AWS_* itself), so nothing here needs EnvVar's masking.
* `check_source(name, uri)` checks a source location (a readable local folder, or a well-formed
  s3:// URI) and `dagster_home()` the CLI's instance folder. `ephemeral_cli_run(argv)` tells the
  `dagster` CLI's `asset materialize` / `job execute` of a shard without DAGSTER_HOME (a run on a
  throwaway instance that knows no shards) from everything else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARD_SIZE = 10_000  # the same as partitions.shards.DEFAULT_SHARD_SIZE
DEFAULT_BACKFILL_SHARDS_PER_RUN = 10
DEPLOYMENTS = ("local", "k8s", "celery")
EMBEDDER_KINDS = ("open_clip", "efficientnet_lite0")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
EFFICIENTNET_MODEL = "tf_efficientnet_lite0"
# open_clip's production default (curation.embedding.OPEN_CLIP_DEFAULT): kind=open_clip alone means it.
OPEN_CLIP_MODEL, OPEN_CLIP_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"

_SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class SettingError(dg.Failure):
    """A bad setting. `str(err)` is one line: ``SETTING=VALUE: what is allowed``. As a
    `dagster.Failure` with `allow_retries=False`, raising it in a step fails the step at once."""

    def __init__(self, setting: str, value: Any, allowed: str):
        self.setting, self.value, self.allowed = setting, value, allowed
        super().__init__(description=f"{setting}={value!r}: {allowed}", allow_retries=False)

    def __str__(self) -> str:
        return self.description or ""


# ------------------------------------------------------------------------------ value checks


def positive_int(setting: str, raw: Any, what: str = "a whole number >= 1") -> int:
    """`raw` (an int or its text) as an int >= 1, else SettingError naming `setting`."""
    try:
        value = int(str(raw).strip()) if not isinstance(raw, bool) else None
    except ValueError:
        value = None
    if value is None or value < 1:
        raise SettingError(setting, raw, what)
    return value


def source_name(setting: str, name: str) -> str:
    if not _SOURCE_NAME.match(name):
        raise SettingError(setting, name, "a source name: a lower-case letter, then up to 31 lower-case "
                                          "letters, digits or '_' (it becomes part of every shard key)")
    return name


def location(setting: str, uri: str) -> str:
    """A local path (kept as given) or a well-formed s3://bucket[/prefix]; other schemes refused."""
    uri = uri.strip()
    if not uri:
        raise SettingError(setting, uri, "a local folder or s3://bucket/prefix (not empty)")
    if "://" in uri or uri.startswith("s3:"):
        scheme, _, rest = uri.partition("://")
        bucket = rest.split("/", 1)[0]
        if scheme != "s3" or not _BUCKET.match(bucket) or ".." in bucket:
            raise SettingError(setting, uri, "a local folder or s3://bucket/prefix with a valid S3 bucket name "
                                             "(3-63 lower-case letters, digits, '.', '-')")
    return uri


def parse_sources(text: str, setting: str = "CURATION_SOURCES") -> dict[str, str]:
    """Parse ``name=uri[,name=uri...]``: names per `source_name`, locations per `location`."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, uri = item.partition("=")
        if not sep or not uri.strip():
            raise SettingError(setting, item, "entries like name=/path or name=s3://bucket/prefix, comma-separated")
        name = source_name(setting, name.strip())
        if name in out:
            raise SettingError(setting, item, f"each source name once ({name!r} is repeated)")
        out[name] = location(setting, uri)
    if not out:
        raise SettingError(setting, text, "at least one name=/path or name=s3://bucket/prefix entry")
    return out


def check_source(name: str, uri: str, setting: str = "CURATION_SOURCES") -> None:
    """A source must exist: a readable local folder, or a well-formed s3:// prefix (whose listing
    the sensor and the CLI report when it fails)."""
    label = f"{setting}[{name}]"
    location(label, uri)
    if "://" in uri:
        return
    path = Path(uri)
    if not path.exists():
        raise SettingError(label, uri, "an existing folder of images (this path does not exist)")
    if not path.is_dir():
        raise SettingError(label, uri, "a folder of images (this path is not a folder)")
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as exc:
        raise SettingError(label, uri, f"a folder this process can list ({exc.strerror or exc})") from None


def _choice(allowed: Iterable[str]) -> Callable[[str, str], str]:
    allowed = tuple(allowed)

    def parse(setting: str, raw: str) -> str:
        if raw.strip() not in allowed:
            raise SettingError(setting, raw, "one of " + ", ".join(repr(a) for a in allowed))
        return raw.strip()

    return parse


def _device(setting: str, raw: str) -> str:
    if not _DEVICE.match(raw.strip()):
        raise SettingError(setting, raw, "'auto', 'cpu', 'cuda' or 'cuda:N'")
    return raw.strip()


def _text(setting: str, raw: str) -> str:
    return raw.strip()


def auto_or_count(setting: str, raw: Any) -> int | None:
    """'auto' (or empty) -> None; a whole number >= 0 -> that int; else SettingError naming `setting`."""
    text = str(raw).strip().lower() if raw is not None else ""
    if text in ("", "auto"):
        return None
    try:
        value = int(text) if not isinstance(raw, bool) else -1
    except ValueError:
        value = -1
    if value < 0:
        raise SettingError(setting, raw, "'auto' or a whole number >= 0 (0: decode in the reader threads)")
    return value


def _http_base(setting: str, raw: str) -> str:
    url = raw.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise SettingError(setting, raw, "an http:// or https:// URL (the report server's base), or unset")
    return url


def _absolute_location(setting: str, raw: str) -> str:
    uri = location(setting, raw)
    return uri if "://" in uri else os.path.abspath(uri)


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class EnvSetting:
    """One environment variable: what it means, its default (as documented), what is allowed, and
    `parse(setting, raw) -> value` (None: read by another module, listed for the reference)."""

    name: str
    meaning: str
    default: str
    allowed: str
    parse: Callable[[str, str], Any] | None = None
    default_value: Callable[[], Any] | None = None
    read_by: str = "resources/environment.py"
    empty_is_unset: bool = True  # '' means "use the default" (CURATION_FEWSHOT_URI: '' means off)


ENV_VARS: tuple[EnvSetting, ...] = (
    EnvSetting("CURATION_SOURCES", "Sources of images: `name=location` pairs (CorpusResource.sources).",
           "`demo=<repo>/data/demo_corpus`", "comma-separated `name=/folder` or `name=s3://bucket/prefix`; names "
           "are lower-case letters, digits, `_`", lambda s, raw: parse_sources(raw, s),
           lambda: {"demo": str(PROJECT_ROOT / "data" / "demo_corpus")}),
    EnvSetting("CURATION_OUTPUT_ROOT", "Where every stage writes (CorpusResource.output_root).",
           "`<repo>/data/outputs`", "a local folder or `s3://bucket/prefix`", _absolute_location,
           lambda: str(PROJECT_ROOT / "data" / "outputs")),
    EnvSetting("CURATION_SHARD_SIZE", "Files per new shard (CorpusResource.shard_size).", str(DEFAULT_SHARD_SIZE),
           "a whole number >= 1", lambda s, raw: positive_int(s, raw), lambda: DEFAULT_SHARD_SIZE),
    EnvSetting("CURATION_FEWSHOT_URI", "Few-shot examples, one sub-folder per label (ClassifierSettings.fewshot_uri).",
           "`<repo>/data/demo_fewshot`", "a local folder or `s3://bucket/prefix`; empty (`''`) disables few-shot",
           lambda s, raw: location(s, raw) if raw.strip() else "",
           lambda: str(PROJECT_ROOT / "data" / "demo_fewshot"), empty_is_unset=False),
    EnvSetting("CURATION_BACKFILL_SHARDS_PER_RUN", "Shards per run of a multi-run backfill (the assets' BackfillPolicy).",
           str(DEFAULT_BACKFILL_SHARDS_PER_RUN), "a whole number >= 1", lambda s, raw: positive_int(s, raw),
           lambda: DEFAULT_BACKFILL_SHARDS_PER_RUN),
    EnvSetting("CURATION_DEPLOYMENT", "Executor of the code location: in-process or one Kubernetes Job per step.",
           "local", "`local`, `k8s` or `celery`", _choice(DEPLOYMENTS), lambda: "local"),
    EnvSetting("CURATION_REPORT_URL", "Base URL serving `<output_root>/reports` (`make dev` starts one): the "
           "shard and corpus reports get a one-click `report_link` in the UI.", "unset (no link; `make dev`: "
           "`http://127.0.0.1:$(REPORT_PORT)`)", "an http:// or https:// URL", _http_base, lambda: None),
    EnvSetting("EMBEDDER_KIND", "Embedding model family (EmbedderResource.kind).", EMBEDDER_KINDS[1],
           "`open_clip` or `efficientnet_lite0`", _choice(EMBEDDER_KINDS), lambda: EMBEDDER_KINDS[1]),
    EnvSetting("EMBEDDER_MODEL", "Architecture (EmbedderResource.model_name).",
           f"`{EFFICIENTNET_MODEL}`; `{OPEN_CLIP_MODEL}` when EMBEDDER_KIND=open_clip",
           f"an open_clip architecture (`open_clip.list_models()`), or `{EFFICIENTNET_MODEL}`", _text, None),
    EnvSetting("EMBEDDER_PRETRAINED", "Weights (EmbedderResource.pretrained).",
           f"`packaged`; `{OPEN_CLIP_PRETRAINED}` when EMBEDDER_KIND=open_clip",
           "an open_clip tag, a local or s3:// checkpoint, `random` (benchmarks only), `packaged` (efficientnet)",
           _text, None),
    EnvSetting("EMBEDDER_DEVICE", "Device of the embedder (EmbedderResource.device).", "auto",
           "`auto`, `cpu`, `cuda`, `cuda:N`", _device, lambda: "auto"),
    EnvSetting("EMBEDDER_PRECISION", "Weights' precision (EmbedderResource.precision).", "auto",
           "`auto` (fp16 on CUDA, fp32 on CPU), `fp32`, `fp16`, `bf16`", _choice(PRECISIONS), lambda: "auto"),
    EnvSetting("EMBEDDER_BATCH_SIZE", "Images per forward pass (EmbedderResource.batch_size).", "chosen from the device",
           "a whole number >= 1", lambda s, raw: positive_int(s, raw), lambda: None),
    EnvSetting("EMBEDDER_CHUNK_SIZE", "Rows per resumable embedding chunk (EmbedderResource.chunk_size).", "2048",
           "a whole number >= 1", lambda s, raw: positive_int(s, raw), lambda: 2048),
    EnvSetting("EMBEDDER_DECODE_PROCESSES", "Processes that decode the rows nvJPEG does not take, for the "
           "embedding stage (EmbedderResource.decode_processes).", "`auto`: cpus - 2 on CUDA, 0 (threads) on the CPU",
           "`auto` or a whole number >= 0 (0: decode in the reader threads)", auto_or_count, lambda: None),
    EnvSetting("DAGSTER_HOME", "The Dagster instance folder (holds dagster.yaml); required by the `curate` CLI, "
           "and by `dagster asset materialize` / `dagster job execute` of a shard (refused without it).",
           "none (required)", "an existing folder", None, read_by="resources/environment.py (dagster_home)"),
    *(EnvSetting(name, meaning, default, allowed, read_by="orchestration/k8s.py") for name, meaning, default, allowed in (
        ("CURATION_K8S_GPU_NODE_SELECTOR", "Node selector of GPU step pods.", '`{"nvidia.com/gpu.present": "true"}`',
         "a JSON object or `k=v,k2=v2`"),
        ("CURATION_K8S_GPU_TOLERATIONS", "Tolerations of GPU step pods.", "tolerate `nvidia.com/gpu` NoSchedule",
         "a JSON list of tolerations"),
        ("CURATION_K8S_GPU_RESOURCE", "Extended resource a GPU step requests.", "`nvidia.com/gpu`", "a resource name"),
        ("CURATION_K8S_GPU_DEADLINE_S", "activeDeadlineSeconds of a GPU step.", "21600", "a whole number of seconds"),
        ("CURATION_K8S_CPU_DEADLINE_S", "activeDeadlineSeconds of a CPU step.", "14400", "a whole number of seconds"),
        ("CURATION_K8S_MAX_CONCURRENT", "Step pods at once within one run.", "8", "a whole number"),
        ("CURATION_K8S_JOB_NAMESPACE", "Namespace of step Jobs.", "the run's namespace", "a namespace"),
    )),
    *(EnvSetting(name, meaning, default, allowed, read_by="orchestration/distributed.py")
      for name, meaning, default, allowed in (
        ("CURATION_CELERY_BROKER", "Celery broker of the distributed path (CURATION_DEPLOYMENT=celery).",
         "`redis://127.0.0.1:6379/0`", "a redis:// or rediss:// URL"),
        ("CURATION_CELERY_BACKEND", "Celery result backend.", "the broker", "a redis:// or rediss:// URL"),
        ("CURATION_CELERY_VISIBILITY_TIMEOUT_S", "Seconds before an unacknowledged step is redelivered (longer "
         "than the longest step).", "7200", "a whole number of seconds"),
        ("CURATION_CODE_VERSION", "Code version workers and runs compare (a worker with another refuses steps).",
         "a hash of the project's .py files", "any string"),
    )),
    EnvSetting("CURATION_CONTENT_KERNELS", "Implementation of stage 1's content signals: the compiled numba kernels or "
               "the numpy reference (bit-identical values; an unknown value is logged and numba used).",
               "`numba` (numpy when numba cannot be imported)", "`numba` or `numpy`",
               read_by="curation/imaging/content.py"),
    EnvSetting("NUMBA_CACHE_DIR", "Where numba caches the compiled content kernels (compiled once per machine and "
               "kernels.py version, ~9 CPU-s; loading them costs ~0.5 CPU-s per worker process).",
               "the package's `__pycache__`, else `$XDG_CACHE_HOME/numba` (`/tmp/cache/numba` in the images)",
               "a writable folder", read_by="numba (curation/imaging/kernels.py)"),
    *(EnvSetting(name, meaning, "unset", allowed, read_by="s3fs (curation/storage.py)") for name, meaning, allowed in (
        ("AWS_ACCESS_KEY_ID", "S3 access key (never stored in configuration).", "a key id"),
        ("AWS_SECRET_ACCESS_KEY", "S3 secret key (never stored in configuration).", "a secret"),
        ("AWS_ENDPOINT_URL", "S3 endpoint (MinIO, moto, a regional endpoint).", "a URL"),
    )),
)
BY_NAME: dict[str, EnvSetting] = {v.name: v for v in ENV_VARS}


def raw(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The stripped raw value of a listed variable ('' when unset), for the executors that parse
    their own (orchestration/k8s.py, orchestration/distributed.py): every read of the deployment's
    environment goes through this module, and only listed variables can be read."""
    if name not in BY_NAME:
        raise KeyError(f"{name} is not in resources.environment.ENV_VARS")
    return (os.environ if environ is None else environ).get(name, "").strip()
CORPUS_VARS = ("CURATION_SOURCES", "CURATION_OUTPUT_ROOT", "CURATION_SHARD_SIZE",
               "CURATION_BACKFILL_SHARDS_PER_RUN", "CURATION_DEPLOYMENT")
EMBEDDER_VARS = ("EMBEDDER_KIND", "EMBEDDER_MODEL", "EMBEDDER_PRETRAINED", "EMBEDDER_DEVICE",
                 "EMBEDDER_PRECISION", "EMBEDDER_BATCH_SIZE", "EMBEDDER_CHUNK_SIZE", "EMBEDDER_DECODE_PROCESSES")
CLASSIFIER_VARS = ("CURATION_FEWSHOT_URI",)


# ------------------------------------------------------------------------------ reading


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None or (BY_NAME[name].empty_is_unset and not raw.strip()):
        return None
    return raw


def parser(name: str) -> Callable[[str, str], Any]:
    """The `parse(setting, raw)` of variable `name` (KeyError when another module reads it)."""
    var = BY_NAME[name]
    if var.parse is None:
        raise KeyError(f"{name} is read by {var.read_by}, not here")
    return var.parse


def read(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The parsed value of `name` (its default when unset); SettingError when it is bad."""
    parse = parser(name)
    raw = _raw(name, environ)
    if raw is None:
        var = BY_NAME[name]
        return var.default_value() if var.default_value else None
    return parse(name, raw)


def value_or_default(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """`read(name)`, or the default when the value is bad (`check` reports it when a run starts)."""
    try:
        return read(name, environ)
    except SettingError:
        var = BY_NAME[name]
        return var.default_value() if var.default_value else None


def problems(names: Iterable[str], environ: Mapping[str, str] | None = None) -> list[SettingError]:
    out = []
    for name in names:
        try:
            read(name, environ)
        except SettingError as exc:
            out.append(exc)
    return out


def check(names: Iterable[str], environ: Mapping[str, str] | None = None) -> None:
    """Raise the first bad variable of `names` as a SettingError (one line, never retried)."""
    bad = problems(names, environ)
    if bad:
        raise bad[0]


# ------------------------------------------------------------------------------ named readers


def sources(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    return read("CURATION_SOURCES", environ)


def output_root(environ: Mapping[str, str] | None = None) -> str:
    return read("CURATION_OUTPUT_ROOT", environ)


def report_url(under_reports: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The URL of `<output_root>/reports/<under_reports>` on the report server (CURATION_REPORT_URL),
    or None when no report server is configured."""
    base = read("CURATION_REPORT_URL", environ)
    return f"{base}/{under_reports.lstrip('/')}" if base else None


def shard_size(environ: Mapping[str, str] | None = None) -> int:
    return read("CURATION_SHARD_SIZE", environ)


def fewshot_uri(environ: Mapping[str, str] | None = None) -> str:
    """The few-shot examples' location; '' when CURATION_FEWSHOT_URI is set empty (few-shot off)."""
    return read("CURATION_FEWSHOT_URI", environ)


def backfill_shards_per_run(environ: Mapping[str, str] | None = None) -> int:
    """Shards per backfill run. Read when the assets are defined, so a bad value gives the default
    here (the code location loads) and fails every run through the corpus resource's check."""
    return value_or_default("CURATION_BACKFILL_SHARDS_PER_RUN", environ)


def deployment(environ: Mapping[str, str] | None = None) -> str:
    """'local' or 'k8s'. A bad value gives 'local' here (the code location loads with the in-process
    executor) and fails every run and tick through the corpus resource's check."""
    return value_or_default("CURATION_DEPLOYMENT", environ)


def embedder_settings(environ: Mapping[str, str] | None = None, strict: bool = False) -> dict[str, Any]:
    """EmbedderResource's fields from EMBEDDER_*, with EmbedderSpec.from_env's defaults
    (kind=open_clip alone means ViT-B-32 / laion2b_s34b_b79k). `strict` raises for a bad value."""
    get = read if strict else value_or_default
    kind = get("EMBEDDER_KIND", environ)
    clip = kind == "open_clip"
    out = {
        "kind": kind,
        "model_name": get("EMBEDDER_MODEL", environ) or (OPEN_CLIP_MODEL if clip else EFFICIENTNET_MODEL),
        "pretrained": get("EMBEDDER_PRETRAINED", environ) or (OPEN_CLIP_PRETRAINED if clip else "packaged"),
        "device": get("EMBEDDER_DEVICE", environ),
        "precision": get("EMBEDDER_PRECISION", environ),
        "batch_size": get("EMBEDDER_BATCH_SIZE", environ),
        "chunk_size": get("EMBEDDER_CHUNK_SIZE", environ),
        "decode_processes": get("EMBEDDER_DECODE_PROCESSES", environ),
    }
    if strict:
        check_model_name("EMBEDDER_MODEL", out["kind"], out["model_name"], deep=False)
    return out


def check_model_name(setting: str, kind: str, model_name: str, deep: bool = True) -> None:
    """efficientnet_lite0 has one model; open_clip's names are checked against
    `open_clip.list_models()` when `deep` (imports open_clip: the CLI's pre-flight, never at load)."""
    if kind == "efficientnet_lite0" and model_name != EFFICIENTNET_MODEL:
        raise SettingError(setting, model_name, f"{EFFICIENTNET_MODEL!r} (the only model of kind efficientnet_lite0)")
    if kind == "open_clip" and deep:
        import open_clip

        if model_name not in open_clip.list_models():
            raise SettingError(setting, model_name, "an open_clip architecture from open_clip.list_models(), "
                                                    f"e.g. {OPEN_CLIP_MODEL!r}")


def dagster_home(environ: Mapping[str, str] | None = None) -> str:
    """DAGSTER_HOME for the CLI: required, an existing folder."""
    raw = (os.environ if environ is None else environ).get("DAGSTER_HOME", "")
    if not raw.strip():
        raise SettingError("DAGSTER_HOME", raw, "a folder holding dagster.yaml (not set; `make demo` uses ./dagster_home)")
    if not Path(raw).is_dir():
        raise SettingError("DAGSTER_HOME", raw, "an existing folder holding dagster.yaml")
    return raw


# The `dagster` CLI commands that execute a run in this process, and how a partition is named there.
DAGSTER_RUN_COMMANDS = (("asset", "materialize"), ("job", "execute"))
_PARTITION_OPTIONS = ("--partition", "--partition-range")
_PARTITION_TAGS = ("dagster/partition", "dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def _is_dagster_cli(program: str) -> bool:
    """`program` (argv[0]) is the `dagster` console script or `python -m dagster`."""
    path = Path(program)
    return path.name.removesuffix(".exe") == "dagster" or (path.name == "__main__.py" and path.parent.name == "dagster")


def _option_values(args: Sequence[str], option: str) -> list[str]:
    """The values given to `option` (`--opt value` or `--opt=value`) in `args`."""
    out = []
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            out.append(args[i + 1])
        elif arg.startswith(option + "="):
            out.append(arg.partition("=")[2])
    return out


def ephemeral_cli_run(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> SettingError | None:
    """The error to end with when this process is the `dagster` CLI executing a run of a shard
    (`asset materialize` / `job execute` with `--partition`, `--partition-range` or a partition
    tag in `--tags`) while DAGSTER_HOME is unset; None otherwise.

    Without DAGSTER_HOME that CLI runs on a throwaway in-memory instance. Shards are dynamic
    partitions registered in the instance, so none exists there: the run can only fail, with a
    ~70-line traceback that never names DAGSTER_HOME. The code server, the webserver, `curate` and
    the tests have another argv (or DAGSTER_HOME set) and get None."""
    env = os.environ if environ is None else environ
    if env.get("DAGSTER_HOME", "").strip() or len(argv) < 3 or not _is_dagster_cli(argv[0]):
        return None
    command = (argv[1], argv[2])
    if command not in DAGSTER_RUN_COMMANDS:
        return None
    args = argv[3:]
    names_shard = any(_option_values(args, option) for option in _PARTITION_OPTIONS) or any(
        tag in tags for tags in _option_values(args, "--tags") for tag in _PARTITION_TAGS)
    if not names_shard:
        return None
    return SettingError("DAGSTER_HOME", env.get("DAGSTER_HOME", ""),
                        f"a folder holding dagster.yaml (not set, so `dagster {' '.join(command)}` would run on a "
                        "throwaway instance that knows no shards): export DAGSTER_HOME=$PWD/dagster_home "
                        "(`make setup` creates it) or use `curate run`")
