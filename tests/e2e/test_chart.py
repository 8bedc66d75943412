"""The Helm chart (charts/nim-agent), rendered with the real helm and checked as parsed objects.

No cluster needed: these tests run `helm lint` and `helm template`. What the API server thinks of
the output (and `helm install`) is tested in tests/integration against the local control plane.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from nim_agent.checks import ConfigError
from nim_agent.cli import build_parser
from nim_agent.contract import LABEL_MANAGED_BY, MANAGED_BY, parse_duration
from nim_agent.settings import ConnectorSettings
from nim_agent.status import Reason

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "nim-agent"
KUBE_PY = REPO_ROOT / "nim_agent" / "kube.py"
INSTALL_DOC = REPO_ROOT / "docs" / "install.md"

Doc = dict[str, Any]
KEY = re.compile(r"^\s*[A-Za-z][\w-]*:")

# That the connector's grants are exactly what its code calls is checked against the API
# server's audit log of a real run (tests/faults/test_abuse_security.py); here, the rules' shape.
NAMESPACED = {"rbac": {"scope": "namespaces", "namespaces": ["team-a", "team-b"]}}


def helm_run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(
    helm: Path,
    values: dict[str, Any] | None = None,
    *,
    release: str = "nim-agent",
    namespace: str = "flyte",
    chart: Path = CHART,
    tmp_path: Path | None = None,
) -> list[Doc]:
    """`helm template` output as a list of objects; fails the test with helm's stderr."""
    args = ["template", release, str(chart), "--namespace", namespace]
    if values:
        assert tmp_path is not None, "values need a tmp_path to be written to"
        path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    result = helm_run(helm, *args)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def render_error(helm: Path, values: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "bad-values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm_run(helm, "template", "nim-agent", str(CHART), "--values", str(path))
    assert result.returncode != 0, f"helm accepted {values}:\n{result.stdout[:2000]}"
    return result.stderr


def render_notes(
    helm: Path,
    tmp_path: Path,
    values: dict[str, Any] | None = None,
    *,
    release: str = "nim-agent",
    namespace: str = "flyte",
) -> str:
    """NOTES.txt as `helm install` would print it.

    `helm template` never renders NOTES.txt and `helm install --dry-run` needs a cluster, so a
    copy of the chart carries one extra template that puts the rendered notes in a ConfigMap.
    """
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "zz-test-notes.yaml").write_text(
        '{{- define "test.notes" -}}\n' + notes + "\n{{- end -}}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: test-notes\n"
        'data:\n  notes: {{ include "test.notes" . | toJson }}\n'
    )
    docs = render(
        helm, values, release=release, namespace=namespace, chart=chart, tmp_path=tmp_path
    )
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "test-notes"]
    return str(cm["data"]["notes"])


def propeller_snippet(notes: str) -> Doc:
    """The flytepropeller configuration block of NOTES.txt, parsed."""
    match = re.search(r"^tasks:\n.*?(?=^\S|\Z)^plugins:\n.*?(?=^\S|\Z)", notes, re.S | re.M)
    assert match, f"no propeller configuration block in NOTES.txt:\n{notes}"
    doc: Doc = yaml.safe_load(match.group(0))
    return doc


def of_kind(docs: Iterable[Doc], *kinds: str) -> list[Doc]:
    return [d for d in docs if d["kind"] in kinds]


