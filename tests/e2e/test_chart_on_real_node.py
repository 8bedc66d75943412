"""The connector as operators run it (issue 13): the image built from the Dockerfile by
``make image``, installed with ``helm install`` on the real node nim-real-0, called through the
chart's Service.

Everything here is real: containerd pulls the image from the local registry, the kubelet runs the
chart's gRPC probes against the connector, kube-proxy routes the Service's ClusterIP from this
machine to the replicas, the connector talks to the API server through the in-cluster config with
the chart's ServiceAccount, and the NIM it starts is the NIM stand-in image on the same node.

Needs ``make image`` (``make e2e`` runs it) and the real node (started when not running).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flyteidl.core import execution_pb2
from kubernetes import client

from tests.chart_release import ChartRelease, registry_digest, standin_task_template
from tests.cluster import describe_namespace, our_pods, wait_for
from tests.connector_server import (
    create_request,
    delete_request,
    exec_name,
    execution,
    output_string,
    poll,
)
from tests.realnode import NODE_NAME, ImagesEnv

pytestmark = pytest.mark.real_node

TE = execution_pb2.TaskExecution
# A real pull from the local registry and a real start, on a loaded 2-core machine.
NIM_READY_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def release(
    real_node_images: ImagesEnv,
    kubeconfig_path: Path,
    helm: Path,
    core_v1: client.CoreV1Api,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ChartRelease]:
    """The chart installed with the built image (cluster-wide RBAC, as by default), two
    replicas on the real node, Ready; in a namespace of its own, deleted afterwards."""
    namespace = f"t-chart-real-{uuid.uuid4().hex[:6]}"
    core_v1.create_namespace(
        {"metadata": {"name": namespace, "labels": {"nim-agent.dev/test": "true"}}}
    )
    work = tmp_path_factory.mktemp("chart-real")
    try:
        with ChartRelease(
            kubeconfig_path, helm, namespace, real_node_images["NIM_AGENT_IMAGE"], work_dir=work
        ) as installed:
            installed.install()
            yield installed
    finally:
        core_v1.delete_namespace(namespace)


# ------------------------------------------------------------------------------ the pods


def test_both_replicas_run_the_built_image_on_the_real_node_and_pass_their_grpc_probes(
    release: ChartRelease, real_node_images: ImagesEnv
) -> None:
    images = real_node_images
    pods = release.ready_pods()
    assert len(pods) == 2, release.describe()
    digest = registry_digest(images, images["NIM_AGENT_IMAGE"])
    for pod in pods:
        assert pod.spec.node_name == NODE_NAME, release.describe()
        (container,) = pod.spec.containers
        # The chart's probes are gRPC health checks; the real kubelet ran them to Ready.
        for probe in (container.startup_probe, container.readiness_probe, container.liveness_probe):
            assert probe.grpc is not None and probe.grpc.port == 8000, probe
        (status,) = pod.status.container_statuses
        assert status.ready and status.started, status
        assert status.restart_count == 0, release.describe()
        # containerd pulled exactly what `make image` pushed.
        assert status.image_id.endswith("@" + digest), (status.image_id, digest)
    # The connector logged its start, with the in-cluster API access working (no error lines).
    log = release.log_tail(200)
    assert "nim-agent serving task types nim, nim-teardown on :8000" in log, log


def test_the_connector_runs_as_uid_1000_on_a_read_only_root_filesystem(
    release: ChartRelease,
) -> None:
    pod = release.ready_pods()[0].metadata.name
    # What the process itself sees, inside the container the kubelet made.
    probe = (
        "import errno, json, os\n"
        "root = [l.split() for l in open('/proc/self/mounts') if l.split()[1] == '/'][-1]\n"
        "def write(path):\n"
        "    try:\n"
        "        open(path, 'w').close(); os.unlink(path); return 'ok'\n"
        "    except OSError as e:\n"
        "        return errno.errorcode[e.errno]\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'euid': os.geteuid(),\n"
        "  'root_options': root[3].split(','), 'opt': write('/opt/nim-agent/probe'),\n"
        "  'etc': write('/etc/probe'), 'tmp': write('/tmp/probe'),\n"
        "  'home': os.environ.get('HOME')}))\n"
    )
    result = release.exec(pod, "python3", "-c", probe)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["uid"], seen["gid"], seen["euid"]) == (1000, 1000, 1000), seen
    assert "ro" in seen["root_options"], seen
    # EROFS, not EACCES: the filesystem refuses even where permissions would not matter.
    assert seen["opt"] == "EROFS" and seen["etc"] == "EROFS", seen
    # /tmp is the chart's emptyDir (and HOME): the one writable place.
    assert seen["tmp"] == "ok" and seen["home"] == "/tmp", seen


def test_metrics_are_scraped_through_the_service(release: ChartRelease) -> None:
    text = release.metrics_via_service()
    families = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    assert any(f.startswith("nim_agent_") for f in families), sorted(families)
    assert any(f.startswith("flyte_connector_") for f in families), sorted(families)


def test_grpc_health_answers_serving_through_the_service(release: ChartRelease) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(release.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------------------ the job


def test_the_connector_runs_a_nim_standin_on_the_real_node_to_succeeded_with_the_charts_rbac(
    release: ChartRelease,
    real_node_images: ImagesEnv,
    nim_namespace: str,
    core_v1: client.CoreV1Api,
) -> None:
    template = standin_task_template(real_node_images)
    meta = release.stub.CreateTask(
        create_request(template, execution(exec_name()), nim_namespace), timeout=10
    ).resource_meta

    resource, phases = poll(release, meta, timeout=NIM_READY_TIMEOUT_S, interval=1.0)

    assert resource.phase == TE.SUCCEEDED, (
        phases,
        resource.message,
        describe_namespace(core_v1.api_client, nim_namespace),
    )
    [pod] = our_pods(core_v1, nim_namespace)
    assert pod.spec.node_name == NODE_NAME
    endpoint = output_string(resource)
    assert endpoint == f"http://{pod.metadata.name}.{nim_namespace}.svc.cluster.local:8000"
    # The server behind the endpoint answers for real (the pod's address: a headless Service).
    with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8000/v1/models", timeout=10) as r:
        models = json.loads(r.read())
    assert models["data"][0]["id"] == "meta/llama3-8b-instruct", models

    release.stub.DeleteTask(delete_request(meta), timeout=10)
    wait_for(
        lambda: not our_pods(core_v1, nim_namespace),
        timeout=90,
        what="the NIM pod to go after DeleteTask",
    )


# ------------------------------------------------------------------------------ stopping


def test_a_stopping_replica_keeps_serving_while_the_service_forgets_it(
    release: ChartRelease,
) -> None:
    import grpc
    from flyteidl.admin import agent_pb2
    from flyteidl.service import agent_pb2_grpc

    delay = int(release.values.get("shutdownDelaySeconds", 5))
    assert delay > 0, "the chart's default shutdownDelaySeconds is in force"
    pod = release.ready_pods()[0]
    address = f"{pod.status.pod_ip}:8000"
    discovery = client.DiscoveryV1Api(release.core.api_client)

    def forgotten() -> bool:
        slices = discovery.list_namespaced_endpoint_slice(
            release.namespace, label_selector=f"kubernetes.io/service-name={release.name}"
        ).items
        return not any(
            pod.status.pod_ip in e.addresses and e.conditions.ready
            for s in slices
            for e in s.endpoints or []
        )

    deleted = time.monotonic()
    release.core.delete_namespaced_pod(pod.metadata.name, release.namespace)
    # The Service stops sending it new connections (no ready endpoint with its address) ...
    wait_for(forgotten, timeout=30, what=f"the Service to drop {pod.metadata.name}")
    forgotten_after = time.monotonic() - deleted
    assert forgotten_after < delay - 1, (
        f"the Service took {forgotten_after:.1f}s to drop a stopping replica: longer than the "
        f"chart's shutdownDelaySeconds ({delay}) allows"
    )
    # ... and by 2 s the kubelet has acted on the delete (it sends SIGTERM within ~1 s here).
    time.sleep(max(0.0, 2.0 - forgotten_after))
    # ... while it still answers a client whose connection was made before (straight to the
    # pod here). Without the preStop delay the kubelet sends SIGTERM at once, the server stops
    # listening, and a connection made in the time the Service takes to forget it is refused.
    with grpc.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentMetadataServiceStub(channel)
        answer = stub.ListAgents(agent_pb2.ListAgentsRequest(), timeout=5)
    answered_after = time.monotonic() - deleted
    assert {t.name for a in answer.agents for t in a.supported_task_categories} >= {"nim"}
    assert answered_after < delay, f"answered {answered_after:.1f}s after the delete"
    # The Deployment replaces it.
    wait_for(
        lambda: (
            len(release.ready_pods()) == 2
            and pod.metadata.name not in {p.metadata.name for p in release.pods()}
        ),
        timeout=180,
        what="the replacement replica Ready and the stopped one gone",
        describe=release.describe,
    )
