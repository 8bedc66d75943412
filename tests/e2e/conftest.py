"""Fixtures of the end-to-end suite: the tools it drives (helm, uv, flytepropeller), found or
failed loudly; the real node with the connector image built (`make image`), and namespaces with
the Secrets a NIM task names. (The cluster, namespace and connector fixtures are
tests/conftest.py's.)

A missing tool fails the tests that need it, with what to run to get it; it never skips them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from tests.realnode import ImagesEnv, RealNodeUnavailable, ensure_real_node

REPO_ROOT = Path(__file__).resolve().parents[2]


def _devcluster_versions() -> dict[str, str]:
    """The pinned tool versions of devcluster/build.sh (`--print-versions`: K=V pairs)."""
    out = subprocess.run(
        [str(REPO_ROOT / "devcluster" / "build.sh"), "--print-versions"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def helm_candidates() -> list[Path]:
    """Where helm may be, best first: $NIM_AGENT_HELM, the devcluster links, the build cache."""
    found = [Path(p) for p in [os.environ.get("NIM_AGENT_HELM")] if p]
    found.append(REPO_ROOT / ".devcluster" / "bin" / "helm")
    cache = Path(os.environ.get("NIM_AGENT_CACHE", Path.home() / ".cache" / "nim-agent"))
    found.append(cache / "bin" / "current" / "helm")
    version = _devcluster_versions().get("HELM_VERSION")
    if version:
        found.append(cache / "bin" / f"helm-{version}" / "helm")
    return found


def first_executable(name: str, candidates: list[Path], how_to_get_it: str) -> Path:
    """The first of ``candidates`` that is an executable file; else the test fails saying where
    it looked and how to get one."""
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    looked = ", ".join(str(p) for p in candidates)
    pytest.fail(f"{name} not found (looked at: {looked}); {how_to_get_it}", pytrace=False)


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary the local control plane is built with (devcluster/build.sh)."""
    return first_executable(
        "helm", helm_candidates(), "build it with `make cluster-build` (devcluster/build.sh)"
    )


@pytest.fixture(scope="session")
def uv() -> Path:
    """The uv the Makefile installs (`make setup`), else one on PATH."""
    pinned = REPO_ROOT / ".tools" / "uv" / "bin" / "uv"
    if pinned.is_file():
        return pinned
    on_path = shutil.which("uv")
    if on_path:
        return Path(on_path)
    pytest.fail(f"uv not found at {pinned} nor on PATH; run `make setup`", pytrace=False)


@pytest.fixture(scope="session")
def flytepropeller() -> Path:
    """The flytepropeller binary of the local Flyte (devcluster/propeller/build.sh)."""
    candidates = [REPO_ROOT / ".devcluster" / "bin" / "flytepropeller"]
    bin_dir = subprocess.run(
        [str(REPO_ROOT / "devcluster" / "propeller" / "build.sh"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    candidates.append(Path(bin_dir) / "flytepropeller")
    return first_executable("flytepropeller", candidates, "build it with `make propeller-build`")


@pytest.fixture(scope="session")
def real_node_images(kubeconfig_path: Path) -> ImagesEnv:
    """``.devcluster/images.env`` with the real node running and the connector image built
    (``make image``, which ``make e2e`` runs); fails saying which is missing."""
    try:
        env = ensure_real_node()
    except RealNodeUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    if "NIM_AGENT_IMAGE" not in env.values:
        pytest.fail(
            "NIM_AGENT_IMAGE is not in .devcluster/images.env: build the connector image with "
            "`make image` (`make e2e` does)",
            pytrace=False,
        )
    return env


@pytest.fixture
def nim_namespace(namespace: str, core_v1: client.CoreV1Api) -> str:
    """A fresh namespace with the Secrets a NIM task names (tests.chart_release)."""
    from tests.chart_release import create_nim_secrets

    create_nim_secrets(core_v1, namespace)
    return namespace
