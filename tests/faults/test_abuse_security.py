"""Security: what the connector's pods may do, where they may go, what a user may claim, what the
connector may see, and which permissions it needs.

- Rendered pods are admitted in a namespace enforcing Pod Security ``restricted`` (and that
  namespace does refuse a pod that is not).
- A config cannot place a deployment in a namespace the connector's settings do not allow.
- A user's labels and annotations cannot overwrite nim-agent's ownership labels, identity or ttl.
- A known secret value, in the NGC Secret the pods reference, never appears in the connector's
  log, in a GetTask answer (message, custom_info, log links) or in its metrics.
- The connector works end to end with the chart's RBAC alone, for both scopes (namespaced Role,
  ClusterRole): a kubeconfig holding only the chart ServiceAccount's token, and the settings file
  of the chart's ConfigMap.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from nim_agent import NIMTask, Reuse
from nim_agent.config import ConfigError
from nim_agent.render import DeploymentIdentity, ExecutionIdentity, render
from nim_agent.settings import ConnectorSettings
from tests.cluster import DEVCLUSTER, REPO_ROOT, our_pods, our_services, running_pods, wait_for
from tests.configs import simulated_nim as nim
from tests.connector_server import (
    ConnectorServer,
    create_request,
    delete_request,
    exec_name,
    execution,
    task_template,
)
from tests.faults.support import (
    COUNTS,
    TE,
    Deployments,
    get,
    initializing,
    small,
    template,
    wait_phases,
)

pytestmark = pytest.mark.leak_audit  # every test here: nothing of ours left behind

SETTINGS = {"NIM_AGENT_REAP_INTERVAL": "1s", "NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD": "2"}
OWNERSHIP = {
    "app.kubernetes.io/managed-by": "nim-agent",
    "app.kubernetes.io/name": "nim",
}


def start(kubeconfig: Path, log: Path, **settings: str) -> ConnectorServer:
    env = {**SETTINGS, **{f"NIM_AGENT_{k.upper()}": v for k, v in settings.items()}}
    return ConnectorServer(kubeconfig, settings=env, command="nim-agent", log_path=log).start()


@pytest.fixture
def server(kubeconfig_path: Path, tmp_path: Path) -> Iterator[ConnectorServer]:
    s = start(kubeconfig_path, tmp_path / "connector.log")
    yield s
    s.stop()


@pytest.fixture
def extra_namespace(make_namespace: Callable[[str], str]) -> str:
    """A second test namespace (the leak audit looks into it too)."""
    return make_namespace("extra")


# -- Pod Security "restricted" --------------------------------------------------------------


def test_rendered_pods_are_admitted_where_pod_security_restricted_is_enforced(
    server: ConnectorServer,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    core_v1.patch_namespace(
        namespace,
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        },
    )
    # The namespace really enforces it: a plain pod is refused.
    with pytest.raises(client.ApiException) as refused:
        core_v1.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "plain"},
                "spec": {"containers": [{"name": "c", "image": "busybox:1"}]},
            },
        )
    assert refused.value.status == 403 and "restricted" in str(refused.value.body)

    d = deployments(server)
    metas = [
        d.create(nim("ready")),
        d.create(initializing("1s")),  # with the LoRA download init container
        d.create(small()),  # no GPU
        d.create(nim("ready", cache_pvc="nim-cache")),  # a PVC-backed cache
    ]
    for resource in [get(server, m) for m in metas]:
        assert "Kubernetes refused" not in resource.message, resource.message
    assert len(our_pods(core_v1, namespace)) == len(metas)
    wait_phases(server, dict.fromkeys(metas[:3], TE.SUCCEEDED), timeout=60)
    COUNTS["pods admitted under Pod Security restricted"] += len(metas)


# -- namespaces the settings do not allow ---------------------------------------------------


def test_a_config_cannot_choose_a_namespace_the_settings_do_not_allow(
    kubeconfig_path: Path,
    tmp_path: Path,
    core_v1: client.CoreV1Api,
    namespace: str,
    extra_namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    allowed = f"t-allowed-{uuid.uuid4().hex[:6]}"
    server = start(kubeconfig_path, tmp_path / "c.log", allowed_namespaces=allowed)
    try:
        d = deployments(server)
        for target in (extra_namespace, "kube-system", "default"):
            meta = d.create(nim("ready", namespace=target))
            resource = get(server, meta)
            assert resource.phase == TE.FAILED
            assert "namespace" in resource.message and target in resource.message
            assert allowed in resource.message  # says what is allowed
            COUNTS["namespace escapes refused"] += 1
        assert not our_pods(core_v1, extra_namespace)
        assert not our_pods(core_v1, "kube-system")
        # The execution's own namespace is always fine.
        meta = d.create(nim("ready", namespace=namespace))
        wait_phases(server, {meta: TE.SUCCEEDED}, timeout=60)
        d.abort_all()
    finally:
        server.stop()
    # With the other namespace allowed, the same config goes there.
    server = start(kubeconfig_path, tmp_path / "c2.log", allowed_namespaces=extra_namespace)
    try:
        d = deployments(server)
        meta = d.create(nim("ready", namespace=extra_namespace))
        wait_phases(server, {meta: TE.SUCCEEDED}, timeout=60)
        assert len(our_pods(core_v1, extra_namespace)) == 1
        d.abort_all()
    finally:
        server.stop()


# -- ownership labels -----------------------------------------------------------------------

CLAIMS = {
    "app.kubernetes.io/managed-by": "someone-else",
    "app.kubernetes.io/name": "not-nim",
    "app.kubernetes.io/instance": "victim",
    "nim-agent.dev/deployment": "victim",
    "nim-agent.dev/project": "other-project",
    "nim-agent.dev/domain": "production",
    "nim-agent.dev/execution": "other-execution",
    "nim-agent.dev/node": "n9",
    "nim-agent.dev/retry": "7",
}
ANNOTATION_CLAIMS = {
    "nim-agent.dev/expires-at": "2999-01-01T00:00:00Z",
    "nim-agent.dev/endpoint": "http://evil.example:80",
    "nim-agent.dev/execution-id": "{}",
    "nim-agent.dev/deletion-cause": "abort: pretend",
}


def test_user_labels_and_annotations_cannot_overwrite_ownership_identity_or_ttl(
    server: ConnectorServer,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    d = deployments(server)
    config = nim(
        "ready",
        labels={**CLAIMS, "nim-agent.dev/simulate": "ready", "team": "a"},
        annotations=ANNOTATION_CLAIMS,
    )
    meta = d.create(config, ttl=timedelta(minutes=30))
    resource = get(server, meta)
    if resource.phase == TE.FAILED:  # refusing the claims outright is fine too
        assert "labels" in resource.message or "annotations" in resource.message
        return
    wait_phases(server, {meta: TE.SUCCEEDED}, timeout=90)  # the Service is made by then
    [pod] = our_pods(core_v1, namespace)
    [svc] = our_services(core_v1, namespace)
    for obj in (pod, svc):
        labels = obj.metadata.labels
        assert labels["app.kubernetes.io/managed-by"] == "nim-agent"
        assert labels["app.kubernetes.io/name"] == "nim"
        assert labels["nim-agent.dev/deployment"] == pod.metadata.name
        assert labels["app.kubernetes.io/instance"] == pod.metadata.name
        assert labels["nim-agent.dev/project"] == "flytesnacks"
        assert labels["nim-agent.dev/domain"] == "development"
        assert labels["nim-agent.dev/node"] == "n0"
        assert labels["nim-agent.dev/retry"] == "0"
        assert labels["nim-agent.dev/execution"] != "other-execution"
        assert labels["team"] == "a"
    annotations = pod.metadata.annotations
    assert not annotations["nim-agent.dev/expires-at"].startswith("2999")
    assert annotations["nim-agent.dev/endpoint"].endswith(".svc.cluster.local:8000")
    assert json.loads(annotations["nim-agent.dev/execution-id"])["node"] == "n0"
    assert "nim-agent.dev/deletion-cause" not in annotations
    # A pretended deletion cause does not fool GetTask into reporting an abort.
    wait_phases(server, {meta: TE.SUCCEEDED}, timeout=60)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(CLAIMS))
        | st.from_regex(r"[a-z]([a-z0-9.-]{0,20}/)?[a-z]{1,10}", fullmatch=True),
        st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9._-]{0,20}[a-zA-Z0-9])?", fullmatch=True),
        max_size=8,
    )
)
def test_no_user_label_map_changes_the_ownership_labels_of_the_rendered_objects(
    labels: dict[str, str],
) -> None:
    COUNTS["bad inputs tried (user label maps)"] += 1
    try:
        config = nim("ready", labels=labels)
    except ConfigError:
        return  # refused outright: nothing rendered
    identity = DeploymentIdentity.for_execution(
        ExecutionIdentity("p", "d", "e1", "n0", 0), "ns", task_name="t"
    )
    for obj in render(config, identity, ConnectorSettings()):
        have = obj["metadata"]["labels"]
        assert {k: have[k] for k in OWNERSHIP} == OWNERSHIP
        assert have["nim-agent.dev/deployment"] == identity.name
        assert have["nim-agent.dev/execution"] == "e1"


# -- a secret value never shows ---------------------------------------------------------------


def test_a_secret_value_never_appears_in_the_connectors_log_answers_or_metrics(
    server: ConnectorServer,
    core_v1: client.CoreV1Api,
    namespace: str,
    deployments: Callable[[ConnectorServer], Deployments],
) -> None:
    secret_value = f"nvapi-SECRET-{uuid.uuid4().hex}"
    core_v1.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "nim-secrets"}, "stringData": {"api_key": secret_value}},
    )
    d = deployments(server)
    metas = [
        d.create(nim("ready")),
        d.create(nim("config-error")),  # the kubelet's message names the Secret
        d.create(nim("crashloop")),  # a failure message with exit code and log tail
        d.create(nim("image-pull-error")),
        refused_config(server, namespace),  # a refused config
        d.create(nim("ready", namespace="kube-system")),  # a refused namespace
    ]
    answers: list[str] = []
    for _ in range(2):
        wait_phases(
            server,
            {metas[0]: TE.SUCCEEDED, metas[1]: TE.FAILED, metas[2]: TE.FAILED},
            timeout=90,
        )
        for meta in metas:
            resource = get(server, meta)
            answers.append(json_format.MessageToJson(resource))
    for meta in metas:
        server.stub.DeleteTask(delete_request(meta), timeout=30)
    d.metas.clear()
    pods = core_v1.list_namespaced_pod(namespace).items
    text = {
        "connector log": server.log_path.read_text(errors="replace"),
        "GetTask answers": "\n".join(answers),
        "metrics": server.metrics(),
        "resource_meta": "\n".join(m.decode(errors="replace") for m in metas),
        "pod specs": json.dumps([client.ApiClient().sanitize_for_serialization(p) for p in pods]),
    }
    encoded = base64.b64encode(secret_value.encode()).decode()
    for where, content in text.items():
        assert content, f"nothing to search in the {where}"
        assert secret_value not in content, f"the secret value is in the {where}"
        assert encoded not in content, f"the base64 secret value is in the {where}"
    assert "nim-secrets" in text["GetTask answers"]  # the message names the Secret, not its value
    COUNTS["places searched for a secret value"] += len(text)


def refused_config(server: ConnectorServer, namespace: str) -> bytes:
    tmpl = template(nim("ready"))
    tmpl.custom.fields["nim"].struct_value.fields["mem"].string_value = "20GB"
    request = create_request(tmpl, execution(exec_name()), namespace)
    meta: bytes = server.stub.CreateTask(request, timeout=10).resource_meta
    return meta


# -- the chart's Role alone --------------------------------------------------------------------


def chart_objects(namespace: str, tmp_path: Path, scope: str) -> list[dict[str, Any]]:
    """What the chart makes for the connector's identity: its ServiceAccount, RBAC objects and
    settings ConfigMap (the Deployment, Service and the rest are not needed here)."""
    rbac: dict[str, Any] = {"scope": scope}
    if scope == "namespaces":
        rbac["namespaces"] = [namespace]
    values = tmp_path / f"values-{scope}.yaml"
    values.write_text(yaml.safe_dump({"rbac": rbac}))
    out = subprocess.run(
        [
            str(DEVCLUSTER / "bin" / "helm"),
            "template",
            "nim-agent",
            str(REPO_ROOT / "charts" / "nim-agent"),
            f"--namespace={namespace}",
            f"--values={values}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    kinds = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    docs = [d for d in yaml.safe_load_all(out) if d]
    return [d for d in docs if d["kind"] in kinds or d["kind"] == "ConfigMap"]


def apply_as_admin(api_client: client.ApiClient, namespace: str, doc: dict[str, Any]) -> None:
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    create = {
        "ServiceAccount": lambda: core.create_namespaced_service_account(namespace, doc),
        "ConfigMap": lambda: core.create_namespaced_config_map(namespace, doc),
        "Role": lambda: rbac.create_namespaced_role(namespace, doc),
        "RoleBinding": lambda: rbac.create_namespaced_role_binding(namespace, doc),
        "ClusterRole": lambda: rbac.create_cluster_role(doc),
        "ClusterRoleBinding": lambda: rbac.create_cluster_role_binding(doc),
    }
    create[doc["kind"]]()


AUDIT_LOG = (
    DEVCLUSTER
    / "kwok"
    / "clusters"
    / os.environ.get("NIM_AGENT_CLUSTER", "nim-agent")
    / "logs"
    / "audit.log"
)


def audited_calls(user: str) -> set[tuple[str, str, str]]:
    """(API group, resource[/subresource], verb) of every request ``user`` made that the API
    server authorized, from its audit log (devcluster/kwok/audit-policy.yaml records what
    ServiceAccounts do)."""
    assert AUDIT_LOG.exists(), (
        f"no audit log at {AUDIT_LOG}: recreate the cluster (make cluster-down)"
    )
    calls = set()
    with AUDIT_LOG.open(encoding="utf-8") as log:
        for line in log:
            entry = json.loads(line)
            if entry.get("user", {}).get("username") != user:
                continue
            if entry.get("annotations", {}).get("authorization.k8s.io/decision") != "allow":
                continue
            ref = entry.get("objectRef") or {}
            resource = ref.get("resource", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            calls.add((ref.get("apiGroup", ""), resource, entry["verb"]))
    return calls


def granted_calls(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) the chart's Roles and ClusterRoles grant."""
    grants = set()
    for role in objects:
        if role["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants |= {(group, resource, verb) for verb in rule["verbs"]}
    return grants


def token_kubeconfig(admin_kubeconfig: Path, token: str, path: Path) -> Path:
    """A kubeconfig with the admin's cluster entry and only a bearer token as credentials."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "nim-agent", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "nim-agent",
                        "context": {"cluster": cluster["name"], "user": "nim-agent"},
                    }
                ],
                "current-context": "nim-agent",
            }
        )
    )
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("scope", ["namespaces", "cluster"])
def test_the_connector_works_end_to_end_with_the_charts_role_alone(
    kubeconfig_path: Path,
    api_client: client.ApiClient,
    core_v1: client.CoreV1Api,
    namespace: str,
    extra_namespace: str,
    tmp_path: Path,
    deployments: Callable[[ConnectorServer], Deployments],
    scope: str,
) -> None:
    objects = chart_objects(namespace, tmp_path, scope)
    cluster_scoped = [d for d in objects if d["kind"].startswith("Cluster")]
    assert bool(cluster_scoped) == (scope == "cluster")
    try:
        for doc in objects:
            apply_as_admin(api_client, namespace, doc)
        [config_map] = [d for d in objects if d["kind"] == "ConfigMap"]
        (tmp_path / "settings.yaml").write_text(config_map["data"]["settings.yaml"])
        run_with_the_charts_identity(
            kubeconfig_path, core_v1, namespace, extra_namespace, tmp_path, deployments, scope
        )
    finally:
        rbac = client.RbacAuthorizationV1Api(api_client)
        for doc in cluster_scoped:  # outlive the namespace otherwise
            delete = (
                rbac.delete_cluster_role
                if doc["kind"] == "ClusterRole"
                else rbac.delete_cluster_role_binding
            )
            delete(doc["metadata"]["name"])


def run_with_the_charts_identity(
    kubeconfig_path: Path,
    core_v1: client.CoreV1Api,
    namespace: str,
    extra_namespace: str,
    tmp_path: Path,
    deployments: Callable[[ConnectorServer], Deployments],
    scope: str,
) -> None:
    token = core_v1.create_namespaced_service_account_token(
        "nim-agent", namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    kubeconfig = token_kubeconfig(kubeconfig_path, token, tmp_path / "sa-kubeconfig")
    # The chart's settings file (its ConfigMap), with the test's shorter intervals on top. The
    # cleanup Lease is the chart's (its Role grants that name only).
    settings = {"config": str(tmp_path / "settings.yaml"), "lease_name": "nim-agent-reaper"}
    server = start(kubeconfig, tmp_path / "sa.log", **settings)
    try:
        d = deployments(server)
        ready = d.create(nim("ready"))
        again = server.stub.CreateTask(d.request(nim("ready"), name=next(iter(d.metas))))
        assert again.resource_meta == ready  # a retried create reads the existing pod
        crashing = d.create(nim("crashloop"))
        waiting = d.create(nim("ready", gpu=64))
        expiring = d.create(nim("ready"), ttl=timedelta(seconds=5))
        aborted = d.create(nim("ready"))
        wait_phases(
            server,
            {
                ready: TE.SUCCEEDED,
                crashing: TE.FAILED,
                waiting: TE.WAITING_FOR_RESOURCES,
                aborted: TE.SUCCEEDED,
            },
            timeout=90,
        )
        for _ in range(2):  # the second finds the pod gone and looks for its Service
            server.stub.DeleteTask(delete_request(aborted), timeout=30)
        server.stub.DeleteTask(delete_request(waiting), timeout=30)
        # A shared server (reuse): two holders attach, each gets its Service, both are
        # released by aborts, and the sweep stops the idle server: no other permission.
        shared = task_template(
            NIMTask(
                name="faults.shared",
                nim=nim("ready"),
                ttl=timedelta(hours=1),
                reuse=Reuse(idle_ttl=timedelta(seconds=2)),
            )
        )
        holders = [
            server.stub.CreateTask(
                create_request(shared, execution(exec_name()), namespace), timeout=30
            ).resource_meta
            for _ in range(2)
        ]
        wait_phases(server, dict.fromkeys(holders, TE.SUCCEEDED), timeout=90)
        for holder in holders:
            server.stub.DeleteTask(delete_request(holder), timeout=30)
        shared_pod = json.loads(holders[0])["shared"]
        wait_for(
            lambda: (
                "nim-agent.dev/stopped"
                in (core_v1.read_namespaced_pod(shared_pod, namespace).metadata.annotations or {})
            ),
            timeout=60,
            what="the idle shared server to be stopped",
        )
        wait_phases(server, {expiring: TE.FAILED}, timeout=60)  # stopped at its ttl
        running = {p.metadata.name for p in running_pods(core_v1, namespace)}
        assert running == {d.pod_name(ready)}, running
        services = {s.metadata.name for s in our_services(core_v1, namespace)}
        assert d.pod_name(ready) in services and d.pod_name(aborted) not in services
        refused = server.metric("nim_agent_kube_requests_total", code="403")
        assert refused == 0, server.log_tail()
        assert server.metric("nim_agent_leader") == 1, server.log_tail()
        server.stub.DeleteTask(delete_request(ready), timeout=30)
        COUNTS["deployments run with the chart's RBAC alone"] += len(d.metas)
        # What it did, as the API server's audit log recorded it, is exactly what it may do.
        used = audited_calls(f"system:serviceaccount:{namespace}:nim-agent")
        granted = granted_calls(chart_objects(namespace, tmp_path, scope))
        assert used == granted, (
            f"granted but never used: {sorted(granted - used)}; "
            f"used but not granted: {sorted(used - granted)}"
        )
        if scope == "cluster":
            return
        # A namespace outside the Role: a clear FAILED, not a gRPC error.
        outside = start(
            kubeconfig, tmp_path / "sa2.log", allowed_namespaces=extra_namespace, **settings
        )
        try:
            meta = Deployments(outside, namespace).create(nim("ready", namespace=extra_namespace))
            resource = get(outside, meta)
            assert resource.phase == TE.FAILED and "forbidden" in resource.message.lower()
        finally:
            outside.stop()
    finally:
        server.stop()
