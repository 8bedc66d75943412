"""Run a Python workflow on the local flytepropeller (no flyteadmin): create, wait, outputs.

    .venv/bin/python devcluster/propeller/flyte_run.py create MODULE:WORKFLOW -n NS [--inputs JSON]
    .venv/bin/python devcluster/propeller/flyte_run.py wait EXECUTION -n NS [--timeout 300]
    .venv/bin/python devcluster/propeller/flyte_run.py outputs EXECUTION -n NS [--node NODE]

`create` serializes the workflow with flytekit (the workflow template and its task templates, as
a flyteidl `WorkflowClosure`), writes it and the inputs (a `LiteralMap`, defaults filled in) as
JSON, and runs `kubectl-flyte create -p closure.json -f json -i inputs.json --execution-id ID`,
which compiles the closure and creates the FlyteWorkflow object (named ID) in the namespace;
propeller runs it there. It prints the execution id.

`wait` polls the FlyteWorkflow until it reaches a terminal phase (Succeeded, Failed, Aborted) or
the timeout, and prints its status as JSON: phase, message, error and, per node, phase, message
and error. Exit status 0 when it succeeded, 1 when it failed or was aborted, 3 on timeout.

`outputs` reads the outputs propeller wrote to its local storage (the workflow's, or one node's
with --node) and prints the literals as JSON.

`MODULE` is imported with the current directory on the path (run from the repository root).
Environment: KUBECONFIG [.devcluster/kubeconfig], KUBECTL_FLYTE [.devcluster/bin/kubectl-flyte],
PROPELLER_STORAGE_DIR [$PROPELLER_STATE/storage, else .devcluster/propeller/storage].
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "flyte.lyft.com", "v1alpha1", "flyteworkflows"
# flytepropeller pkg/apis/flyteworkflow/v1alpha1 (iface.go): the phases are stored as integers.
WORKFLOW_PHASES = [
    "Ready",
    "Running",
    "Succeeding",
    "Succeeded",
    "Failing",
    "Failed",
    "Aborted",
    "HandlingFailureNode",
]
NODE_PHASES = [
    "NotYetStarted",
    "Queued",
    "Running",
    "Failing",
    "Succeeding",
    "Succeeded",
    "Failed",
    "Skipped",
    "RetryableFailure",
    "TimingOut",
    "TimedOut",
    "DynamicRunning",
    "Recovered",
]
TERMINAL = {"Succeeded", "Failed", "Aborted"}


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value) if value else default


def kubeconfig() -> Path:
    return _env_path("KUBECONFIG", ROOT / ".devcluster" / "kubeconfig")


def storage_dir() -> Path:
    state = _env_path("PROPELLER_STATE", ROOT / ".devcluster" / "propeller")
    return _env_path("PROPELLER_STORAGE_DIR", state / "storage")


# -- create -------------------------------------------------------------------------------


def load_workflow(ref: str) -> Any:
    """`package.module:name` -> the flytekit workflow object."""
    module_name, _, name = ref.partition(":")
    if not name:
        raise SystemExit(f"flyte_run: {ref!r} is not MODULE:WORKFLOW")
    sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module_name), name)


def serialize(workflow: Any, project: str, domain: str, version: str = "v1") -> Any:
    """The flyteidl WorkflowClosure of a flytekit workflow: its template and its task templates."""
    from flyteidl.core.workflow_closure_pb2 import WorkflowClosure
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.models.task import TaskSpec
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(
        ImageConfig.auto_default_image(), project=project, domain=domain, version=version
    )
    entities: OrderedDict[Any, Any] = OrderedDict()
    spec = get_serializable(entities, settings, workflow)
    if spec.sub_workflows:
        # kubectl-flyte create compiles the closure with no sub-workflows.
        raise SystemExit("flyte_run: workflows with sub-workflows are not supported")
    tasks = [e.template.to_flyte_idl() for e in entities.values() if isinstance(e, TaskSpec)]
    return WorkflowClosure(workflow=spec.template.to_flyte_idl(), tasks=tasks)


def literal_inputs(workflow: Any, given: dict[str, Any]) -> Any:
    """The workflow's inputs as a flyteidl LiteralMap: its defaults, overridden by `given`."""
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    interface = workflow.python_interface
    unknown = sorted(set(given) - set(interface.inputs))
    if unknown:
        raise SystemExit(f"flyte_run: the workflow has no inputs {unknown}")
    values = {**interface.default_inputs_as_kwargs, **given}
    missing = sorted(set(interface.inputs) - set(values))
    if missing:
        raise SystemExit(f"flyte_run: inputs {missing} have no default; pass them with --inputs")
    ctx = FlyteContextManager.current_context()
    return TypeEngine.dict_to_literal_map(ctx, values, interface.inputs).to_flyte_idl()


