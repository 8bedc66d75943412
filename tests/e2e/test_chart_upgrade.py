"""``helm upgrade`` from the previous chart to this one while a NIM deployment is live (issue 13).

The previous chart is charts/nim-agent as git history last had it before its latest change,
packaged with helm; both run the image ``make image`` built, two replicas on the real node. The NIM
is the stand-in image on the real node. A module of its own: no other connector release may be
installed meanwhile (a cluster-wide one would follow, and reap, this NIM too).
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from flyteidl.core import execution_pb2
from kubernetes import client

from tests.chart_release import (
    CHART,
    ChartRelease,
    previous_chart,
    real_node_values,
    standin_task_template,
)
from tests.cluster import our_pods, wait_for
from tests.connector_server import (
    create_request,
    exec_name,
    execution,
    get_request,
    output_string,
    poll,
)
from tests.realnode import ImagesEnv

pytestmark = pytest.mark.real_node

TE = execution_pb2.TaskExecution
NIM_READY_TIMEOUT_S = 180
# Long enough for the install, the NIM's start and the upgrade's rollout of two replicas on a
# loaded 2-core machine; the NIM must outlive the upgrade for the test to mean anything.
TTL = timedelta(seconds=120)


def chart_version(chart_yaml: str) -> str:
    found = re.search(r"^version:\s*(\S+)", chart_yaml, re.M)
    assert found, chart_yaml
    return found.group(1)


def test_helm_upgrade_from_the_previous_chart_keeps_following_a_live_nim_until_its_ttl(
    real_node_images: ImagesEnv,
    kubeconfig_path: Path,
    helm: Path,
    nim_namespace: str,
    core_v1: client.CoreV1Api,
    tmp_path: Path,
) -> None:
    old_chart, commit = previous_chart(helm, tmp_path)
    image = real_node_images["NIM_AGENT_IMAGE"]
    # The cleanup sweep every few seconds, so the ttl is enforced soon after it passes.
    values = real_node_values(image, settings={"reapInterval": "5s"})
    # A pod annotation makes the replicas roll even where the templates did not change.
    upgraded = {**values, "podAnnotations": {"nim-agent.dev/test-upgraded": "yes"}}
    # Not the release name the docs use: chart 0.1.0 gave the connector the Docker-link variables
    # of its own Service, which for a Service named nim-agent (NIM_AGENT_SERVICE_HOST, ...) it
    # refused as settings: with that name the old chart never ran on a real kubelet.
    release = ChartRelease(
        kubeconfig_path,
        helm,
        nim_namespace,
        image,
        release="upgrade",
        values=values,
        work_dir=tmp_path,
    )
    with release:
        release.install(old_chart)
        old_pods = {p.metadata.name for p in release.ready_pods()}
        template = standin_task_template(real_node_images, ttl=TTL)
        meta = release.stub.CreateTask(
            create_request(template, execution(exec_name()), nim_namespace), timeout=10
        ).resource_meta
        resource, phases = poll(release, meta, timeout=NIM_READY_TIMEOUT_S, interval=1.0)
        assert resource.phase == TE.SUCCEEDED, (phases, resource.message, release.describe())
        [nim_pod] = our_pods(core_v1, nim_namespace)

        release.upgrade(CHART, upgraded)

        # Only replicas of the new revision serve now.
        new_pods = release.ready_pods()
        assert new_pods, release.describe()
        assert not {p.metadata.name for p in new_pods} & old_pods, release.describe()
        assert all(
            (p.metadata.annotations or {}).get("nim-agent.dev/test-upgraded") == "yes"
            for p in new_pods
        ), release.describe()
        deployment = release.apps.read_namespaced_deployment(release.name, nim_namespace)
        current = chart_version((CHART / "Chart.yaml").read_text())
        assert deployment.metadata.labels["helm.sh/chart"] == f"nim-agent-{current}"
        # They follow the NIM the old ones started: the same pod, still SUCCEEDED, same endpoint.
        again = release.stub.GetTask(get_request(meta), timeout=10).resource
        assert again.phase == TE.SUCCEEDED, again.message
        assert output_string(again) == output_string(resource)
        live = core_v1.read_namespaced_pod(nim_pod.metadata.name, nim_namespace)
        assert live.metadata.uid == nim_pod.metadata.uid
        assert live.metadata.deletion_timestamp is None

        # At its ttl the upgraded release stops the NIM server: its pod is deleted (or, with
        # stop-instead-of-delete, left terminal with no container running).
        def stopped() -> bool:
            try:
                pod = core_v1.read_namespaced_pod(nim_pod.metadata.name, nim_namespace)
            except client.ApiException as e:
                return e.status == 404
            running = [s for s in pod.status.container_statuses or [] if s.state.running]
            return pod.status.phase in ("Failed", "Succeeded") and not running

        wait_for(
            stopped,
            timeout=TTL.total_seconds() + 90,
            interval=1.0,
            what=f"the NIM pod to be stopped at its ttl ({TTL}) by the upgraded release",
            describe=lambda: release.log_tail(30) + "\n" + release.describe(),
        )
        # Not before: the pod lived its ttl (5 s for clock granularity).
        lived = time.time() - nim_pod.metadata.creation_timestamp.timestamp()
        assert lived >= TTL.total_seconds() - 5, lived
    print(f"\nhelm upgrade: chart of {commit[:10]} -> the working tree's ({current})")