def one(docs: Iterable[Doc], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def grants(rules: list[Doc]) -> dict[str, set[str]]:
    """{resource: verbs} over rules, for the core API group (the only one the connector uses)."""
    out: dict[str, set[str]] = {}
    for rule in rules:
        assert rule.get("apiGroups") == [""], f"rule outside the core API group: {rule}"
        for resource in rule["resources"]:
            out.setdefault(resource, set()).update(rule["verbs"])
    return out


def kube_py_calls() -> set[tuple[str, str]]:
    """(resource, verb) of every API call in nim_agent/kube.py: `_send`/`_json(verb, method,
    _path(kind, ..., sub))`."""
    source = KUBE_PY.read_text()
    calls = set()
    pattern = r'_(?:json|send)\(\s*"(\w+)",\s*"\w+",\s*_path\(\s*"(\w+)"([^)]*)\)'
    for verb, kind, rest in re.findall(pattern, source):
        sub = re.findall(r'"(\w+)"', rest)
        calls.add((f"{kind}/{sub[-1]}" if sub else kind, verb))
    return calls


def settings_file(docs: list[Doc]) -> Doc:
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-settings")]
    data: Doc = yaml.safe_load(cm["data"]["settings.yaml"])
    return data


# ------------------------------------------------------------------------------------- lint


def test_helm_lint_passes_with_default_and_namespaced_values(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "namespaced.yaml"
    values.write_text(yaml.safe_dump(NAMESPACED))
    for extra in ([], ["--values", str(values)]):
        result = helm_run(helm, "lint", "--strict", str(CHART), *extra)
        assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------ render


def workload_roles(docs: Iterable[Doc]) -> list[Doc]:
    """The Roles/ClusterRoles for NIM deployments (not the cleanup Lease's)."""
    return [d for d in of_kind(docs, "Role", "ClusterRole") if not is_lease_rbac(d)]


def is_lease_rbac(doc: Doc) -> bool:
    return str(doc["metadata"]["name"]).endswith("-lease")


def test_default_values_render_a_connector_with_cluster_wide_rbac(helm: Path) -> None:
    docs = render(helm)
    assert sorted(d["kind"] for d in docs) == sorted(
        [
            "ServiceAccount",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",  # the cleanup Lease's, in the release namespace
            "RoleBinding",
            "Service",
            "Deployment",
            "PodDisruptionBudget",  # two replicas by default
        ]
    )
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    sa = one(docs, "ServiceAccount")["metadata"]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["name"], "namespace": "flyte"}
    ]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["name"]


def test_namespaced_rbac_renders_a_role_and_binding_in_each_listed_namespace(
    helm: Path, tmp_path: Path
) -> None:
    docs = render(helm, NAMESPACED, tmp_path=tmp_path)
    assert not of_kind(docs, "ClusterRole", "ClusterRoleBinding")
    roles = {d["metadata"]["namespace"]: d for d in workload_roles(docs)}
    bindings = {
        d["metadata"]["namespace"]: d for d in of_kind(docs, "RoleBinding") if not is_lease_rbac(d)
    }
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    for ns, binding in bindings.items():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[ns]["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "flyte"}]


@pytest.mark.parametrize("values", [None, NAMESPACED], ids=["cluster", "namespaces"])
def test_rbac_has_no_wildcards_and_nothing_on_secrets(
    helm: Path, tmp_path: Path, values: dict[str, Any] | None
) -> None:
    docs = render(helm, values, tmp_path=tmp_path)
    roles = of_kind(docs, "Role", "ClusterRole")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), f"wildcard {key} in {rule}"
            assert not {"secrets", "secrets/*"} & set(rule["resources"]), rule
            assert "nonResourceURLs" not in rule, rule
    workload = workload_roles(docs)
    assert workload and all(grants(r["rules"]) == grants(workload[0]["rules"]) for r in workload)
    assert not of_kind(docs, "Secret")


def test_the_cleanup_lease_is_granted_by_name_in_one_namespace_only(
    helm: Path, tmp_path: Path
) -> None:
    docs = render(helm, NAMESPACED, tmp_path=tmp_path)
    [lease_role] = [d for d in of_kind(docs, "Role") if is_lease_rbac(d)]
    assert lease_role["metadata"]["namespace"] == "flyte"
    by_verbs = {tuple(r["verbs"]): r for r in lease_role["rules"]}
    assert set(by_verbs) == {("create",), ("get", "update")}
    assert by_verbs[("get", "update")]["resourceNames"] == ["nim-agent-reaper"]
    assert all(r["resources"] == ["leases"] for r in lease_role["rules"])
    assert settings_file(docs)["lease_namespace"] == "flyte"
    off = render(helm, {"settings": {"leaderElection": False}}, tmp_path=tmp_path)
    assert not [d for d in of_kind(off, "Role", "RoleBinding") if is_lease_rbac(d)]
    assert settings_file(off)["leader_election"] is False


