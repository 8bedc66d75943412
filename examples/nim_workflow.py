"""A NIM server as one step of a workflow; the next step gets its URL.

    pyflyte run examples/nim_workflow.py wf --question "What is Flyte?"       # local connector
    pyflyte run --remote examples/nim_workflow.py wf --question "..."         # on a cluster

The NIM keeps running after `llama` succeeds, for the steps that follow, and is removed by the
connector when its ttl has passed.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import timedelta

from flytekit import task, workflow

from nim_agent import NIM, NIMSecrets, NIMTask

llama = NIMTask(
    name="llama3-8b",
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
    ),
    ttl=timedelta(hours=2),  # the server is removed after this, whatever happens
)


@task
def ask(endpoint: str, question: str) -> str:
    """One chat completion against the NIM's OpenAI-compatible API."""
    body = {
        "model": "meta/llama3-8b-instruct",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 256,
    }
    request = urllib.request.Request(
        f"{endpoint}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer: str = json.load(response)["choices"][0]["message"]["content"]
    return answer


@workflow
def wf(question: str = "What is Flyte?") -> str:
    endpoint = llama()
    return ask(endpoint=endpoint, question=question)
