"""`nim-agent render`: the manifests on stdout, or exit 2 with one line per problem."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nim_agent.cli import main
from nim_agent.config import NIM
from nim_agent.render import DeploymentIdentity, render
from nim_agent.settings import ConnectorSettings

GOLDEN = Path(__file__).parent / "golden"
MINIMAL = str(GOLDEN / "minimal.config.yaml")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(autouse=True)
def no_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("NIM_AGENT_"):
            monkeypatch.delenv(var)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def write(tmp_path: Path, data: Any, name: str = "nim.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_render_prints_the_pod_then_the_service(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "render", "-f", MINIMAL)
    assert (status, err) == (0, "")
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Pod", "Service"]
    assert docs[0]["metadata"]["namespace"] == "default"
    assert docs[0]["metadata"]["name"].startswith("nim-minimal-config-")


def test_render_prints_exactly_what_render_returns(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "render", "-f", MINIMAL, "--name", "llama", "--namespace", "ns")
    assert status == 0
    nim = NIM.from_dict(yaml.safe_load(Path(MINIMAL).read_text()))
    identity = DeploymentIdentity.for_local("llama", "ns", nonce="")
    assert list(yaml.safe_load_all(out)) == render(nim, identity, ConnectorSettings())


@pytest.mark.parametrize(
    "name", ["Examples.NIM_Workflow.Llama3_8B", "x" * 300, "UPPER", "...", "日本語", "9lives"]
)
def test_any_task_name_gives_dns_safe_object_names(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    status, out, _ = run(capsys, "render", "-f", MINIMAL, "--name", name)
    assert status == 0
    for doc in yaml.safe_load_all(out):
        assert DNS_1035.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 63


def test_namespace_sets_where_the_objects_go_and_the_endpoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "render", "-f", MINIMAL, "--name", "t", "--namespace", "team-a")
    pod, service = yaml.safe_load_all(out)
    assert pod["metadata"]["namespace"] == service["metadata"]["namespace"] == "team-a"
    endpoint = pod["metadata"]["annotations"]["nim-agent.dev/endpoint"]
    assert endpoint == f"http://{service['metadata']['name']}.team-a.svc.cluster.local:8000"


def test_a_json_config_file_works(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = yaml.safe_load(Path(MINIMAL).read_text())
    path = write(tmp_path, json.dumps({**data, "gpu": 2}), "nim.json")
    status, out, _ = run(capsys, "render", "-f", path)
    assert status == 0
    pod = next(yaml.safe_load_all(out))
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def assert_invalid(status: int, out: str, err: str, fields: list[str]) -> None:
    assert status == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == len(fields), err
    for line, field in zip(lines, fields, strict=True):
        assert f"{field}: " in line, (field, line)


def test_an_invalid_config_exits_2_with_one_line_per_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "secrets:\n  ngc_image_secret: NGC\n  ngc_secret_key: k\n  secrets_prefix: ''\n"
        "mem: 20GB\nport: 0\nmemory: 1Gi\n",
    )
    status, out, err = run(capsys, "render", "-f", path)
    assert_invalid(status, out, err, ["memory", "secrets.ngc_image_secret", "port", "mem"])
    assert '"20Gi"' in err and "did you mean 'mem'" in err


def test_a_missing_file_exits_2_without_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, err = run(capsys, "render", "-f", str(tmp_path / "absent.yaml"))
    assert_invalid(status, out, err, ["absent.yaml"])
    assert "cannot read" in err


@pytest.mark.parametrize(
    ("text", "word"),
    [("secrets: [\n", "not valid YAML"), ("- a\n- b\n", "not a mapping"), ("", "not a mapping")],
)
def test_a_file_that_is_not_a_config_mapping_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, word: str
) -> None:
    status, out, err = run(capsys, "render", "-f", write(tmp_path, text))
    assert status == 2 and out == "" and "Traceback" not in err
    assert word in err and len(err.strip().splitlines()) == 1


def test_a_bad_namespace_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "render", "-f", MINIMAL, "--namespace", "Team_A")
    assert_invalid(status, out, err, ["--namespace"])


def test_a_namespace_the_connector_does_not_allow_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = yaml.safe_load(Path(MINIMAL).read_text())
    path = write(tmp_path, {**data, "namespace": "kube-system"})
    status, out, err = run(capsys, "render", "-f", path, "--namespace", "team-a")
    assert_invalid(status, out, err, ["namespace"])


def test_the_namespace_is_allowed_when_the_operator_allows_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIM_AGENT_ALLOWED_NAMESPACES", "nim-shared")
    data = yaml.safe_load(Path(MINIMAL).read_text())
    path = write(tmp_path, {**data, "namespace": "nim-shared"})
    status, out, _ = run(capsys, "render", "-f", path, "--namespace", "team-a")
    assert status == 0
    assert next(yaml.safe_load_all(out))["metadata"]["namespace"] == "nim-shared"


def test_bad_operator_settings_exit_2_naming_the_env_var(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIM_AGENT_DEFAULT_TTL", "two hours")
    status, out, err = run(capsys, "render", "-f", MINIMAL)
    assert_invalid(status, out, err, ["NIM_AGENT_DEFAULT_TTL"])


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys)
    assert status == 2 and "render" in err


def test_a_missing_file_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["render"])
    assert caught.value.code == 2
    assert "-f/--file" in capsys.readouterr().err


def test_the_console_script_runs_and_reads_stdin() -> None:
    script = Path(sys.executable).parent / "nim-agent"
    done = subprocess.run(
        [str(script), "render", "-f", "-", "--name", "stdin-task"],
        input=Path(MINIMAL).read_text(),
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("NIM_AGENT_")},
    )
    assert done.returncode == 0, done.stderr
    assert "kind: Pod" in done.stdout and "nim-stdin-task-" in done.stdout


def test_render_does_not_import_flytekit_or_the_kubernetes_client() -> None:
    code = (
        "import sys\nfrom nim_agent.cli import main\n"
        f"main(['render', '-f', {MINIMAL!r}])\n"
        "print([m for m in ('flytekit', 'kubernetes') if m in sys.modules], file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "[]"


def test_render_shows_adapters_given_as_task_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    lora = str(Path(MINIMAL).parent / "workflow-adapters.config.yaml")
    status, out, err = run(
        capsys, "render", "-f", lora, "--adapter", "support=s3://b/raw/o0", "--adapter", "m=gs://x"
    )
    assert (status, err) == (0, "")
    pod = next(yaml.safe_load_all(out))
    init = {c["name"]: c for c in pod["spec"]["initContainers"]}
    env = {v["name"]: v.get("value") for v in init["lora-inputs"]["env"]}
    assert env["NIM_AGENT_ADAPTER_URIS"] == '{"support": "s3://b/raw/o0", "m": "gs://x"}'
    adapters = pod["metadata"]["annotations"]["nim-agent.dev/adapters"]
    assert adapters == '["alpaca-lora-7b","support","m"]'


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--adapter", "support"], "--adapter: 'support' is not NAME=URI"),
        (["--adapter", "bad name=s3://b/x"], "adapters.bad name: "),
        (["--adapter", "support=/home/me/lora"], "is a path on the machine"),
    ],
)
def test_a_bad_adapter_argument_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    lora = str(Path(MINIMAL).parent / "workflow-adapters.config.yaml")
    status, _, err = run(capsys, "render", "-f", lora, *args)
    assert status == 2 and fragment in err and "Traceback" not in err
