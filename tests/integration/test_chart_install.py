"""The Helm chart on the local control plane: the API server accepts it, `helm install` gives a
Ready connector pod, and the chart's ServiceAccount (acting with its own token) can do exactly
what the connector needs: pods, pods/log, services, events, and nothing on Secrets.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster import DEVCLUSTER, REPO_ROOT, api_client_with_token, nim_like_pod, wait_for

CHART = REPO_ROOT / "charts" / "nim-agent"
HELM = DEVCLUSTER / "bin" / "helm"
KUBECTL = DEVCLUSTER / "bin" / "kubectl"


def tool(binary: Path, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    """Run helm or kubectl against the local control plane; fail with its output."""
    assert binary.is_file(), f"{binary} is missing: run `make cluster-build`"
    result = subprocess.run(
        [str(binary), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"{binary.name} {' '.join(args)}:\n{result.stderr}"
    return result.stdout


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def can_i(kubeconfig: Path, sa: str, namespace: str, verb: str, resource: str, in_ns: str) -> str:
    """`kubectl auth can-i` for the ServiceAccount (the admin impersonating it)."""
    result = subprocess.run(
        [
            str(KUBECTL),
            "--kubeconfig",
            str(kubeconfig),
            "auth",
            "can-i",
            verb,
            resource,
            f"--as=system:serviceaccount:{namespace}:{sa}",
            "-n",
            in_ns,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip()


@pytest.fixture
def other_namespace(make_namespace: Callable[[str], str]) -> str:
    """A second namespace, outside a namespaced install's reach."""
    return make_namespace("other")


def status_of(error: client.ApiException) -> int:
    return int(error.status or 0)


def expect_forbidden(call: Any, *args: Any, **kw: Any) -> None:
    with pytest.raises(client.ApiException) as raised:
        call(*args, **kw)
    assert status_of(raised.value) == 403, raised.value


@pytest.mark.parametrize("scope", ["cluster", "namespaces"])
def test_rendered_chart_is_accepted_by_the_api_server(
    kubeconfig_path: Path, namespace: str, tmp_path: Path, scope: str
) -> None:
    values: dict[str, Any] = {"replicaCount": 2}  # with a PodDisruptionBudget
    if scope == "namespaces":
        values["rbac"] = {"scope": "namespaces", "namespaces": [namespace]}
    manifest = tool(
        HELM,
        kubeconfig_path,
        "template",
        "nim-agent",
        str(CHART),
        "--namespace",
        namespace,
        "--values",
        values_file(tmp_path, values),
    )
    out = tool(KUBECTL, kubeconfig_path, "apply", "--dry-run=server", "-f", "-", stdin=manifest)
    kinds = {line.split("/")[0] for line in out.splitlines()}
    expected = {"serviceaccount", "configmap", "service", "deployment.apps"}
    expected |= {"poddisruptionbudget.policy"}
    # The cleanup Lease's Role and RoleBinding, in both scopes.
    expected |= {"role.rbac.authorization.k8s.io", "rolebinding.rbac.authorization.k8s.io"}
    if scope == "cluster":
        expected |= {"clusterrole.rbac.authorization.k8s.io"}
        expected |= {"clusterrolebinding.rbac.authorization.k8s.io"}
    assert kinds == expected, out


