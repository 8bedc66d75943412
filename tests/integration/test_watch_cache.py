"""PodCache and Kube against the real API server: list, watch, lookups, error mapping."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nim_agent.contract import OWNED_BY_US
from nim_agent.kube import AlreadyExists, Invalid, Kube, NotFound
from nim_agent.runtime import supervised
from nim_agent.watch import PodCache


def pod_body(name: str, *, ours: bool = True) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "nim-agent"} if ours else {"app": "other"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "nim", "image": "nvcr.io/nim/x:1"}],
            "nodeSelector": {"type": "kwok"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    }


@pytest.fixture
async def kube(kubeconfig_path: Path) -> Any:
    k = await Kube.connect(str(kubeconfig_path))
    yield k
    await k.close()


async def test_the_cache_lists_existing_pods_and_follows_new_and_deleted_ones(
    kube: Kube, namespace: str, core_v1: client.CoreV1Api
) -> None:
    core_v1.create_namespaced_pod(namespace, pod_body("before"))
    core_v1.create_namespaced_pod(namespace, pod_body("not-ours", ours=False))

    async def same() -> Kube:
        return kube

    cache = PodCache(same, label_selector=OWNED_BY_US, namespaces=[namespace])
    cache.start(supervised)
    try:
        async with asyncio.timeout(20):
            await cache.wait_synced()
        assert cache.lookup(namespace, "before")[1] is not None
        assert cache.lookup(namespace, "not-ours") == (True, None)
        assert cache.lookup("some-other-namespace", "before") == (False, None)

        await kube.create_pod(namespace, pod_body("after"))
        async with asyncio.timeout(20):
            await cache.wait_for(namespace, "after", lambda p: p is not None)

        await kube.delete_pod(namespace, "before", grace_seconds=0)
        async with asyncio.timeout(30):
            await cache.wait_for(namespace, "before", lambda p: p is None)
        assert cache.fresh(namespace)
    finally:
        await cache.stop()


async def test_kube_maps_api_errors_to_its_own_types(kube: Kube, namespace: str) -> None:
    await kube.create_pod(namespace, pod_body("dup"))
    with pytest.raises(AlreadyExists):
        await kube.create_pod(namespace, pod_body("dup"))
    bad = pod_body("Bad_Name")
    with pytest.raises(Invalid, match="Bad_Name"):
        await kube.create_pod(namespace, bad)
    with pytest.raises(NotFound):
        await kube.create_pod("no-such-namespace-xyz", pod_body("x"))
    assert await kube.get_pod(namespace, "missing") is None
    assert await kube.delete_pod(namespace, "missing") is False
    assert await kube.delete_service(namespace, "missing") is False


async def test_list_pods_follows_continue_tokens(kube: Kube, namespace: str) -> None:
    for i in range(7):
        await kube.create_pod(namespace, pod_body(f"p{i}"))
    pods, resource_version = await kube.list_pods(namespace, label_selector=OWNED_BY_US, limit=3)
    assert sorted(p["metadata"]["name"] for p in pods) == [f"p{i}" for i in range(7)]
    assert resource_version