def test_rbac_covers_every_api_call_the_kube_module_makes(helm: Path, tmp_path: Path) -> None:
    calls = kube_py_calls()
    assert len(calls) >= 8, f"parsed too few calls from {KUBE_PY.name}: {calls}"
    # pods/proxy is called only with servingCheck "proxy" (an in-cluster connector asks directly).
    proxy = {"settings": {"servingCheck": "proxy"}}
    granted = grants(one(render(helm, proxy, tmp_path=tmp_path), "ClusterRole")["rules"])
    missing = {(res, verb) for res, verb in calls if verb not in granted.get(res, set())}
    assert not missing, f"kube.py calls that the chart's RBAC does not allow: {missing}"
    assert ("pods/proxy", "get") in calls


def test_the_pod_proxy_is_granted_only_when_the_serving_check_uses_it(
    helm: Path, tmp_path: Path
) -> None:
    for check in ("auto", "direct", "off"):
        values = {"settings": {"servingCheck": check}}
        granted = grants(one(render(helm, values, tmp_path=tmp_path), "ClusterRole")["rules"])
        assert "pods/proxy" not in granted, check
    default = grants(workload_roles(render(helm, NAMESPACED, tmp_path=tmp_path))[0]["rules"])
    values = {**NAMESPACED, "settings": {"servingCheck": "proxy"}}
    for role in workload_roles(render(helm, values, tmp_path=tmp_path)):
        assert grants(role["rules"]) == {**default, "pods/proxy": {"get"}}


def test_invalid_rbac_values_fail_with_a_message_naming_the_value(
    helm: Path, tmp_path: Path
) -> None:
    err = render_error(helm, {"rbac": {"scope": "namespaces"}}, tmp_path)
    assert "rbac.namespaces is empty" in err
    err = render_error(helm, {"rbac": {"scope": "everywhere"}}, tmp_path)
    assert "/rbac/scope" in err or "rbac.scope" in err
    err = render_error(helm, {"rbac": {"scop": "cluster"}}, tmp_path)
    assert "scop" in err


