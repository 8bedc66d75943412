"""The demo: a NIM server as one step of a workflow, with LoRA adapters from two places.

    KUBECONFIG=.devcluster/kubeconfig pyflyte run examples/demo_workflow.py wf
    KUBECONFIG=.devcluster/kubeconfig pyflyte run --raw-output-data-prefix s3://bucket/raw \\
        examples/demo_workflow.py tuned

`wf`: a NIM with an adapter from the Hugging Face Hub, a step that uses its endpoint, a
teardown. On the local control plane's kwok nodes pods are simulated (no GPU, no NIM image), so
that step prepares the request it would send instead of sending it; `NIM_DEMO_SIMULATE` picks
the simulated life (ready, never-ready, crashloop, oom, ...).

`tuned`: the story this project leads with. A fine-tune step writes an adapter (a FlyteDirectory;
here a stand-in for a real fine-tune), the NIM serves it as a task input, and the next step asks
the server a question naming the adapter, with the typed endpoint (`NIMEndpoint`). It needs pods
that really run: the local real node (with the NIM stand-in image) or a GPU cluster, and an
object store the pod can read (the run's raw output prefix).

Settings by environment, for the local real node (`make demo` sets them):
  NIM_DEMO_IMAGE          the NIM image [nvcr.io/nim/meta/llama3-8b-instruct:1.0.0]
  NIM_DEMO_NODE_SELECTOR  key=value of the nodes to run on [none]
  NIM_DEMO_MEM, NIM_DEMO_SHM  memory and /dev/shm of the server [20Gi, 16Gi]
  NIM_DEMO_LORA_MEM       memory of `wf`'s adapter download [2Gi]
  NIM_DEMO_PROBE_PERIOD   seconds between the server's startup and readiness probes [10]
  NIM_DEMO_HF_ENDPOINT    Hugging Face Hub (or stand-in) for `wf`'s adapter [the connector's]
  NIM_DEMO_HF_REPO        that adapter's repository [tloen/alpaca-lora-7b]
"""

from __future__ import annotations

import json
import os
import socket
import struct
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import flytekit
from flytekit import kwtypes, task, workflow
from flytekit.types.directory import FlyteDirectory

from nim_agent import NIM, NIMEndpoint, NIMSecrets, NIMTask, NIMTeardownTask
from nim_agent.contract import adapter_name, deployment_of_endpoint

SIMULATE = os.environ.get("NIM_DEMO_SIMULATE", "ready")
IMAGE = os.environ.get("NIM_DEMO_IMAGE", "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0")
SELECTOR = (
    dict([os.environ["NIM_DEMO_NODE_SELECTOR"].split("=", 1)])
    if os.environ.get("NIM_DEMO_NODE_SELECTOR")
    else {}
)
MEM = os.environ.get("NIM_DEMO_MEM", "20Gi")
SHM = os.environ.get("NIM_DEMO_SHM", "16Gi")
LORA_MEM = os.environ.get("NIM_DEMO_LORA_MEM", "2Gi")
PROBE_PERIOD = int(os.environ.get("NIM_DEMO_PROBE_PERIOD", "10"))
HF_REPO = os.environ.get("NIM_DEMO_HF_REPO", "tloen/alpaca-lora-7b")
SECRETS = NIMSecrets(ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="_FSEC_")

llama = NIMTask(
    name="llama3-8b-lora",
    nim=NIM(
        secrets=NIMSecrets(
            ngc_image_secret="ngc-pull",
            ngc_secret_key="api_key",
            secrets_prefix="_FSEC_",
            hf_token_key="token",
        ),
        image=IMAGE,
        gpu=1,
        mem=MEM,
        shm_size=SHM,
        env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
        hf_repo_ids=[HF_REPO],
        hf_endpoint=os.environ.get("NIM_DEMO_HF_ENDPOINT") or None,
        lora_adapter_mem=LORA_MEM,
        node_selector=SELECTOR,
        startup_period_seconds=PROBE_PERIOD,
        readiness_period_seconds=PROBE_PERIOD,
        labels={"nim-agent.dev/simulate": SIMULATE},
    ),
    ttl=timedelta(minutes=30),
)

teardown = NIMTeardownTask(name="llama3-8b-lora-teardown")


@task
def chat_request(endpoint: str, question: str) -> str:
    """The OpenAI-compatible request the next step would send to the NIM (LoRA as the model)."""
    body = {
        "model": adapter_name(HF_REPO),  # each adapter is served under its folder's name
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 128,
    }
    return f"POST {endpoint}/v1/chat/completions {json.dumps(body)}"


@workflow
def wf(question: str = "What is Flyte?") -> str:
    endpoint = llama()
    request = chat_request(endpoint=endpoint, question=question)
    request >> teardown(endpoint=endpoint)
    return request


# --------------------------------------------------------------------------- tuned


@task
def finetune(rank: int = 8) -> FlyteDirectory:
    """Stands in for a LoRA fine-tune: writes an adapter in the Hugging Face PEFT layout."""
    out = Path(flytekit.current_context().working_directory) / "adapter"
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": "meta/llama3-8b-instruct",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    # A valid safetensors file: its JSON header's length, the header, then zeroed weights.
    size = rank * 4096 * 4
    header = json.dumps(
        {"lora_A.weight": {"dtype": "F32", "shape": [rank, 4096], "data_offsets": [0, size]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    (out / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + bytes(size)
    )
    return FlyteDirectory(str(out))


serve = NIMTask(
    name="llama3-8b-tuned",
    nim=NIM(
        secrets=SECRETS,
        image=IMAGE,
        gpu=1,
        mem=MEM,
        shm_size=SHM,
        env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
        lora_adapter_mem="1Gi",
        node_selector=SELECTOR,
        startup_period_seconds=2,
        readiness_period_seconds=2,
    ),
    inputs=kwtypes(support=FlyteDirectory),  # served as the model "support"
    typed_endpoint=True,
    ttl=timedelta(minutes=30),
)


def post_json(base_url: str, path: str, body: dict[str, Any]) -> Any:
    """POST to the NIM: directly inside the cluster; from outside it (a local run), where its
    cluster DNS name does not resolve, through the API server's service proxy (kubeconfig)."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        base_url + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)
    except urllib.error.URLError as e:
        if not isinstance(e.reason, socket.gaierror):
            raise
    from kubernetes import config

    target = deployment_of_endpoint(base_url)
    assert target is not None, base_url
    name, namespace = target
    port = base_url.rsplit(":", 1)[1]
    api = config.new_client_from_config()
    try:
        proxy = f"/api/v1/namespaces/{namespace}/services/{name}:{port}/proxy{path}"
        method, url, headers, body_, _ = api.param_serialize(
            method="POST",
            resource_path=proxy,
            header_params={"Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = api.call_api(method, url, header_params=headers, body=body_)
        response.read()
        return json.loads(response.data)
    finally:
        api.close()


@task
def ask(endpoint: NIMEndpoint, question: str) -> str:
    """One chat completion, asking the fine-tuned adapter by its model id."""
    model = endpoint.adapters[0]
    answer = post_json(
        endpoint.base_url,
        "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 64},
    )
    return f"{answer['model']} answered: {answer['choices'][0]['message']['content']}"


teardown_tuned = NIMTeardownTask(name="llama3-8b-tuned-teardown")


@workflow
def tuned(question: str = "What is Flyte?") -> str:
    endpoint = serve(support=finetune())
    answer = ask(endpoint=endpoint, question=question)
    answer >> teardown_tuned(endpoint=endpoint.base_url)
    return answer
