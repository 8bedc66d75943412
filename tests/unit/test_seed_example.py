"""The seed's usage example runs with only its imports changed to nim_agent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "seed_example.py"
SEED = ROOT.parent / "shared" / "seed" / "nim-plugin-summary.md"
IMPORTS = {
    "from flytekitplugins.inference.nim.serve import NIM, NIMSecrets": (
        "from nim_agent import NIM, NIMSecrets"
    ),
    "from flytekitplugins.inference.sidecar_template import PodTemplate": (
        "from nim_agent import PodTemplate"
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
    assert "'failure_threshold': 100" in spec
    assert "'mount_path': '/opt/nim/lora_adapters'" in spec
    assert "'medium': 'Memory'" in spec


@pytest.mark.skipif(not SEED.exists(), reason="shared/seed is not beside this checkout")
def test_the_example_is_the_seed_code_with_only_the_imports_changed() -> None:
    seed = SEED.read_text()
    block = seed.split("### Usage Example", 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S)
    assert code is not None
    expected = code.group(1)
    for old, new in IMPORTS.items():
        assert old in expected
        expected = expected.replace(old, new)
    assert code_lines(EXAMPLE.read_text()) == code_lines(expected)