def test_connector_pod_passes_the_restricted_pod_security_profile(helm: Path) -> None:
    pod = one(render(helm), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any("hostPath" in v for v in pod["volumes"])
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc.get("privileged")
    # A read-only root needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_service_links_are_off_and_the_connector_does_not_take_them_for_settings(
    helm: Path,
) -> None:
    # What the kubelet injects for the chart's own Service (named nim-agent) when service links
    # are on: the first run on a real kubelet crash-looped on exactly these, read as unknown
    # settings. The chart turns them off, and the connector no longer reads them as settings
    # (a release named otherwise, or another Service called nim-agent, would bring them back).
    links = {
        "NIM_AGENT_SERVICE_HOST": "10.96.0.10",
        "NIM_AGENT_SERVICE_PORT_GRPC": "8000",
        "NIM_AGENT_PORT": "tcp://10.96.0.10:8000",
        "NIM_AGENT_PORT_8000_TCP_ADDR": "10.96.0.10",
    }
    assert ConnectorSettings.load(links) == ConnectorSettings.load({})
    with pytest.raises(ConfigError) as refused:
        ConnectorSettings.load({**links, "NIM_AGENT_SERVICE_HOTS": "x"})
    assert "NIM_AGENT_SERVICE_HOTS" in str(refused.value)
    pod = one(render(helm), "Deployment")["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False


def test_a_stopping_replica_sleeps_before_sigterm_within_its_grace_period(
    helm: Path, tmp_path: Path
) -> None:
    pod = one(render(helm), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    assert pod["terminationGracePeriodSeconds"] > 5
    (container,) = one(render(helm, {"shutdownDelaySeconds": 0}, tmp_path=tmp_path), "Deployment")[
        "spec"
    ]["template"]["spec"]["containers"]
    assert "lifecycle" not in container
    error = render_error(helm, {"shutdownDelaySeconds": 30}, tmp_path)
    assert "terminationGracePeriodSeconds (30) must exceed shutdownDelaySeconds (30)" in error


def test_probes_are_grpc_health_checks_on_the_configured_port(helm: Path, tmp_path: Path) -> None:
    for port in (8000, 9443):
        docs = render(helm, {"ports": {"containerPort": port}}, tmp_path=tmp_path)
        (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": port}, probe
        # Liveness asks the health service that says whether the process is sound.
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": "nim-agent"}
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
        svc_ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
        assert svc_ports["grpc"]["port"] == port
        assert svc_ports["grpc"]["targetPort"] == "grpc"


def test_container_runs_serve_with_the_charts_ports_as_the_cli_parses_them(
    helm: Path, tmp_path: Path
) -> None:
    values = {"ports": {"containerPort": 9443}, "metrics": {"port": 9191}}
    values["extraArgs"] = ["--workers=4"]
    docs = render(helm, values, tmp_path=tmp_path)
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "command" not in container  # the image's ENTRYPOINT is nim-agent
    assert container["args"][0] == "serve"
    args = build_parser().parse_args(container["args"])  # exits on a flag serve does not have
    assert (args.port, args.metrics_port, args.workers) == (9443, 9191, 4)


def test_chart_objects_are_never_selected_as_nim_deployments(helm: Path, tmp_path: Path) -> None:
    # The connector reaps pods labelled managed-by=nim-agent: it must never select itself.
    for values in (None, NAMESPACED, {"podLabels": {"team": "ml"}, "replicaCount": 2}):
        for doc in render(helm, values, tmp_path=tmp_path):
            labels = [doc["metadata"].get("labels") or {}]
            if doc["kind"] == "Deployment":
                labels.append(doc["spec"]["template"]["metadata"]["labels"])
            for found in labels:
                assert found.get(LABEL_MANAGED_BY) != MANAGED_BY, doc["metadata"]["name"]


# --------------------------------------------------------------------------------- settings


def test_every_connector_setting_is_a_chart_value_and_the_defaults_load(helm: Path) -> None:
    data = settings_file(render(helm))
    assert set(data) == {f.name for f in dataclasses.fields(ConnectorSettings)}
    # The chart's defaults are the connector's, but for where the Lease lives: the release's
    # namespace (a pod outside the chart has no such namespace to default to).
    assert ConnectorSettings.from_mapping(data) == ConnectorSettings(lease_namespace="flyte")


def test_settings_values_reach_the_connector_as_written(helm: Path, tmp_path: Path) -> None:
    values = {
        "settings": {
            "defaultSecretName": "ngc",
            "defaultNamespace": "nim-local",
            "allowedNamespaces": ["shared-nims", "research"],
            "defaultTTL": "1h30m",
            "maxTTL": "12h",
            "keepFailed": True,
            "unschedulableTimeout": "5m",
            "crashloopRestartThreshold": 7,
            "logLinks": {"Grafana": "https://grafana.example/explore?pod={pod}&ns={namespace}"},
            "allowCachePVC": False,
            "loraDownloaderImage": "registry.example/lora-fetch:1.2",
            "watchNamespaces": ["shared-nims"],
            "reapInterval": "10s",
            "unhealthyWindow": "45m",
            "stoppedRetention": "2h",
            "serviceAccounts": ["default", "nim-reader"],
            "leaderElection": False,
            "leaseNamespace": "nim-system",
            "leaseName": "nims",
            "leaseDuration": "30s",
            "servingCheck": "proxy",
            "servingWindow": "10m",
            "servingTimeout": "3s",
            "hfEndpoint": "https://hf-mirror.example.com",
            "adapterInputsImage": "registry.example/flytekit:1.16.31",
            "adapterInputsEnv": {"FLYTE_AWS_ENDPOINT": "http://minio.flyte:9000"},
            "adapterInputsSecret": "flyte-object-store",
            "securityProfile": "nvidia",
            "allowedSecurityProfiles": ["restricted"],
            "allowReuse": False,
            "reuseIdleTTL": "20m",
            "reuseMaxTTL": "6h",
        }
    }
    docs = render(helm, values, tmp_path=tmp_path)
    settings = ConnectorSettings.from_mapping(settings_file(docs))
    assert settings == ConnectorSettings(
        default_secret_name="ngc",
        default_namespace="nim-local",
        allowed_namespaces=("shared-nims", "research"),
        default_ttl=parse_duration("1h30m"),
        max_ttl=parse_duration("12h"),
        keep_failed=True,
        unschedulable_timeout=parse_duration("5m"),
        crashloop_restart_threshold=7,
        log_links=(("Grafana", "https://grafana.example/explore?pod={pod}&ns={namespace}"),),
        allow_cache_pvc=False,
        lora_downloader_image="registry.example/lora-fetch:1.2",
        watch_namespaces=("shared-nims",),
        reap_interval=parse_duration("10s"),
        unhealthy_window=parse_duration("45m"),
        stopped_retention=parse_duration("2h"),
        service_accounts=("default", "nim-reader"),
        leader_election=False,
        lease_namespace="nim-system",
        lease_name="nims",
        lease_duration=parse_duration("30s"),
        serving_check="proxy",
        serving_window=parse_duration("10m"),
        serving_timeout=parse_duration("3s"),
        hf_endpoint="https://hf-mirror.example.com",
        adapter_inputs_image="registry.example/flytekit:1.16.31",
        adapter_inputs_env=(("FLYTE_AWS_ENDPOINT", "http://minio.flyte:9000"),),
        adapter_inputs_secret="flyte-object-store",
        security_profile="nvidia",
        allowed_security_profiles=("restricted",),
        allow_reuse=False,
        reuse_idle_ttl=parse_duration("20m"),
        reuse_max_ttl=parse_duration("6h"),
    )
    # The pod reads that file, and restarts when it changes.
    deployment = one(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["NIM_AGENT_CONFIG"] == mounts["settings"] + "/settings.yaml"
    default_checksum = one(render(helm), "Deployment")["spec"]["template"]["metadata"]
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
        != default_checksum["annotations"]["checksum/settings"]
    )


def test_namespaced_rbac_limits_the_watch_to_its_namespaces(helm: Path, tmp_path: Path) -> None:
    # A cluster-wide watch would be forbidden by namespaced RBAC.
    assert settings_file(render(helm))["watch_namespaces"] == []
    namespaced = settings_file(render(helm, NAMESPACED, tmp_path=tmp_path))
    assert namespaced["watch_namespaces"] == ["team-a", "team-b"]
    one_of_them = {**NAMESPACED, "settings": {"watchNamespaces": ["team-b"]}}
    assert settings_file(render(helm, one_of_them, tmp_path=tmp_path))["watch_namespaces"] == [
        "team-b"
    ]
    outside = {**NAMESPACED, "settings": {"watchNamespaces": ["team-c"]}}
    assert "not in rbac.namespaces" in render_error(helm, outside, tmp_path)


def test_settings_the_connector_would_reject_are_rejected_by_the_chart(
    helm: Path, tmp_path: Path
) -> None:
    err = render_error(helm, {"settings": {"defaultTTL": "two hours"}}, tmp_path)
    assert "defaultTTL" in err
    err = render_error(helm, {"settings": {"crashloopRestartThreshold": 0}}, tmp_path)
    assert "crashloopRestartThreshold" in err
    err = render_error(helm, {"settings": {"keepFaild": True}}, tmp_path)
    assert "keepFaild" in err


# ---------------------------------------------------------------------- metrics, PDB, scale


def test_metrics_port_and_service_monitor(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, {"metrics": {"serviceMonitor": {"enabled": True}}}, tmp_path=tmp_path)
    service = one(docs, "Service")
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()

    docs = render(helm, {"metrics": {"enabled": False}}, tmp_path=tmp_path)
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [p["name"] for p in container["ports"]] == ["grpc"]
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["grpc"]
    assert not of_kind(docs, "ServiceMonitor")


@pytest.mark.parametrize(
    ("replicas", "enabled", "expected"),
    [(1, None, False), (2, None, True), (2, False, False), (1, True, True)],
)
def test_pod_disruption_budget_follows_replicas_unless_set(
    helm: Path, tmp_path: Path, replicas: int, enabled: bool | None, expected: bool
) -> None:
    values = {"replicaCount": replicas, "podDisruptionBudget": {"enabled": enabled}}
    docs = render(helm, values, tmp_path=tmp_path)
    pdbs = of_kind(docs, "PodDisruptionBudget")
    assert bool(pdbs) is expected
    if pdbs:
        pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert pdbs[0]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# ------------------------------------------------------------------------------------ NOTES


def test_notes_print_the_propeller_configuration_for_this_release(
    helm: Path, tmp_path: Path
) -> None:
    notes = render_notes(helm, tmp_path, release="prod", namespace="ml-serving")
    snippet = propeller_snippet(notes)
    plugins = snippet["tasks"]["task-plugins"]
    assert "connector-service" in plugins["enabled-plugins"]
    assert plugins["default-for-task-types"] == {
        "nim": "connector-service",
        "nim-teardown": "connector-service",
    }
    service = snippet["plugins"]["connector-service"]
    assert service["connectorForTaskTypes"] == {"nim": "nim-agent", "nim-teardown": "nim-agent"}
    assert service["connectors"] == {
        "nim-agent": {
            "endpoint": "dns:///prod-nim-agent.ml-serving.svc.cluster.local:8000",
            "insecure": True,
            "defaultTimeout": "10s",
        }
    }
    # The endpoint names the Service this release creates.
    svc = one(render(helm, release="prod", namespace="ml-serving"), "Service")["metadata"]
    assert (svc["name"], svc["namespace"]) == ("prod-nim-agent", "ml-serving")
    # And says how to check the connector.
    assert "kubectl -n ml-serving rollout status deployment/prod-nim-agent" in notes
    assert "grpc.health.v1.Health/Check" in notes
    assert "can-i get secrets --as=system:serviceaccount:ml-serving:prod-nim-agent" in notes


def test_notes_propeller_configuration_passes_flytepropellers_strict_validation(
    helm: Path, flytepropeller: Path, tmp_path: Path
) -> None:
    # flytepropeller's own config loader (flytestdlib, --strict) rejects any key its config
    # structs do not have: the snippet is checked against the real v1.16 key names.
    config = tmp_path / "propeller-snippet.yaml"
    config.write_text(yaml.safe_dump(propeller_snippet(render_notes(helm, tmp_path))))
    result = subprocess.run(
        [str(flytepropeller), "config", "validate", "--strict", "--file", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Validated config file successfully" in output


def test_notes_follow_the_port_and_name_the_namespaces_of_namespaced_rbac(
    helm: Path, tmp_path: Path
) -> None:
    values = {**NAMESPACED, "ports": {"containerPort": 9443}}
    notes = render_notes(helm, tmp_path, values)
    endpoint = propeller_snippet(notes)["plugins"]["connector-service"]["connectors"]["nim-agent"]
    assert endpoint["endpoint"] == "dns:///nim-agent.flyte.svc.cluster.local:9443"
    assert "team-a, team-b" in notes


def test_every_value_is_documented_and_in_the_schema() -> None:
    # A leaf is documented by a comment line right above it or above one of its parent keys.
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys = [(i, len(ln) - len(ln.lstrip())) for i, ln in enumerate(lines) if KEY.match(ln)]
    commented = {i for i, _ in keys if i and lines[i - 1].lstrip().startswith("#")}
    undocumented = []
    for n, (i, indent) in enumerate(keys):
        if n + 1 < len(keys) and keys[n + 1][1] > indent:
            continue  # a mapping header: its leaves carry the documentation
        chain, want = [i], indent
        for j, ind in reversed(keys[:n]):  # parents: the nearest keys with smaller indents
            if ind < want:
                chain.append(j)
                want = ind
        if not commented & set(chain):
            undocumented.append(lines[i].strip())
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    top = set(yaml.safe_load("\n".join(lines)))
    assert top == set(schema["properties"]) - {"global"}


# ------------------------------------------------------------------------- docs/install.md


def doc_section(title: str) -> str:
    text = INSTALL_DOC.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no section '## {title}' in {INSTALL_DOC.name}"
    return match.group(1)


def test_install_doc_propeller_block_is_what_the_chart_prints(helm: Path, tmp_path: Path) -> None:
    section = doc_section("3. Route `nim` tasks to the connector")
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert yaml.safe_load(block) == propeller_snippet(render_notes(helm, tmp_path))


def test_install_doc_lists_every_setting_with_its_chart_value() -> None:
    section = doc_section("Connector settings")
    rows = re.findall(r"^\| `settings\.(\w+)` \| `(\w+)` \|", section, re.M)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]
    assert {chart for chart, _ in rows} == set(values)
    assert {name for _, name in rows} == {f.name for f in dataclasses.fields(ConnectorSettings)}


def test_install_doc_troubleshooting_covers_every_classification_reason() -> None:
    section = doc_section("Troubleshooting failed tasks")
    missing = [r.value for r in Reason if f"`{r.value}`" not in section]
    assert not missing, f"reasons missing from the troubleshooting table: {missing}"
