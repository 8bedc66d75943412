"""NIM configurations the suites share: one with every field set, one for the fake GPU nodes.

Plain `NIM` values (no cluster, no flytekit), for unit tests and cluster suites alike.
"""

from __future__ import annotations

from typing import Any

from nim_agent import NIM, NIMSecrets
from nim_agent.contract import LABEL_SIMULATE


def everything() -> NIM:
    """A NIM with every field away from its default."""
    return NIM(
        secrets=NIMSecrets(
            ngc_image_secret="ngc-pull",
            ngc_secret_key="api_key",
            secrets_prefix="_FSEC_",
            ngc_secret_group="ngc",
            hf_token_group="hf",
            hf_token_key="token",
        ),
        image="nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3",
        health_endpoint="/v1/health/ready",
        port=8080,
        cpu="1500m",
        gpu=2,
        mem="40Gi",
        shm_size="8Gi",
        env={"Z_FIRST": "1", "NIM_PEFT_SOURCE": "/opt/nim/loras", "A_LAST": "2"},
        hf_repo_ids=["tloen/alpaca-lora-7b", "acme/other-lora"],
        lora_adapter_mem="4Gi",
        namespace="nim-shared",
        ephemeral_storage="100Gi",
        cache_pvc="nim-cache",
        node_selector={"gpu": "a100", "zone": "b"},
        tolerations=[
            {"key": "dedicated", "operator": "Equal", "value": "nim", "effect": "NoSchedule"},
            {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ],
        gpu_toleration=False,
        affinity={
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
                ]
            }
        },
        runtime_class_name="nvidia",
        priority_class_name="high",
        service_account="nim",
        labels={"team": "ml", "nim-agent.dev/simulate": "crashloop"},
        annotations={"note": "x y z"},
        image_pull_policy="Always",
        startup_failure_threshold=120,
        startup_period_seconds=5,
        readiness_period_seconds=6,
        readiness_failure_threshold=2,
        liveness_period_seconds=20,
        liveness_failure_threshold=4,
        lora_downloader_image="python:3.12-slim",
        download_inputs=True,
        inputs_mem="1Gi",
        hf_endpoint="https://hf-mirror.example.com",
        security_profile="nvidia",
    )


def simulated_nim(mode: str = "ready", **overrides: Any) -> NIM:
    """A one-GPU NIM whose pod lives the local control plane's ``mode`` (devcluster/kwok:
    ready, never-ready, crashloop, oom, image-pull-error, config-error)."""
    fields: dict[str, Any] = {
        "secrets": NIMSecrets(
            ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="_FSEC_"
        ),
        "cpu": 1,
        "gpu": 1,
        "mem": "2Gi",
        "shm_size": "1Gi",
        "labels": {LABEL_SIMULATE: mode},
    }
    fields.update(overrides)
    return NIM(**fields)
