"""The seed's usage example runs with its imports changed to nim_agent and its task's resources
given as flytekit `Resources` (the server is a native sidecar: no `containers[0]` to copy)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "seed_example.py"
SEED = ROOT.parent / "shared" / "seed" / "nim-plugin-summary.md"
CHANGES = {
    "from flytekitplugins.inference.nim.serve import NIM, NIMSecrets": (
        "from nim_agent import NIM, NIMSecrets"
    ),
    "from flytekitplugins.inference.sidecar_template import PodTemplate": (
        "from nim_agent import PodTemplate"
    ),
    "from flytekit import task, workflow": "from flytekit import Resources, task, workflow",
    "    requests=nim_config.pod_template.pod_spec.containers[0].resources.requests,": (
        '    requests=Resources(cpu="1", mem="1Gi"),  # the task\'s own container'
    ),
    "    limits=nim_config.pod_template.pod_spec.containers[0].resources.limits,": (
        '    limits=Resources(cpu="1", mem="1Gi"),'
    ),
}


def code_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_the_seed_example_prints_the_pod_spec_and_the_base_url() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert "Base URL for NIM service: http://localhost:8000" in out
    spec = out.split("Generated Pod Spec: ", 1)[1]
    assert "'name': 'nim'" in spec
    assert "'restart_policy': 'Always'" in spec  # the server is a native sidecar
    assert "'containers': []" in spec
    assert "'failure_threshold': 100" in spec
    assert "'mount_path': '/opt/nim/lora_adapters'" in spec
    assert "'medium': 'Memory'" in spec


@pytest.mark.skipif(not SEED.exists(), reason="shared/seed is not beside this checkout")
def test_the_example_is_the_seed_code_with_only_imports_and_resources_changed() -> None:
    seed = SEED.read_text()
    block = seed.split("### Usage Example", 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S)
    assert code is not None
    expected = code.group(1)
    for old, new in CHANGES.items():
        assert old in expected
        expected = expected.replace(old, new)
    assert code_lines(EXAMPLE.read_text()) == code_lines(expected)


def test_the_seed_example_task_serializes_for_registration_with_the_native_sidecar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib
    from collections import OrderedDict

    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    module = importlib.import_module(EXAMPLE.stem)
    settings = SerializationSettings(ImageConfig.auto_default_image())
    template = get_serializable(OrderedDict(), settings, module.deploy_nim_inference_service)
    pod_spec = template.template.k8s_pod.pod_spec
    primary = pod_spec["containers"][0]
    assert primary["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert [c["name"] for c in pod_spec["initContainers"]] == ["lora-downloader", "nim"]
