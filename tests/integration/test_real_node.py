"""The real node ``nim-real-0`` (devcluster/realnode.sh) runs real containers (issue 12: 1, 2).

Everything here comes from the real kubelet, containerd and runc: images pulled from the local
registry, an HTTP readiness probe, cluster DNS, a Service through kube-proxy, the API server
through the ``kubernetes`` Service with a ServiceAccount token, the kubelet's own image pull error.
Checks that run inside a pod are a small Python program whose JSON answer is read back through the
API server's log endpoint (which calls the kubelet).
"""

from __future__ import annotations

import json
import socket
import textwrap
import urllib.request
from typing import Any

import pytest
from kubernetes import client

from tests.cluster import describe_namespace, wait_for
from tests.realnode import (
    NODE_IP,
    NODE_NAME,
    POD_CIDR_PREFIX,
    ImagesEnv,
    RealNodeUnavailable,
    ensure_real_node,
    real_node_pod,
)

pytestmark = pytest.mark.real_node

# Generous for a loaded 2-core machine: pulls come from a registry on the same machine.
POD_TIMEOUT = 180


@pytest.fixture(scope="module")
def images(kubeconfig_path: object) -> ImagesEnv:
    try:
        return ensure_real_node()
    except RealNodeUnavailable as e:
        reason = str(e)
    pytest.fail(reason, pytrace=False)