def test_helm_install_gives_a_ready_connector_whose_account_cannot_read_secrets(
    kubeconfig_path: Path,
    api_client: client.ApiClient,
    core_v1: client.CoreV1Api,
    namespace: str,
    other_namespace: str,
    tmp_path: Path,
) -> None:
    values = {"rbac": {"scope": "namespaces", "namespaces": [namespace]}}
    notes = tool(
        HELM,
        kubeconfig_path,
        "install",
        "nim-agent",
        str(CHART),
        "--namespace",
        namespace,
        "--values",
        values_file(tmp_path, values),
        "--wait",
        "--timeout",
        "120s",
    )
    assert f"dns:///nim-agent.{namespace}.svc.cluster.local:8000" in notes

    # The connector's pod is Ready (the local control plane simulates its kubelet).
    selector = "app.kubernetes.io/instance=nim-agent,app.kubernetes.io/name=nim-agent"

    def ready_pod() -> client.V1Pod | None:
        for pod in core_v1.list_namespaced_pod(namespace, label_selector=selector).items:
            conditions = {c.type: c.status for c in pod.status.conditions or []}
            if conditions.get("Ready") == "True":
                return pod
        return None

    pod = wait_for(ready_pod, timeout=60, what="the connector pod Ready")
    assert pod.spec.service_account_name == "nim-agent"
    assert pod.spec.security_context.run_as_user == 1000

    # `kubectl auth can-i`, as in NOTES.txt.
    assert can_i(kubeconfig_path, "nim-agent", namespace, "create", "pods", namespace) == "yes"
    assert can_i(kubeconfig_path, "nim-agent", namespace, "get", "pods/log", namespace) == "yes"
    assert can_i(kubeconfig_path, "nim-agent", namespace, "get", "secrets", namespace) == "no"
    assert can_i(kubeconfig_path, "nim-agent", namespace, "list", "secrets", namespace) == "no"
    assert can_i(kubeconfig_path, "nim-agent", namespace, "create", "pods", other_namespace) == "no"

    # And with the ServiceAccount's own token, not the admin's credentials.
    token = core_v1.create_namespaced_service_account_token(
        "nim-agent", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    as_connector = api_client_with_token(api_client, token)
    try:
        sa_core = client.CoreV1Api(as_connector)
        pod_name = f"nim-rbac-{uuid.uuid4().hex[:6]}"
        sa_core.create_namespaced_pod(
            namespace,
            nim_like_pod(
                pod_name, gpu=0, init_container=False, labels={"nim-agent.dev/test": "rbac"}
            ),
        )
        sa_core.patch_namespaced_pod(
            pod_name, namespace, {"metadata": {"annotations": {"nim-agent.dev/test": "patched"}}}
        )
        listed = sa_core.list_namespaced_pod(namespace, label_selector="nim-agent.dev/test=rbac")
        assert [p.metadata.name for p in listed.items] == [pod_name]
        sa_core.create_namespaced_service(
            namespace,
            {
                "metadata": {"name": pod_name},
                "spec": {"selector": {"app": pod_name}, "ports": [{"port": 8000}]},
            },
        )
        sa_core.read_namespaced_service(pod_name, namespace)
        sa_core.delete_namespaced_service(pod_name, namespace)
        sa_core.list_namespaced_event(namespace)
        sa_core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=0)

        core_v1.create_namespaced_secret(
            namespace, {"metadata": {"name": "nim-secrets"}, "stringData": {"api_key": "x"}}
        )
        expect_forbidden(sa_core.read_namespaced_secret, "nim-secrets", namespace)
        expect_forbidden(sa_core.list_namespaced_secret, namespace)
        expect_forbidden(sa_core.list_pod_for_all_namespaces)
        expect_forbidden(sa_core.list_namespaced_pod, other_namespace)
        expect_forbidden(
            sa_core.create_namespaced_config_map, namespace, {"metadata": {"name": "x"}}
        )
    finally:
        as_connector.close()
        tool(HELM, kubeconfig_path, "uninstall", "nim-agent", "--namespace", namespace)


def test_cluster_scope_lets_the_connector_watch_every_namespace_but_not_secrets(
    kubeconfig_path: Path,
    api_client: client.ApiClient,
    core_v1: client.CoreV1Api,
    namespace: str,
    other_namespace: str,
) -> None:
    # Cluster-scoped objects outlive the test namespace: uninstall removes them.
    tool(HELM, kubeconfig_path, "install", "nim-agent", str(CHART), "--namespace", namespace)
    try:
        rbac = client.RbacAuthorizationV1Api(api_client)
        role = rbac.read_cluster_role(f"{namespace}-nim-agent")
        assert all("secrets" not in (rule.resources or []) for rule in role.rules)
        token = core_v1.create_namespaced_service_account_token(
            "nim-agent", namespace, {"spec": {"expirationSeconds": 600}}
        ).status.token
        as_connector = api_client_with_token(api_client, token)
        try:
            sa_core = client.CoreV1Api(as_connector)
            sa_core.list_pod_for_all_namespaces(label_selector="app.kubernetes.io/managed-by=x")
            sa_core.list_namespaced_event(other_namespace)
            expect_forbidden(sa_core.list_secret_for_all_namespaces)
            expect_forbidden(sa_core.read_namespaced_secret, "anything", other_namespace)
            expect_forbidden(sa_core.list_node)
        finally:
            as_connector.close()
    finally:
        tool(HELM, kubeconfig_path, "uninstall", "nim-agent", "--namespace", namespace)
    with pytest.raises(client.ApiException) as gone:
        client.RbacAuthorizationV1Api(api_client).read_cluster_role(f"{namespace}-nim-agent")
    assert status_of(gone.value) == 404
