"""The import contracts of `.importlinter` (what `make lint` checks): kept by the tree, broken by
a violating import.

Each violation is tried on a copy of the package, so the check runs exactly as `make lint` does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tree / ".importlinter")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "nim_agent", tmp_path / "nim_agent")
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def add_import(tree: Path, module: str, statement: str) -> None:
    path = tree / "nim_agent" / f"{module}.py"
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    path.write_text(text.replace(anchor, f"{anchor}\n{statement}  # violation\n", 1))


def test_the_package_keeps_every_import_contract() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "statement", "broken"),
    [
        pytest.param(
            "settings",
            "import nim_agent.config",
            "Layers",
            id="settings importing config (the old config-render-settings cycle)",
        ),
        pytest.param(
            "render",
            "import nim_agent.config",
            "No import cycles",
            id="render importing config at run time (config's pod_template imports render)",
        ),
        pytest.param("status", "import nim_agent.kube", "Layers", id="a pure rule talking to kube"),
        pytest.param(
            "contract", "import nim_agent.render", "Layers", id="the contract importing up"
        ),
        pytest.param(
            "reaper", "import nim_agent.watch", "Layers", id="reaper and watch are independent"
        ),
        pytest.param(
            "watch",
            "import kubernetes.aio",
            "Only kube imports the Kubernetes client",
            id="the Kubernetes client outside kube",
        ),
        pytest.param("reaper", "import aiohttp", "Only kube talks HTTP", id="aiohttp outside kube"),
        pytest.param(
            "render",
            "import flytekit",
            "flytekit only in the modules that adapt to it",
            id="flytekit in render",
        ),
        pytest.param(
            "podfacts", "import asyncio", "The pure core does no I/O", id="asyncio in the core"
        ),
    ],
)
def test_a_violating_import_fails_the_lint(
    tmp_path: Path, module: str, statement: str, broken: str
) -> None:
    tree = copy_of_the_package(tmp_path)
    add_import(tree, module, statement)
    done = lint_imports(tree)
    assert done.returncode != 0, done.stdout
    report = " ".join(done.stdout.split())  # contract names wrap in the report
    verdict = re.search(re.escape(broken) + r".*?\b(KEPT|BROKEN)\b", report)
    assert verdict is not None and verdict[1] == "BROKEN", done.stdout