def pod_ready(core_v1: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    pod = core_v1.read_namespaced_pod(name, namespace)
    for cond in pod.status.conditions or []:
        if cond.type == "Ready" and cond.status == "True":
            return pod
    return None


def pod_finished(core_v1: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    pod = core_v1.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in ("Succeeded", "Failed") else None


def kubelet_events(core_v1: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    events = core_v1.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    ).items
    return [e for e in events if e.source and e.source.component == "kubelet"]


def registry_digest(images: ImagesEnv, ref: str) -> str:
    """The manifest digest the local registry serves for ``ref`` (host/repo:tag)."""
    repo_tag = ref.removeprefix(images.registry + "/")
    repo, _, tag = repo_tag.rpartition(":")
    request = urllib.request.Request(
        f"http://{images.registry}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.headers["Docker-Content-Digest"])


def host_outside_address() -> str | None:
    """The machine's own address towards the outside (a UDP connect only looks the route up)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))
        except OSError:
            return None
        return str(s.getsockname()[0])


def test_the_real_node_is_registered_with_its_labels_taints_and_gpus(
    images: ImagesEnv, core_v1: client.CoreV1Api
) -> None:
    node = core_v1.read_node(NODE_NAME)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True", node.status.conditions
    assert node.metadata.labels["nim-agent.dev/node"] == "real"
    assert node.metadata.labels["kubernetes.io/hostname"] == NODE_NAME
    # Not a kwok node: kwok must leave it (and its pods) to the real kubelet.
    assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})
    taints = {(t.key, t.value, t.effect) for t in node.spec.taints or []}
    assert ("nvidia.com/gpu", "present", "NoSchedule") in taints
    assert ("nim-agent.dev/node", "real", "NoSchedule") in taints
    assert node.status.capacity["nvidia.com/gpu"] == "8"
    assert node.status.allocatable["nvidia.com/gpu"] == "8"
    info = node.status.node_info
    assert info.kubelet_version == "v1.37.2"
    assert info.container_runtime_version.startswith("containerd://1.6.")
    assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == NODE_IP


def test_a_pod_pulls_from_the_local_registry_runs_and_is_ready_by_its_http_probe(
    images: ImagesEnv, core_v1: client.CoreV1Api, namespace: str
) -> None:
    core_v1.create_namespaced_pod(
        namespace,
        real_node_pod(
            "web", images.python_base, ["python3", "-m", "http.server", "8080"], readiness_port=8080
        ),
    )
    pod = wait_for(
        lambda: pod_ready(core_v1, namespace, "web"),
        timeout=POD_TIMEOUT,
        what="pod web Ready on the real node",
        describe=lambda: describe_namespace(core_v1.api_client, namespace),
    )
    assert pod.spec.node_name == NODE_NAME
    assert pod.status.pod_ip.startswith(POD_CIDR_PREFIX)
    status = pod.status.container_statuses[0]
    # The digest containerd pulled is the one the local registry serves for the tag.
    assert status.image_id.endswith("@" + registry_digest(images, images.python_base))
    assert status.image_id.startswith(images.registry + "/")
    # The kubelet's own events (an image already on the node is not pulled again).
    reasons = {e.reason for e in kubelet_events(core_v1, namespace, "web")}
    assert {"Pulled", "Created", "Started"} <= reasons, reasons
    # The probe really ran: the server logged the kubelet's GET / (kube-probe/1.37).
    logs = core_v1.read_namespaced_pod_log("web", namespace)
    assert "kube-probe/1.37" in logs or '"GET / HTTP/1.1" 200' in logs, logs


def test_a_pod_that_does_not_select_the_real_node_never_lands_there(
    images: ImagesEnv, core_v1: client.CoreV1Api, namespace: str
) -> None:
    # Tolerates the GPU taint (as NIM pods do) and may only go to the real node by hostname, but
    # does not select it by nim-agent.dev/node: the node's own taint keeps it out.
    pod = real_node_pod("stray", images.python_base, ["sleep", "60"])
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE_NAME}
    core_v1.create_namespaced_pod(namespace, pod)
    created = core_v1.read_namespaced_pod("stray", namespace)
    assert all(t.key != "nim-agent.dev/node" for t in created.spec.tolerations or [])

    def unschedulable() -> str | None:
        p = core_v1.read_namespaced_pod("stray", namespace)
        for cond in p.status.conditions or []:
            if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                return str(cond.message)
        return None

    message = wait_for(unschedulable, timeout=60, what="pod stray Unschedulable")
    # The scheduler does not name the taint; the GPU one is tolerated, so it is the node's own.
    assert "1 node(s) had untolerated taint" in message, message
    # A pod that selects it gets the toleration from the admission policy.
    selecting = real_node_pod("selecting", images.python_base, ["sleep", "60"])
    core_v1.create_namespaced_pod(namespace, selecting)
    tolerations = core_v1.read_namespaced_pod("selecting", namespace).spec.tolerations
    assert any(
        t.key == "nim-agent.dev/node" and t.value == "real" and t.effect == "NoSchedule"
        for t in tolerations
    ), tolerations


PROBE_PROGRAM = textwrap.dedent(
    """
    import errno, json, os, socket, ssl, sys, time, urllib.error, urllib.request

    service, namespace, host_address, hub_model = sys.argv[1:5]
    out = {}
    name = f"{service}.{namespace}.svc.cluster.local"
    out["resolved"] = socket.gethostbyname(name)
    # kube-proxy programs a new endpoint within a second or so of the pod turning Ready: until
    # then the Service refuses connections, as on any cluster.
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{name}:8080/hello.txt", timeout=20) as r:
                out["service_body"] = r.read().decode().strip()
            break
        except urllib.error.URLError as e:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    # The Hugging Face Hub stand-in, by its cluster DNS name (HF_ENDPOINT).
    with urllib.request.urlopen(hub_model, timeout=20) as r:
        out["hub_status"] = r.status
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    token = open(f"{sa}/token").read()
    context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
    api = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    out["api"] = api
    review = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    request = urllib.request.Request(
        f"{api}/apis/authentication.k8s.io/v1/selfsubjectreviews", data=review.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST")
    with urllib.request.urlopen(request, context=context, timeout=20) as r:
        out["whoami"] = json.load(r)["status"]["userInfo"]["username"]
    out["routes"] = [line.split()[1] for line in open("/proc/net/route").read().splitlines()[1:]]
    # Route look-ups only: connecting a UDP socket sends nothing.
    out["route_to"] = {}
    for address in ["198.51.100.1", "8.8.8.8", host_address]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect((address, 53))
            out["route_to"][address] = "routable"
        except OSError as e:
            out["route_to"][address] = errno.errorcode.get(e.errno, str(e.errno))
        finally:
            s.close()
    try:
        socket.getaddrinfo("pypi.org", 443)
        out["outside_name"] = "resolved"
    except socket.gaierror as e:
        out["outside_name"] = f"not resolved: {e}"
    # The host's own ports (here the kubelet's) are closed to pods; DNS and the API are not.
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect(("10.244.0.1", 10250))
        out["kubelet_port"] = "open"
    except OSError as e:
        out["kubelet_port"] = errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
    print(json.dumps(out))
    """
)


def test_a_pod_resolves_and_reaches_a_service_and_the_api_server_and_nothing_outside(
    images: ImagesEnv, core_v1: client.CoreV1Api, namespace: str
) -> None:
    server = real_node_pod(
        "hello",
        images.python_base,
        [
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo hello-from-$(hostname) > /tmp/www/hello.txt && "
            "cd /tmp/www && exec python3 -m http.server 8080",
        ],
        labels={"app": "hello"},
        readiness_port=8080,
    )
    core_v1.create_namespaced_pod(namespace, server)
    service = core_v1.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "hello"},
            "spec": {"selector": {"app": "hello"}, "ports": [{"port": 8080, "targetPort": 8080}]},
        },
    )
    wait_for(
        lambda: pod_ready(core_v1, namespace, "hello"),
        timeout=POD_TIMEOUT,
        what="pod hello Ready",
        describe=lambda: describe_namespace(core_v1.api_client, namespace),
    )
    outside = host_outside_address() or "192.0.2.2"
    client_pod = real_node_pod(
        "probe",
        images.python_base,
        [
            "python3",
            "-c",
            PROBE_PROGRAM,
            "hello",
            namespace,
            outside,
            f"{images['HF_ENDPOINT']}/api/models/{images['HF_FIXTURE_REPO']}",
        ],
        restart_policy="Never",
    )
    core_v1.create_namespaced_pod(namespace, client_pod)
    pod = wait_for(
        lambda: pod_finished(core_v1, namespace, "probe"),
        timeout=POD_TIMEOUT,
        what="pod probe finished",
        describe=lambda: describe_namespace(core_v1.api_client, namespace),
    )
    logs = core_v1.read_namespaced_pod_log("probe", namespace)
    assert pod.status.phase == "Succeeded", logs
    result = json.loads(logs.strip().splitlines()[-1])

    assert result["resolved"] == service.spec.cluster_ip
    assert result["service_body"] == "hello-from-hello"
    assert images["HF_ENDPOINT"].endswith(".svc.cluster.local")
    assert result["hub_status"] == 200
    assert result["api"] == "https://10.96.0.1:443"
    assert result["whoami"] == f"system:serviceaccount:{namespace}:default"
    # Routes: the pod range and the Service range, no default route (destination 00000000).
    assert "00000000" not in result["routes"], result["routes"]
    assert set(result["route_to"].values()) == {"ENETUNREACH"}, result["route_to"]
    assert result["outside_name"].startswith("not resolved"), result["outside_name"]
    assert result["kubelet_port"] == "ECONNREFUSED", result["kubelet_port"]


def test_a_missing_tag_is_the_kubelets_real_image_pull_error(
    images: ImagesEnv, core_v1: client.CoreV1Api, namespace: str
) -> None:
    missing = images.python_base.rpartition(":")[0] + ":no-such-tag"
    core_v1.create_namespaced_pod(namespace, real_node_pod("nopull", missing, ["python3"]))

    def pull_error() -> client.V1ContainerStateWaiting | None:
        pod = core_v1.read_namespaced_pod("nopull", namespace)
        for status in pod.status.container_statuses or []:
            waiting = status.state.waiting
            if waiting and waiting.reason in ("ErrImagePull", "ImagePullBackOff"):
                return waiting
        return None

    waiting = wait_for(
        pull_error,
        timeout=POD_TIMEOUT,
        what="ErrImagePull / ImagePullBackOff",
        describe=lambda: describe_namespace(core_v1.api_client, namespace),
    )
    assert waiting.reason in ("ErrImagePull", "ImagePullBackOff")
    failed = wait_for(
        lambda: [
            e
            for e in kubelet_events(core_v1, namespace, "nopull")
            if e.reason == "Failed" and missing in (e.message or "")
        ],
        timeout=60,
        what="the kubelet's Failed event for the pull",
    )
    assert "not found" in failed[0].message, failed[0].message
    assert failed[0].source.host == NODE_NAME


def test_the_nim_standin_image_runs_as_uid_1000_with_its_program_and_a_writable_cache(
    images: ImagesEnv, core_v1: client.CoreV1Api, namespace: str
) -> None:
    # The image's own settings: the stand-in program, its cache folder (writable by uid 1000 as in
    # NIM images, also without a volume) and the image reference it derives its model id from.
    check = (
        "import json, os, pwd; print(json.dumps({"
        "'uid': os.getuid(), 'user': pwd.getpwuid(os.getuid()).pw_name,"
        "'program': os.path.isfile('/opt/nim-standin/nim_standin.py'),"
        "'cache_writable': os.access(os.environ['NIM_CACHE_PATH'], os.W_OK),"
        "'cache': os.environ['NIM_CACHE_PATH'], 'image': os.environ['STANDIN_IMAGE']}))"
    )
    core_v1.create_namespaced_pod(
        namespace,
        real_node_pod(
            "nim-image",
            images["NIM_STANDIN_IMAGE"],
            ["python3", "-c", check],
            restart_policy="Never",
        ),
    )
    pod = wait_for(
        lambda: pod_finished(core_v1, namespace, "nim-image"),
        timeout=POD_TIMEOUT,
        what="pod nim-image finished",
        describe=lambda: describe_namespace(core_v1.api_client, namespace),
    )
    logs = core_v1.read_namespaced_pod_log("nim-image", namespace)
    assert pod.status.phase == "Succeeded", logs
    assert json.loads(logs.strip().splitlines()[-1]) == {
        "uid": 1000,
        "user": "nim",
        "program": True,
        "cache_writable": True,
        "cache": "/opt/nim/.cache",
        "image": images["NIM_STANDIN_IMAGE"],
    }


HUB_PROGRAM = textwrap.dedent(
    """
    import json, os, sys, urllib.error, urllib.request

    endpoint, public, private = sys.argv[1:4]
    token = os.environ["HF_TOKEN"]

    def status(path, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"{endpoint}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=20) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    print(json.dumps({
        "public": status(f"/api/models/{public}"),
        "public_weights": status(f"/{public}/resolve/main/adapter_model.safetensors"),
        "private_without_token": status(f"/api/models/{private}"),
        "private_with_token": status(f"/api/models/{private}", token),
    }))
    """
)


def test_the_hub_standin_serves_pods_at_hf_endpoint_with_the_fixture_token(
    images: ImagesEnv, core_v1: client.CoreV1Api, namespace: str
) -> None:
    # The node script's Secret holds the token the Hub accepts; a test namespace gets its own copy.
    source = core_v1.read_namespaced_secret(
        images["HF_FIXTURE_TOKEN_SECRET"], images["HF_FIXTURE_TOKEN_SECRET_NAMESPACE"]
    )
    core_v1.create_namespaced_secret(
        namespace, {"metadata": {"name": "hf-token"}, "data": {"token": source.data["token"]}}
    )
    pod = real_node_pod(
        "hub-client",
        images.python_base,
        [
            "python3",
            "-c",
            HUB_PROGRAM,
            images["HF_ENDPOINT"],
            images["HF_FIXTURE_REPO"],
            images["HF_FIXTURE_PRIVATE_REPO"],
        ],
        restart_policy="Never",
    )
    pod["spec"]["containers"][0]["env"] = [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    ]
    core_v1.create_namespaced_pod(namespace, pod)
    finished = wait_for(
        lambda: pod_finished(core_v1, namespace, "hub-client"),
        timeout=POD_TIMEOUT,
        what="pod hub-client finished",
        describe=lambda: describe_namespace(core_v1.api_client, namespace),
    )
    logs = core_v1.read_namespaced_pod_log("hub-client", namespace)
    assert finished.status.phase == "Succeeded", logs
    # The weights come through the Hub's redirect to its "CDN" port, by the same Service name.
    assert json.loads(logs.strip().splitlines()[-1]) == {
        "public": 200,
        "public_weights": 200,
        "private_without_token": 401,
        "private_with_token": 200,
    }