def kubectl_flyte() -> Path:
    path = _env_path("KUBECTL_FLYTE", ROOT / ".devcluster" / "bin" / "kubectl-flyte")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SystemExit(
            f"flyte_run: no kubectl-flyte at {path}; build it with `make propeller-build`"
        )
    return path


def create(
    ref: str,
    namespace: str,
    execution_id: str | None = None,
    inputs: dict[str, Any] | None = None,
    project: str = "flytesnacks",
    domain: str = "development",
) -> str:
    """Serialize the workflow `ref` and create its FlyteWorkflow; returns the execution id."""
    from google.protobuf import json_format

    workflow = load_workflow(ref)
    execution_id = execution_id or "e" + uuid.uuid4().hex[:12]
    closure = serialize(workflow, project, domain)
    literals = literal_inputs(workflow, inputs or {})
    with tempfile.TemporaryDirectory(prefix="flyte-run-") as tmp:
        closure_file, inputs_file = Path(tmp, "closure.json"), Path(tmp, "inputs.json")
        closure_file.write_text(json_format.MessageToJson(closure))
        # Needed even when empty: without -i kubectl-flyte fails ("Marshal called with nil").
        inputs_file.write_text(json_format.MessageToJson(literals) if literals.literals else "{}")
        argv = [
            str(kubectl_flyte()),
            "--kubeconfig",
            str(kubeconfig()),
            "-n",
            namespace,
            "create",
            "-p",
            str(closure_file),
            "-f",
            "json",
            "-i",
            str(inputs_file),
            "--execution-id",
            execution_id,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise SystemExit(
            f"flyte_run: kubectl-flyte create failed (exit {result.returncode}):\n"
            + (result.stdout + result.stderr).strip()
        )
    return execution_id


# -- wait ---------------------------------------------------------------------------------


def custom_objects() -> Any:
    from kubernetes import client, config

    return client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig())))


def get_workflow(api: Any, namespace: str, execution_id: str) -> dict[str, Any] | None:
    """The FlyteWorkflow object, or None when it does not exist (any more)."""
    from kubernetes.client import ApiException

    try:
        obj: dict[str, Any] = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, execution_id
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return obj


def _phase(names: list[str], value: Any) -> str:
    return names[value] if isinstance(value, int) and 0 <= value < len(names) else f"{value!r}"


def _error(status: dict[str, Any]) -> dict[str, Any] | None:
    error = status.get("error")
    return {k: error[k] for k in ("code", "message", "kind") if k in error} if error else None


def summary(obj: dict[str, Any] | None) -> dict[str, Any]:
    """The status of a FlyteWorkflow, with phase names, as a small JSON-able dict."""
    if obj is None:
        return {"phase": "Deleted", "nodes": {}}
    status = obj.get("status") or {}
    nodes = {
        node: {
            "phase": _phase(NODE_PHASES, s.get("phase", 0)),
            "message": s.get("message", ""),
            "error": _error(s),
            "attempts": s.get("attempts", 0),
        }
        for node, s in (status.get("nodeStatus") or {}).items()
        if node not in ("start-node", "end-node")
    }
    return {
        "execution": obj["metadata"]["name"],
        "namespace": obj["metadata"]["namespace"],
        "phase": _phase(WORKFLOW_PHASES, status.get("phase", 0)),
        "message": status.get("message", ""),
        "error": _error(status),
        "nodes": nodes,
        "outputRef": status.get("outputRef", ""),
    }


