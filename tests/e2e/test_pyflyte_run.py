"""`pyflyte run` of the demo workflow, locally, against the local control plane.

flytekit runs the NIM task through our connector in-process (AsyncConnectorExecutorMixin), the
next task receives the endpoint, and the teardown task removes the deployment. Ctrl-C during
the NIM task makes flytekit call `delete`, which must remove the pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from kubernetes import client

from tests.cluster import our_pods, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
PYFLYTE = REPO_ROOT / ".venv" / "bin" / "pyflyte"


def run_env(kubeconfig: Path, namespace: str, simulate: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIM_AGENT_")}
    env.update(
        KUBECONFIG=str(kubeconfig),
        NIM_AGENT_DEFAULT_NAMESPACE=namespace,
        NIM_DEMO_SIMULATE=simulate,
        NIM_AGENT_SERVING_CHECK="off",  # kwok's pods serve no HTTP
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return env


def test_pyflyte_run_hands_the_endpoint_to_the_next_task_and_tears_down(
    kubeconfig_path: Path, core_v1: client.CoreV1Api, namespace: str
) -> None:
    result = subprocess.run(
        [str(PYFLYTE), "run", "examples/demo_workflow.py", "wf", "--question", "hi"],
        cwd=REPO_ROOT,
        env=run_env(kubeconfig_path, namespace, "ready"),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f".{namespace}.svc.cluster.local:8000/v1/chat/completions" in output, output[-3000:]
    assert "POST http://nim-llama3-8b-lora-" in output
    # The teardown task ran: nothing of ours is left.
    wait_for(
        lambda: not our_pods(core_v1, namespace),
        timeout=30,
        what="the teardown to remove the pod",
    )


def test_ctrl_c_during_pyflyte_run_deletes_the_pod(
    kubeconfig_path: Path, core_v1: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        run = subprocess.Popen(
            [str(PYFLYTE), "run", "examples/demo_workflow.py", "wf"],
            cwd=REPO_ROOT,
            env=run_env(kubeconfig_path, namespace, "never-ready"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                lambda: [p for p in our_pods(core_v1, namespace) if p.status.phase == "Running"],
                timeout=120,
                what="the NIM pod to run",
                describe=lambda: log.read_text(errors="replace")[-2000:],
            )
            run.send_signal(signal.SIGINT)
            try:
                run.wait(timeout=180)  # a margin for a loaded 2-core machine
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    "pyflyte run did not end after Ctrl-C:\n"
                    + log.read_text(errors="replace")[-2000:]
                ) from None
        finally:
            if run.poll() is None:
                run.kill()

    wait_for(
        lambda: not our_pods(core_v1, namespace),
        timeout=30,
        what="Ctrl-C to delete the pod",
        describe=lambda: log.read_text(errors="replace")[-2000:],
    )
