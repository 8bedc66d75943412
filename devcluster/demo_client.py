"""Drive the connector the way flytepropeller does, and narrate: CreateTask, GetTask until the
NIM serves (printing each phase change), then print the endpoint.

    python devcluster/demo_client.py --address 127.0.0.1:8000 --namespace nim-demo
    python devcluster/demo_client.py ... --ask-image IMAGE --ask-node-selector KEY=VALUE

Used by `make demo`. The task is the NIM of examples/demo_workflow.py (with a LoRA adapter; the
NIM_DEMO_* variables set its image and nodes). With `--ask-image`, a workflow's next step is played
too: a pod (that image, with python3, on the nodes of `--ask-node-selector`) runs
devcluster/ask_endpoint.py, which POSTs `{endpoint}/v1/chat/completions` by the Service's DNS
name, naming the adapter as the model; its answer is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import grpc
from flyteidl.admin import agent_pb2
from flyteidl.core import execution_pb2, identifier_pb2
from flyteidl.service import agent_pb2_grpc
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.tools.translator import get_serializable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

PHASE = execution_pb2.TaskExecution.Phase
TERMINAL = {"SUCCEEDED", "FAILED", "RETRYABLE_FAILED", "ABORTED"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:8000")
    parser.add_argument("--namespace", default="nim-demo")
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--ask-image", help="ask the endpoint from a pod of this image")
    parser.add_argument("--ask-node-selector", default="", help="key=value: where that pod runs")
    args = parser.parse_args()

    from demo_workflow import llama  # the NIMTask of the demo workflow

    settings = SerializationSettings(ImageConfig.auto_default_image())
    template = get_serializable(OrderedDict(), settings, llama).template.to_flyte_idl()
    execution = f"demo-{uuid.uuid4().hex[:6]}"
    metadata = agent_pb2.TaskExecutionMetadata(
        namespace=args.namespace,
        task_execution_id=identifier_pb2.TaskExecutionIdentifier(
            task_id=identifier_pb2.Identifier(
                resource_type=identifier_pb2.TASK,
                project="flytesnacks",
                domain="development",
                name=llama.name,
                version="demo",
            ),
            node_execution_id=identifier_pb2.NodeExecutionIdentifier(
                node_id="n0",
                execution_id=identifier_pb2.WorkflowExecutionIdentifier(
                    project="flytesnacks", domain="development", name=execution
                ),
            ),
        ),
    )
    stub = agent_pb2_grpc.AsyncAgentServiceStub(grpc.insecure_channel(args.address))
    category = agent_pb2.TaskCategory(name="nim", version=0)

    started = time.monotonic()
    print(f"  CreateTask  execution {execution}, task {llama.name!r}, namespace {args.namespace}")
    meta = stub.CreateTask(
        agent_pb2.CreateTaskRequest(
            template=template, output_prefix="/tmp/nim-demo", task_execution_metadata=metadata
        ),
        timeout=10,
    ).resource_meta
    print(f"              answered in {time.monotonic() - started:.2f}s")
    last = None
    while True:
        resource = stub.GetTask(
            agent_pb2.GetTaskRequest(resource_meta=meta, task_category=category), timeout=10
        ).resource
        phase = PHASE.Name(resource.phase)
        line = f"{phase}: {resource.message}"
        if line != last:
            print(f"  GetTask  {time.monotonic() - started:5.1f}s  {line}")
            last = line
        if phase in TERMINAL:
            break
        if time.monotonic() - started > args.timeout:
            print(f"  gave up after {args.timeout:.0f}s", file=sys.stderr)
            return 1
        time.sleep(0.5)
    if phase != "SUCCEEDED":
        return 1
    endpoint = resource.outputs.literals["endpoint"].scalar.primitive.string_value
    print(f"\n  endpoint = {endpoint}")
    if args.ask_image:
        from demo_workflow import HF_REPO

        from nim_agent.contract import adapter_name

        return ask(args, endpoint, adapter_name(HF_REPO))
    return 0


def ask(args: argparse.Namespace, endpoint: str, model: str) -> int:
    """Run devcluster/ask_endpoint.py in a pod: the step after the NIM, inside the cluster."""
    from kubernetes import client, config

    program = (Path(__file__).resolve().parent / "ask_endpoint.py").read_text()
    name = f"ask-{uuid.uuid4().hex[:6]}"
    selector = dict([args.ask_node_selector.split("=", 1)]) if args.ask_node_selector else {}
    question = "What is Flyte?"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "nim-demo-ask"}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": selector,
            # The real node carries the GPU nodes' taint, as GPU pools do.
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "ask",
                    "image": args.ask_image,
                    "command": ["python3", "-c", program, endpoint, model, question],
                    "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    api = config.new_client_from_config()
    core = client.CoreV1Api(api)
    print(f"\n  a pod on the real node asks it: POST {endpoint}/v1/chat/completions")
    print(f"    {{'model': {model!r}, 'messages': [{{'role': 'user', 'content': {question!r}}}]}}")
    core.create_namespaced_pod(args.namespace, pod)
    try:
        deadline = time.monotonic() + 120
        while True:
            phase = core.read_namespaced_pod(name, args.namespace).status.phase
            if phase in ("Succeeded", "Failed"):
                break
            if time.monotonic() > deadline:
                print(f"  pod {name} did not finish within 120s (phase {phase})", file=sys.stderr)
                return 1
            time.sleep(0.5)
        log = core.read_namespaced_pod_log(name, args.namespace).strip()
        if phase != "Succeeded":
            print(f"  pod {name} failed: {log}", file=sys.stderr)
            return 1
        answer = json.loads(log.splitlines()[-1])
        print(
            f"  the NIM answered ({answer['model']}): {answer['choices'][0]['message']['content']}"
        )
        return 0
    finally:
        core.delete_namespaced_pod(name, args.namespace, grace_period_seconds=0)
        api.close()


if __name__ == "__main__":
    sys.exit(main())
