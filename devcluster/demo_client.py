"""Drive the connector the way flytepropeller does, and narrate: CreateTask, GetTask until the
NIM serves (printing each phase change), then print the endpoint.

    python devcluster/demo_client.py --address 127.0.0.1:8000 --namespace nim-demo

Used by `make demo`. The task is the NIM of examples/demo_workflow.py (with a LoRA adapter).
"""

from __future__ import annotations

import argparse
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
