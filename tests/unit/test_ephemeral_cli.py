"""`dagster asset materialize` / `dagster job execute` of a shard without DAGSTER_HOME is told apart
from every other process that loads the definitions (resources.environment.ephemeral_cli_run)."""

from __future__ import annotations

import pytest

from orchestration.definitions import refuse_ephemeral_cli_run
from resources.environment import SettingError, ephemeral_cli_run

DAGSTER = "/venv/bin/dagster"
MATERIALIZE = [DAGSTER, "asset", "materialize", "-m", "orchestration.definitions", "--select", "raw_inventory"]
EXECUTE = [DAGSTER, "job", "execute", "-m", "orchestration.definitions", "-j", "curate_shard"]


@pytest.mark.parametrize("argv", [
    [*MATERIALIZE, "--partition", "demo-000001"],
    [*MATERIALIZE, "--partition=demo-000001"],
    [*MATERIALIZE, "--partition-range", "demo-000001...demo-000003"],
    [*EXECUTE, "--tags", '{"dagster/partition": "demo-000001"}'],
    [*EXECUTE, '--tags={"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "b"}'],
    ["/usr/lib/python3/site-packages/dagster/__main__.py", "asset", "materialize", "--partition", "x"],
    ["C:/venv/Scripts/dagster.exe", "job", "execute", "--tags", '{"dagster/partition": "x"}'],
], ids=["partition", "partition=", "partition-range", "job-tags", "job-range-tags", "python-m", "exe"])
def test_a_shard_run_without_dagster_home_is_one_line_naming_it(argv):
    err = ephemeral_cli_run(argv, environ={})
    assert isinstance(err, SettingError) and err.setting == "DAGSTER_HOME"
    line = str(err)
    assert "\n" not in line and line.startswith("DAGSTER_HOME='': a folder holding dagster.yaml (not set")
    assert f"`dagster {argv[1]} {argv[2]}`" in line
    assert "export DAGSTER_HOME=$PWD/dagster_home" in line and "`curate run`" in line
    # the same command with the instance set runs as Dagster runs it
    assert ephemeral_cli_run(argv, environ={"DAGSTER_HOME": "/srv/dagster_home"}) is None
    assert ephemeral_cli_run(argv, environ={"DAGSTER_HOME": "  "}) is not None  # blank is unset


@pytest.mark.parametrize("argv", [
    MATERIALIZE,  # no shard named: Dagster's own error (not an instance problem)
    [*EXECUTE, "--tags", '{"team": "curation"}'],
    [DAGSTER, "sensor", "preview", "-m", "orchestration.definitions", "new_files_sensor", "--partition", "x"],
    [DAGSTER, "api", "grpc", "-m", "orchestration.definitions"],  # the code server
    [DAGSTER, "code-server", "start", "-m", "orchestration.definitions"],
    ["/venv/bin/dagster-webserver", "-w", "workspace.yaml"],
    ["/venv/bin/curate", "run", "--partition", "x"],
    ["/venv/bin/python", "-m", "pytest", "asset", "materialize", "--partition", "x"],
    [DAGSTER],
    [],
], ids=["no-partition", "other-tags", "sensor-preview", "code-server", "code-server-start", "webserver", "curate",
        "pytest", "bare", "empty"])
def test_every_other_process_is_left_alone(argv):
    assert ephemeral_cli_run(argv, environ={}) is None


def test_refusal_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        refuse_ephemeral_cli_run([*MATERIALIZE, "--partition", "demo-000001"], environ={})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: DAGSTER_HOME=")
    refuse_ephemeral_cli_run([DAGSTER, "api", "grpc"], environ={})  # returns: nothing to refuse
    refuse_ephemeral_cli_run([*MATERIALIZE, "--partition", "x"], environ={"DAGSTER_HOME": "/srv/home"})
    assert capsys.readouterr().err == ""