def wait(namespace: str, execution_id: str, timeout: float = 300.0) -> tuple[dict[str, Any], bool]:
    """Poll until the workflow is terminal (or gone); returns (summary, finished in time)."""
    api = custom_objects()
    start = time.monotonic()
    while True:
        state = summary(get_workflow(api, namespace, execution_id))
        state["seconds"] = round(time.monotonic() - start, 1)
        if state["phase"] in TERMINAL or state["phase"] == "Deleted":
            return state, True
        if time.monotonic() - start > timeout:
            return state, False
        time.sleep(1.0)


# -- outputs ------------------------------------------------------------------------------


def local_path(reference: str) -> Path:
    """`file://<container>/<key>` (propeller's stow `local` storage) -> the file on disk."""
    if not reference.startswith("file://"):
        raise SystemExit(f"flyte_run: {reference!r} is not a local storage reference")
    return storage_dir() / reference.removeprefix("file://")


def to_json(literal: Any) -> Any:
    """A flyteidl Literal as plain JSON: primitives as values, collections and maps recursively."""
    from google.protobuf import json_format

    if literal.HasField("collection"):
        return [to_json(x) for x in literal.collection.literals]
    if literal.HasField("map"):
        return {k: to_json(v) for k, v in literal.map.literals.items()}
    if literal.HasField("scalar"):
        scalar = literal.scalar
        if scalar.HasField("primitive"):
            kind = scalar.primitive.WhichOneof("value")
            value = getattr(scalar.primitive, kind)
            return (
                value
                if kind in ("integer", "float_value", "string_value", "boolean")
                else (json_format.MessageToDict(value))
            )
        if scalar.HasField("none_type"):
            return None
    return json_format.MessageToDict(literal)


def outputs(namespace: str, execution_id: str, node: str | None = None) -> dict[str, Any]:
    """The workflow's (or a node's latest attempt's) outputs, read from propeller's storage."""
    from flyteidl.core.literals_pb2 import LiteralMap

    obj = get_workflow(custom_objects(), namespace, execution_id)
    if obj is None:
        raise SystemExit(f"flyte_run: no FlyteWorkflow {namespace}/{execution_id}")
    status = obj.get("status") or {}
    if node is None:
        if not status.get("outputRef"):
            raise SystemExit(f"flyte_run: {execution_id} has no outputs (yet): {summary(obj)}")
        path = local_path(status["outputRef"])
    else:
        attempts = sorted(
            local_path(status["dataDir"]).glob(f"{node}/data/*/outputs.pb"),
            key=lambda p: int(p.parent.name),
        )
        if not attempts:
            raise SystemExit(f"flyte_run: node {node} of {execution_id} has no outputs")
        path = attempts[-1]
    literals = LiteralMap()
    literals.ParseFromString(path.read_bytes())
    return {name: to_json(value) for name, value in literals.literals.items()}


# -- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create", help="serialize MODULE:WORKFLOW and create its FlyteWorkflow")
    p.add_argument("workflow", metavar="MODULE:WORKFLOW")
    p.add_argument("--execution-id", help="default: a random one")
    p.add_argument("--inputs", default="{}", help="JSON object of input values")
    p.add_argument("--project", default="flytesnacks")
    p.add_argument("--domain", default="development")
    p = sub.add_parser("wait", help="wait for a terminal phase; print the status as JSON")
    p.add_argument("execution_id", metavar="EXECUTION")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    p = sub.add_parser("outputs", help="print the outputs as JSON")
    p.add_argument("execution_id", metavar="EXECUTION")
    p.add_argument("--node", help="a node's outputs instead of the workflow's")
    for p in sub.choices.values():
        p.add_argument("-n", "--namespace", default="default")
    args = parser.parse_args(argv)

    if args.command == "create":
        inputs = json.loads(args.inputs)
        print(
            create(
                args.workflow, args.namespace, args.execution_id, inputs, args.project, args.domain
            )
        )
        return 0
    if args.command == "wait":
        state, finished = wait(args.namespace, args.execution_id, args.timeout)
        print(json.dumps(state, indent=2))
        if not finished:
            print(f"flyte_run: not finished after {args.timeout:.0f}s", file=sys.stderr)
            return 3
        return 0 if state["phase"] == "Succeeded" else 1
    print(json.dumps(outputs(args.namespace, args.execution_id, args.node), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
