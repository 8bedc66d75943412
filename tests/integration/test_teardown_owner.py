"""A teardown removes only deployments of its own Flyte project and domain, unless forced.

`NIMConnector.teardown` (what the ``nim-teardown`` task and ``nim-agent teardown`` call)
against the real API server, with pods labelled as nim-agent labels a deployment of a Flyte
execution (project, domain).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nim_agent.connector import NIMConnector
from nim_agent.contract import LABEL_MANAGED_BY, LABEL_PREFIX, MANAGED_BY
from nim_agent.kube import Kube


@pytest.fixture
async def connector(kubeconfig_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    kube = await Kube.connect(str(kubeconfig_path))
    made = NIMConnector()

    async def this_kube() -> Kube:
        return kube

    monkeypatch.setattr(made, "kube", this_kube)
    yield made
    await kube.close()


def deployment(core_v1: client.CoreV1Api, namespace: str, name: str, project: str) -> None:
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PREFIX + "project": project,
        LABEL_PREFIX + "domain": "dev",
    }
    body = {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "nim", "image": "nvcr.io/nim/x:1"}],
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        },
    }
    core_v1.create_namespaced_pod(namespace, body)


def exists(core_v1: client.CoreV1Api, namespace: str, name: str) -> bool:
    return any(p.metadata.name == name for p in core_v1.list_namespaced_pod(namespace).items)


async def test_a_teardown_of_another_projects_deployment_is_refused_unless_forced(
    connector: NIMConnector, core_v1: client.CoreV1Api, namespace: str
) -> None:
    deployment(core_v1, namespace, "nim-theirs", project="flytesnacks")
    deployment(core_v1, namespace, "nim-mine", project="evals")
    mine = ("evals", "dev")

    with pytest.raises(PermissionError) as refused:
        await connector.teardown(namespace, "nim-theirs", owner=mine)
    assert str(refused.value) == (
        f"NIM deployment {namespace}/nim-theirs belongs to flytesnacks/dev, not to "
        "evals/dev; not deleting it (NIMTeardownTask(force=True) overrides this)"
    )
    with pytest.raises(PermissionError, match="belongs to flytesnacks/dev, not to a local"):
        await connector.teardown(namespace, "nim-theirs", owner=("", ""))
    assert exists(core_v1, namespace, "nim-theirs")

    said = await connector.teardown(namespace, "nim-mine", owner=mine)
    assert said == f"deleted NIM deployment {namespace}/nim-mine"
    said = await connector.teardown(namespace, "nim-theirs", owner=mine, force=True)
    assert said == f"deleted NIM deployment {namespace}/nim-theirs"
    # `nim-agent teardown NAME` (no owner: the operator's own kubeconfig decides) is not refused.
    deployment(core_v1, namespace, "nim-any", project="flytesnacks")
    assert "deleted" in await connector.teardown(namespace, "nim-any")
