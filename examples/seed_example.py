# The seed's usage example (nim-plugin-summary.md), unchanged except for the import lines
# (flytekitplugins.inference... -> nim_agent, and flytekit's Resources) and the task's
# `requests=`/`limits=`: the NIM server now runs as a native sidecar (an init container with
# restartPolicy Always, as the upstream plugin runs it), so the pod template has no
# `containers[0]` to take resources from, and flytekit wants `Resources` there anyway. They size
# the task's own container; the server carries its own. `python examples/seed_example.py`
# prints the pod spec and the base URL.
# Kept otherwise verbatim, so neither linted nor formatted:
# ruff: noqa
# fmt: off
from flytekit import Resources, task, workflow
from nim_agent import NIM, NIMSecrets
from nim_agent import PodTemplate

# 1. Define your NIMSecrets
nim_secrets = NIMSecrets(
    ngc_image_secret="my-ngc-image-pull-secret",  # Replace with your Kubernetes secret name
    ngc_secret_key="ngc_api_key",  # Replace with the key in your secret
    secrets_prefix="_FSEC_",  # Common Flyte secrets prefix
    hf_token_key="hf_token",  # Replace with the key for your HF token
)

# 2. Define the NIM configuration
# This example uses a Llama3 8B Instruct image and downloads a sample LoRA adapter.
nim_config = NIM(
    secrets=nim_secrets,
    image="nvcr.io/nim/meta/llama3-8b-instruct:1.0.0",
    cpu=2,
    gpu=1,
    mem="20Gi",
    shm_size="16Gi",
    env={
        "NIM_PEFT_SOURCE": "/opt/nim/lora_adapters",  # Crucial for LoRA adapters
        "NIM_MODEL_ID": "meta/llama3-8b-instruct", # Example NIM specific env var
    },
    hf_repo_ids=["tloen/alpaca-lora-7b"],  # Example LoRA adapter
    lora_adapter_mem="2Gi",  # Memory for the LoRA download init container
)

# 3. Create a Flyte task that uses the NIM configuration
@task(
    container_image="ghcr.io/flyteorg/flytekit:py3.12-latest", # A base image for the task container
    pod_template=PodTemplate(pod_spec=nim_config.pod_template.pod_spec),
    requests=Resources(cpu="1", mem="1Gi"),  # the task's own container
    limits=Resources(cpu="1", mem="1Gi"),
)
def deploy_nim_inference_service() -> str:
    """
    This task deploys the NIM inference service.
    The actual inference logic would typically be in a separate task
    that interacts with the deployed service at nim_config.base_url.
    """
    # In a real scenario, you might wait for the service to be ready
    # or perform a health check here.
    # The NIM server will be running as a sidecar in this pod.
    print(f"NIM inference service deployed at: {nim_config.base_url}")
    return nim_config.base_url

# 4. Define a Flyte workflow
@workflow
def nim_deployment_workflow() -> str:
    service_url = deploy_nim_inference_service()
    return service_url

# To run this locally (for testing the Flyte task definition, not actual deployment):
if __name__ == "__main__":
    # This will print the generated pod spec and the base URL.
    # For actual deployment, register and execute the workflow on a Flyte cluster.
    print(f"Generated Pod Spec: {nim_config.pod_template.pod_spec.to_dict()}")
    print(f"Base URL for NIM service: {nim_config.base_url}")
    # You would typically run the workflow on a Flyte cluster:
    # nim_deployment_workflow()
