"""render: golden manifests, the properties every Pod must have, names, and the sidecar form.

Golden files: tests/unit/golden/<case>.config.yaml is the input, <case>.manifests.yaml the
expected output. After an intended change, regenerate with `UPDATE_GOLDEN=1 pytest
tests/unit/test_render.py` and review the diff.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from nim_agent.config import NIM, ConfigError, NIMSecrets
from nim_agent.render import (
    HF_DOWNLOAD_PROGRAM,
    INPUTS_DOWNLOAD_PROGRAM,
    DeploymentIdentity,
    ExecutionIdentity,
    deployment_name_for,
    local_deployment_name_for,
    namespace_for,
    render,
    render_pod,
    render_service,
    to_yaml,
)
from nim_agent.settings import ConnectorSettings
from nim_agent.sidecar import sidecar_pod_spec

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name.removesuffix(".config.yaml") for p in GOLDEN.glob("*.config.yaml"))
EXECUTION = ExecutionIdentity("flytesnacks", "development", "f3a9b2c1d7e8", "n0", 1)
IDENTITY = DeploymentIdentity.for_execution(
    EXECUTION,
    "flytesnacks-development",
    task_name="examples.nim_workflow.llama3-8b",
    expires_at=datetime(2026, 1, 1, 2, 0, tzinfo=UTC),
)
POD_UID = "0b0e3c9e-6f1c-4bde-9d7a-2f3d4c5b6a79"
SECRETS = NIMSecrets(ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="")


def load(case: str) -> NIM:
    return NIM.from_dict(yaml.safe_load((GOLDEN / f"{case}.config.yaml").read_text()))


def case_settings(case: str) -> ConnectorSettings:
    """<case>.settings.yaml, when there is one: the connector's settings for that case."""
    path = GOLDEN / f"{case}.settings.yaml"
    return (
        ConnectorSettings.from_mapping(yaml.safe_load(path.read_text()))
        if path.exists()
        else ConnectorSettings()
    )


def case_adapters(case: str) -> dict[str, str] | None:
    """<case>.inputs.yaml, when there is one: adapters given as task inputs, {name: URI}."""
    path = GOLDEN / f"{case}.inputs.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def rendered(case: str) -> list[dict[str, Any]]:
    return render(
        load(case), IDENTITY, case_settings(case), pod_uid=POD_UID, adapter_uris=case_adapters(case)
    )


# The adapter download programs are shipped as their full source; golden files name them
# instead (the programs have tests of their own, and their text would drown manifest changes).
PROGRAMS = {
    HF_DOWNLOAD_PROGRAM: "<the source of nim_agent/hf_download.py>",
    INPUTS_DOWNLOAD_PROGRAM: "<the source of nim_agent/flyte_download.py>",
}


