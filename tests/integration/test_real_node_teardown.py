"""``devcluster/cluster.sh down`` leaves nothing of the real node behind (issue 12, point 1).

Runs last in the session (tests/integration/conftest.py moves it there): it stops the control
plane and the real node while pods run on it, looks at the machine itself (not at what the script
says it did), then starts everything again for whatever runs next.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster import DEVCLUSTER, wait_for
from tests.realnode import (
    BRIDGE,
    REALNODE_STATE,
    ImagesEnv,
    RealNodeUnavailable,
    ensure_real_node,
    real_node_pod,
    stop_everything,
)

pytestmark = [pytest.mark.real_node, pytest.mark.cluster_teardown]

CGROUP_ROOT = "nim-real-0"
OUR_CHAINS = re.compile(r"NIM-REALNODE|KUBE-|CNI-|10\.244\.")


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def saved_sysctls() -> dict[str, str]:
    saved = REALNODE_STATE / "saved" / "sysctl"
    pairs = (line.split("=", 1) for line in saved.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if v}


def absent_before() -> list[str]:
    return (REALNODE_STATE / "saved" / "absent-dirs").read_text().split()


def nft_tables() -> set[str]:
    return set(run("nft", "list", "tables").splitlines())


def nft_tables_before() -> set[str]:
    return set((REALNODE_STATE / "saved" / "nft-tables").read_text().splitlines())


def sysctl_value(key: str) -> str:
    return Path("/proc/sys", key.replace(".", "/")).read_text().strip()


def what_is_left(absent_dirs: list[str]) -> list[str]:
    """Everything of the real node still on the machine, one line each."""
    state = str(DEVCLUSTER.resolve())
    left: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        if mount_point.startswith(state + "/"):
            left.append(f"mount {mount_point}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state in cmdline or "bind=10.244.0.1" in cmdline:
            left.append(f"process {proc.name}: {cmdline}")
    links = run("ip", "-o", "link", "show")
    if re.search(rf"^\d+: {BRIDGE}[:@]", links, re.M):
        left.append(f"link {BRIDGE}")
    left += [f"veth {m}" for m in re.findall(r"^\d+: (veth[0-9a-f]{8})@", links, re.M)]
    for cmd in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            rules = run(cmd, "-w", "-t", table, "-S")
            left += [f"{cmd} -t {table}: {r}" for r in rules.splitlines() if OUR_CHAINS.search(r)]
    conntrack = run("conntrack", "-L")
    left += [f"conntrack {c}" for c in conntrack.splitlines() if re.search(r"=10\.(244|96)\.", c)]
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if (hierarchy / CGROUP_ROOT).exists():
            left.append(f"cgroup {hierarchy / CGROUP_ROOT}")
    left += [f"folder {d}" for d in absent_dirs if Path(d).exists()]
    if REALNODE_STATE.exists():
        left.append(f"folder {REALNODE_STATE}")
    return left


def test_cluster_down_leaves_nothing_of_the_real_node_behind(
    kubeconfig_path: object, core_v1: client.CoreV1Api
) -> None:
    try:
        images: ImagesEnv = ensure_real_node()
    except RealNodeUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    # Its own namespace: the control plane it lives in goes away with the test.
    namespace = f"t-teardown-{uuid.uuid4().hex[:6]}"
    core_v1.create_namespace({"metadata": {"name": namespace}})
    wait_for(
        lambda: core_v1.read_namespaced_service_account("default", namespace),
        timeout=30,
        what=f"the default ServiceAccount of namespace {namespace}",
    )
    # Pods with volumes (projected token, emptyDir in memory) running at the time of the stop.
    pod = real_node_pod("busy", images.python_base, ["sleep", "3600"])
    pod["spec"]["volumes"] = [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "shm", "mountPath": "/dev/shm"}]
    core_v1.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: core_v1.read_namespaced_pod("busy", namespace).status.phase == "Running",
        timeout=180,
        what="pod busy Running on the real node",
    )
    sysctls = saved_sysctls()
    absent_dirs = absent_before()
    tables_before = nft_tables_before()
    assert [m for m in what_is_left([]) if m.startswith("mount")], "the pod mounted nothing?"

    result = stop_everything()
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        assert what_is_left(absent_dirs) == []
        assert {k: sysctl_value(k) for k in sysctls} == sysctls
        # iptables' nft tables made for the node's rules are gone too.
        assert nft_tables() <= tables_before
        assert "10.244.0.0/24" not in run("ip", "route", "show")
    finally:
        # Leave a running cluster for what comes next (as the session found it).
        try:
            ensure_real_node()
        except RealNodeUnavailable as e:
            pytest.fail(f"could not start the cluster again after the test: {e}", pytrace=False)
