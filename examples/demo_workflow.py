"""The demo: a NIM with a LoRA adapter as one step, a step that uses its endpoint, a teardown.

    KUBECONFIG=.devcluster/kubeconfig pyflyte run examples/demo_workflow.py wf

On the local control plane (`make cluster-up`) pods are simulated by kwok: there is no GPU and
no NIM image, so the step after the NIM prepares the request it would send instead of sending
it. `NIM_DEMO_SIMULATE` picks the simulated life (ready, never-ready, crashloop, oom, ...).
On a real GPU cluster drop the label, and call the endpoint as examples/nim_workflow.py does.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

from flytekit import task, workflow

from nim_agent import NIM, NIMSecrets, NIMTask, NIMTeardownTask

SIMULATE = os.environ.get("NIM_DEMO_SIMULATE", "ready")

llama = NIMTask(
    name="llama3-8b-lora",
    nim=NIM(
        secrets=NIMSecrets(
            ngc_image_secret="ngc-pull",
            ngc_secret_key="api_key",
            secrets_prefix="_FSEC_",
            hf_token_key="token",
        ),
        image="nvcr.io/nim/meta/llama3-8b-instruct:1.0.0",
        gpu=1,
        mem="20Gi",
        shm_size="16Gi",
        env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
        hf_repo_ids=["tloen/alpaca-lora-7b"],
        lora_adapter_mem="2Gi",
        labels={"nim-agent.dev/simulate": SIMULATE},
    ),
    ttl=timedelta(minutes=30),
)

teardown = NIMTeardownTask(name="llama3-8b-lora-teardown")


@task
def chat_request(endpoint: str, question: str) -> str:
    """The OpenAI-compatible request the next step would send to the NIM (LoRA as the model)."""
    body = {
        "model": "alpaca-lora-7b",  # each adapter is served as a model named after its folder
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