def abbreviated(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: abbreviated(v) for k, v in value.items()}
    if isinstance(value, list):
        return [abbreviated(v) for v in value]
    return PROGRAMS.get(value, value) if isinstance(value, str) else value


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_there_are_golden_files_for_minimal_seed_lora_and_pvc_cache_configs() -> None:
    assert {"minimal", "seed", "lora", "pvc-cache"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_rendered_manifests_match_the_golden_file(case: str) -> None:
    text = to_yaml(abbreviated(rendered(case)))
    path = GOLDEN / f"{case}.manifests.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file {path.name}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path.name} differs; UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("case", CASES)
def test_the_pod_comes_first_then_the_service(case: str) -> None:
    assert [o["kind"] for o in rendered(case)] == ["Pod", "Service"]


@pytest.mark.parametrize("case", CASES)
def test_requests_equal_limits_for_every_container(case: str) -> None:
    for container in all_containers(rendered(case)[0]):
        resources = container["resources"]
        assert resources["requests"] == resources["limits"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert all(isinstance(v, str) for v in resources["requests"].values())


@pytest.mark.parametrize("case", CASES)
def test_no_value_is_null(case: str) -> None:
    assert "null" not in to_yaml(rendered(case))


def violations_of_restricted_pod_security(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standard "restricted" checks (v1.30 profile) that apply to our pods."""
    spec = pod["spec"]
    found = []
    pod_sc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(flag)
    allowed_volumes = {
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
        "persistentVolumeClaim", "projected", "secret",
    }  # fmt: skip
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            found.append(f"volume {volume['name']} uses {kinds - allowed_volumes}")
    for c in all_containers(pod):
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            found.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{c['name']}: allowPrivilegeEscalation not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            found.append(f"{c['name']}: capabilities not dropped")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{c['name']}: capabilities added")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"{c['name']}: runAsNonRoot not set")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            found.append(f"{c['name']}: runs as root")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{c['name']}: no seccomp profile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{c['name']}: hostPort")
    return found


def profile_of(case: str) -> str:
    nim, settings = load(case), case_settings(case)
    return nim.security_profile or settings.security_profile


RESTRICTED_CASES = [c for c in CASES if profile_of(c) == "restricted"]


@pytest.mark.parametrize("case", RESTRICTED_CASES)
def test_every_pod_passes_pod_security_restricted(case: str) -> None:
    assert violations_of_restricted_pod_security(rendered(case)[0]) == []


def violations_of_baseline_pod_security(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standard "baseline" checks (v1.30 profile) that apply to our pods."""
    spec = pod["spec"]
    found = [flag for flag in ("hostNetwork", "hostPID", "hostIPC") if spec.get(flag)]
    found += [f"volume {v['name']}: hostPath" for v in spec.get("volumes", []) if "hostPath" in v]
    baseline_caps = {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }  # fmt: skip
    contexts = [spec.get("securityContext", {})] + [
        c.get("securityContext") or {} for c in all_containers(pod)
    ]
    for sc in contexts:
        if sc.get("privileged"):
            found.append("privileged")
        if set(sc.get("capabilities", {}).get("add", [])) - baseline_caps:
            found.append("capabilities beyond the baseline set")
        if sc.get("seccompProfile", {}).get("type") == "Unconfined":
            found.append("seccomp Unconfined")
        if sc.get("procMount") not in (None, "Default"):
            found.append("procMount")
    found += [f"hostPort {c['name']}" for c in all_containers(pod) for p in c.get("ports", [])
              if p.get("hostPort")]  # fmt: skip
    return found


def test_the_nvidia_profile_is_nvidias_context_which_needs_pod_security_baseline() -> None:
    pod = rendered("nvidia-profile")[0]
    assert pod["spec"]["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 2000,
        "fsGroup": 2000,
    }
    assert all("securityContext" not in c for c in all_containers(pod))
    assert violations_of_baseline_pod_security(pod) == []
    assert violations_of_restricted_pod_security(pod) != []  # so its namespace needs "baseline"


def test_a_security_profile_the_connector_does_not_allow_is_refused_naming_the_field() -> None:
    nim = NIM(secrets=SECRETS, security_profile="nvidia")
    with pytest.raises(ConfigError) as caught:
        render_pod(nim, IDENTITY, ConnectorSettings())
    assert caught.value.problems[0].field == "security_profile"
    assert "allowed: restricted" in str(caught.value)
    default_nvidia = ConnectorSettings(security_profile="nvidia")
    pod = render_pod(NIM(secrets=SECRETS), IDENTITY, default_nvidia)
    assert pod["spec"]["securityContext"]["runAsGroup"] == 2000


def test_the_restricted_check_itself_catches_a_root_container() -> None:
    pod = rendered("minimal")[0]
    pod["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0
    pod["spec"]["containers"][0]["securityContext"].pop("allowPrivilegeEscalation")
    assert len(violations_of_restricted_pod_security(pod)) == 2


@pytest.mark.parametrize("case", CASES)
def test_secrets_are_referenced_never_inlined_and_nothing_is_pip_installed(case: str) -> None:
    pod = rendered(case)[0]
    for c in all_containers(pod):
        for var in c.get("env", []):
            if var["name"] in ("NGC_API_KEY", "HF_TOKEN"):
                assert "value" not in var
                assert set(var["valueFrom"]["secretKeyRef"]) == {"name", "key"}
        argv = c.get("command", []) + c.get("args", [])
        if argv[:2] == ["python3", "-c"] and argv[2] in PROGRAMS:
            continue  # one of our programs, shipped verbatim (they read no secret from argv)
        command = " ".join(argv)
        assert "pip install" not in command
        assert "HF_TOKEN" not in command and "NGC_API_KEY" not in command


def test_the_ngc_key_comes_from_the_group_secret_or_the_default_secret() -> None:
    def ngc_ref(nim: NIM, settings: ConnectorSettings) -> dict[str, str]:
        env = render_pod(nim, IDENTITY, settings)["spec"]["containers"][0]["env"]
        return next(v for v in env if v["name"] == "NGC_API_KEY")["valueFrom"]["secretKeyRef"]  # type: ignore[no-any-return]

    assert ngc_ref(NIM(secrets=SECRETS), ConnectorSettings(default_secret_name="ngc-default")) == {
        "name": "ngc-default",
        "key": "api_key",
    }
    grouped = NIMSecrets(
        ngc_image_secret="p", ngc_secret_key="k", secrets_prefix="", ngc_secret_group="g"
    )
    assert ngc_ref(NIM(secrets=grouped), ConnectorSettings()) == {"name": "g", "key": "k"}


def test_lora_adapters_land_in_peft_source_shared_by_both_containers() -> None:
    pod = rendered("lora")[0]
    init, nim = pod["spec"]["initContainers"][0], pod["spec"]["containers"][0]
    for c in (init, nim):
        assert {"name": "lora", "mountPath": "/opt/nim/loras"} in c["volumeMounts"]
    env = {v["name"]: v for v in init["env"]}
    assert env["NIM_PEFT_SOURCE"]["value"] == "/opt/nim/loras"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "huggingface", "key": "token"}
    assert init["resources"]["limits"]["memory"] == "4Gi"
    assert init["image"] == "ghcr.io/acme/hf-downloader:0.26"


def test_the_lora_downloader_image_defaults_to_settings_then_the_nim_image() -> None:
    nim = load("seed")
    assert render_pod(nim, IDENTITY)["spec"]["initContainers"][0]["image"] == nim.image
    settings = ConnectorSettings(lora_downloader_image="registry.local/hf:1")
    pod = render_pod(nim, IDENTITY, settings)
    assert pod["spec"]["initContainers"][0]["image"] == "registry.local/hf:1"


def test_the_health_endpoint_gets_a_leading_slash_in_the_probes() -> None:
    nim = load("cpu-only")
    container = render_pod(nim, IDENTITY)["spec"]["containers"][0]
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": 9000}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert container["startupProbe"]["failureThreshold"] == 100


def test_a_gpu_pod_tolerates_the_gpu_taint_unless_told_not_to() -> None:
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert render_pod(NIM(secrets=SECRETS), IDENTITY)["spec"]["tolerations"] == [gpu]
    assert "tolerations" not in render_pod(NIM(secrets=SECRETS, gpu=0), IDENTITY)["spec"]
    off = NIM(secrets=SECRETS, gpu_toleration=False)
    assert "tolerations" not in render_pod(off, IDENTITY)["spec"]


def test_our_labels_win_over_user_labels_and_carry_the_execution_identity() -> None:
    labels = rendered("pvc-cache")[0]["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "nim-agent"
    assert labels["team"] == "ml-platform"
    assert labels["nim-agent.dev/execution"] == "f3a9b2c1d7e8"
    assert labels["nim-agent.dev/retry"] == "1"
    assert labels["nim-agent.dev/deployment"] == IDENTITY.name


def test_the_service_selects_the_pod_is_owned_by_it_and_is_scraped() -> None:
    pod, service = rendered("minimal")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": POD_UID}
    ]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/v1/metrics"
    assert annotations["prometheus.io/port"] == "8000"
    assert "ownerReferences" not in render_service(NIM(secrets=SECRETS), IDENTITY)["metadata"]


@pytest.mark.parametrize("port", [8000, 9123])
def test_the_service_is_headless_and_its_port_is_the_containers(port: int) -> None:
    nim = NIM(secrets=SECRETS, port=port)
    pod, service = render_pod(nim, IDENTITY), render_service(nim, IDENTITY)
    # No virtual IP, so no port translation: the endpoint's port must be the pod's own.
    assert service["spec"]["clusterIP"] == "None"
    (container_port,) = pod["spec"]["containers"][0]["ports"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == service_port["targetPort"] == container_port["containerPort"]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert IDENTITY.endpoint(port).endswith(f":{port}")


def test_the_endpoint_is_the_services_cluster_dns_name() -> None:
    pod, service = rendered("minimal")
    name = service["metadata"]["name"]
    expected = f"http://{name}.flytesnacks-development.svc.cluster.local:8000"
    assert IDENTITY.endpoint(8000) == expected
    assert pod["metadata"]["annotations"]["nim-agent.dev/endpoint"] == expected
    assert pod["metadata"]["annotations"]["nim-agent.dev/expires-at"] == "2026-01-01T02:00:00Z"


def test_a_cache_pvc_is_refused_when_the_connector_disallows_it() -> None:
    with pytest.raises(ConfigError) as caught:
        render_pod(
            load("pvc-cache"),
            IDENTITY,
            ConnectorSettings(allow_cache_pvc=False, service_accounts=("*",)),
        )
    assert caught.value.problems[0].field == "cache_pvc"


def test_namespace_follows_the_execution_unless_an_allowed_one_is_chosen() -> None:
    settings = ConnectorSettings(allowed_namespaces=("nim-shared",))
    assert namespace_for(NIM(secrets=SECRETS), "team-a", settings) == "team-a"
    assert namespace_for(NIM(secrets=SECRETS), None, settings) == "default"
    shared = NIM(secrets=SECRETS, namespace="nim-shared")
    assert namespace_for(shared, "team-a", settings) == "nim-shared"
    with pytest.raises(ConfigError) as caught:
        namespace_for(NIM(secrets=SECRETS, namespace="kube-system"), "team-a", settings)
    assert caught.value.problems[0].field == "namespace"
    assert "kube-system" in str(caught.value)


DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@given(st.text(min_size=0, max_size=300))
def test_local_names_are_dns_1035_and_at_most_63_for_any_task_name(task_name: str) -> None:
    name = local_deployment_name_for(task_name, nonce="")
    assert DNS_1035.match(name) and len(name) <= 63
    assert name == local_deployment_name_for(task_name, nonce="")


@given(
    st.text(max_size=80), st.text(max_size=80), st.text(max_size=80), st.text(max_size=80),
    st.integers(min_value=0, max_value=100),
)  # fmt: skip
def test_execution_names_are_dns_1035_and_at_most_63(
    project: str, domain: str, execution: str, node: str, retry: int
) -> None:
    name = deployment_name_for(project, domain, execution, node, retry)
    assert DNS_1035.match(name) and len(name) <= 63


def test_execution_names_are_deterministic_and_differ_per_retry() -> None:
    a = deployment_name_for("p", "d", "exec1", "n0", 0)
    assert a == deployment_name_for("p", "d", "exec1", "n0", 0)
    assert a != deployment_name_for("p", "d", "exec1", "n0", 1)
    assert a != deployment_name_for("p2", "d", "exec1", "n0", 0)
    assert a.startswith("nim-exec1-n0-0-")


def test_local_names_keep_the_end_of_a_long_task_name_and_are_random_per_run() -> None:
    name = local_deployment_name_for("My.Very_Long." + "Module." * 10 + "Llama3_8B")
    assert name.startswith("nim-") and "llama3-8b" in name
    assert local_deployment_name_for("t") != local_deployment_name_for("t")


def test_the_sidecar_spec_reuses_the_pod_containers_and_volumes() -> None:
    nim = load("seed")
    pod_spec = render_pod(nim, IDENTITY)["spec"]
    sidecar = sidecar_pod_spec(nim)
    *downloads, server = sidecar["initContainers"]
    assert downloads == pod_spec["initContainers"]
    assert server == {**pod_spec["containers"][0], "restartPolicy": "Always"}
    for key in ("volumes", "imagePullSecrets", "tolerations"):
        assert sidecar[key] == pod_spec[key]
    assert "restartPolicy" not in sidecar and "runAsNonRoot" not in sidecar["securityContext"]


def test_the_sidecar_server_is_a_native_sidecar_after_the_downloads() -> None:
    # Kubernetes starts the task's container only after a restartPolicy-Always init container's
    # startup probe has passed, and the init containers before it have completed.
    sidecar = sidecar_pod_spec(load("seed"))
    names = [c["name"] for c in sidecar["initContainers"]]
    assert names == ["lora-downloader", "nim"]
    server = sidecar["initContainers"][-1]
    assert server["restartPolicy"] == "Always" and "startupProbe" in server
    assert "restartPolicy" not in sidecar["initContainers"][0]
    assert sidecar["containers"] == []


def test_the_sidecar_form_takes_the_security_profile_on_its_containers() -> None:
    nim = NIM(secrets=SECRETS, security_profile="nvidia")
    sidecar = sidecar_pod_spec(nim)
    assert sidecar["securityContext"] == {"fsGroup": 2000}
    (server,) = sidecar["initContainers"]
    assert server["securityContext"] == {"runAsUser": 1000, "runAsGroup": 2000}


def test_the_sidecar_pod_template_has_what_the_seed_describes() -> None:
    from flytekit import PodTemplate
    from kubernetes.client import V1PodSpec

    nim = load("seed")
    template = nim.pod_template
    assert isinstance(template, PodTemplate) and isinstance(template.pod_spec, V1PodSpec)
    spec = template.pod_spec
    nim_container = spec.init_containers[-1]
    assert nim_container.name == "nim" and nim_container.restart_policy == "Always"
    assert nim_container.image == "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0"
    assert nim_container.resources.requests == {"cpu": "2", "memory": "20Gi", "nvidia.com/gpu": "1"}
    assert nim_container.resources.limits == nim_container.resources.requests
    assert nim_container.startup_probe.failure_threshold == 100
    assert nim_container.env[0].value_from.secret_key_ref.key == "ngc_api_key"
    volumes = {v.name: v for v in spec.volumes}
    assert volumes["dshm"].empty_dir.medium == "Memory"
    assert volumes["dshm"].empty_dir.size_limit == "16Gi"
    assert volumes["nim-cache"].empty_dir is not None
    mounts = {m.mount_path for m in nim_container.volume_mounts}
    assert {"/dev/shm", "/opt/nim/.cache", "/opt/nim/lora_adapters"} <= mounts
    init = spec.init_containers[0]
    assert init.name == "lora-downloader"
    assert init.volume_mounts[0].mount_path == "/opt/nim/lora_adapters"
    assert spec.containers == []
    assert nim.base_url == "http://localhost:8000"


@pytest.mark.parametrize(
    ("allowed", "account", "ok"),
    [
        (("default",), None, True),
        (("default",), "default", True),
        (("default",), "nim-reader", False),
        (("nim-reader",), None, False),
        (("*",), "anything", True),
    ],
)
def test_a_server_runs_only_under_a_service_account_the_operator_allows(
    allowed: tuple[str, ...], account: str | None, ok: bool
) -> None:
    settings = ConnectorSettings(service_accounts=allowed)
    nim = NIM(secrets=SECRETS, service_account=account)
    if ok:
        assert render_pod(nim, IDENTITY, settings)["spec"].get("serviceAccountName") == account
        return
    with pytest.raises(ConfigError) as caught:
        render_pod(nim, IDENTITY, settings)
    assert caught.value.problems[0].field == "service_account"
    assert "service_accounts" in str(caught.value)


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [(None, 7200), (timedelta(minutes=45), 2700), (timedelta(seconds=0.2), 1)],
)
def test_the_kubelet_enforces_the_ttl_as_active_deadline_seconds(
    ttl: timedelta | None, seconds: int
) -> None:
    pod = render_pod(NIM(secrets=SECRETS), IDENTITY, ConnectorSettings(), ttl=ttl)
    assert pod["spec"]["activeDeadlineSeconds"] == seconds


def test_flyte_adds_the_task_container_beside_the_native_sidecar() -> None:
    from flytekit import PodTemplate, Resources, task
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    nim = load("seed")

    @task(
        pod_template=PodTemplate(pod_spec=nim.pod_template.pod_spec),
        requests=Resources(cpu="1", mem="1Gi"),
        limits=Resources(cpu="1", mem="1Gi"),
    )
    def generate(prompt: str) -> str:
        return prompt

    settings = SerializationSettings(ImageConfig.auto_default_image())
    template = get_serializable(OrderedDict(), settings, generate).template
    pod_spec = template.k8s_pod.pod_spec
    assert [c["name"] for c in pod_spec["containers"]] == ["primary"]
    assert [c["name"] for c in pod_spec["initContainers"]] == ["lora-downloader", "nim"]
    assert pod_spec["initContainers"][-1]["restartPolicy"] == "Always"


def test_the_service_of_a_deployment_does_not_depend_on_the_settings_policy() -> None:
    nim = NIM(secrets=SECRETS, security_profile="nvidia", cache_pvc="cache")
    service = render_service(nim, IDENTITY, pod_uid=POD_UID)
    allowed = ConnectorSettings(allowed_security_profiles=("nvidia",))
    assert service == render(nim, IDENTITY, allowed, pod_uid=POD_UID)[1]
