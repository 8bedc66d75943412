"""The public names of nim_agent, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nim_agent

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = [
    "NIM",
    "ConfigError",
    "NIMEndpoint",
    "NIMSecrets",
    "NIMTask",
    "NIMTeardownTask",
    "PodTemplate",
    "Problem",
    "Reuse",
    "__version__",
]


def test_all_lists_exactly_the_public_names() -> None:
    assert sorted(nim_agent.__all__) == sorted(EXPECTED)


def test_every_public_name_resolves_to_what_it_names() -> None:
    import tomllib

    import flytekit

    from nim_agent import checks, config, contract, task

    resolved = {name: getattr(nim_agent, name) for name in nim_agent.__all__}
    assert resolved == {
        "NIM": config.NIM,
        "NIMSecrets": config.NIMSecrets,
        "NIMEndpoint": contract.NIMEndpoint,
        "ConfigError": checks.ConfigError,
        "Problem": checks.Problem,
        "Reuse": config.Reuse,
        "NIMTask": task.NIMTask,
        "NIMTeardownTask": task.NIMTeardownTask,
        "PodTemplate": flytekit.PodTemplate,
        "__version__": tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"],
    }
    assert config.ConfigError is checks.ConfigError  # the config module's own name for it
    assert issubclass(nim_agent.ConfigError, ValueError)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        nim_agent.NotAThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NotAThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_importing_nim_agent_loads_no_flytekit_kubernetes_grpc_or_connector() -> None:
    loaded = modules_after("import nim_agent")
    heavy = {"flytekit", "kubernetes", "grpc", "nim_agent.connector", "nim_agent.task", "yaml"}
    assert loaded & heavy == set()


def test_importing_nimtask_loads_neither_the_kubernetes_client_nor_its_asyncio_stack() -> None:
    # flytekit loads plugin entry points (so nim_agent.connector) on import; that module must
    # keep the Kubernetes client out of its import time for user code to stay light.
    loaded = modules_after("from nim_agent import NIMTask")
    assert "nim_agent.task" in loaded
    assert {m for m in loaded if m == "kubernetes" or m.startswith("kubernetes.")} == set()
