"""The seed's `download_inputs` (sidecar form): the init container, and its script run for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nim_agent import NIM, ConfigError, NIMSecrets
from nim_agent.contract import INPUT_CONTAINER
from nim_agent.sidecar import INPUT_DOWNLOAD_SCRIPT, sidecar_pod_spec

SECRETS = NIMSecrets(ngc_image_secret="ngc", ngc_secret_key="key", secrets_prefix="_FSEC_")


def test_download_inputs_adds_a_first_init_container_and_a_shared_volume() -> None:
    nim = NIM(
        secrets=SECRETS,
        download_inputs=True,
        inputs_mem="1Gi",
        env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
        hf_repo_ids=["tloen/alpaca-lora-7b"],
        lora_adapter_mem="2Gi",
    )
    spec = sidecar_pod_spec(nim, input_downloader_image="flytekit:test")

    first, second, server = spec["initContainers"]
    assert first["name"] == INPUT_CONTAINER and second["name"] == "lora-downloader"
    assert server["name"] == "nim" and server["restartPolicy"] == "Always"
    assert first["image"] == "flytekit:test"
    assert first["command"][-1] == "{{.input}}"  # propeller substitutes the inputs.pb path
    assert first["resources"]["requests"] == first["resources"]["limits"]
    assert first["resources"]["limits"]["memory"] == "1Gi"
    assert first["securityContext"]["runAsNonRoot"] is True
    assert {"name": "shared-data", "mountPath": "/shared", "readOnly": True} in server[
        "volumeMounts"
    ]
    assert {"name": "shared-data", "emptyDir": {}} in spec["volumes"]


def test_without_download_inputs_there_is_no_input_container() -> None:
    spec = sidecar_pod_spec(NIM(secrets=SECRETS))
    assert INPUT_CONTAINER not in [c["name"] for c in spec.get("initContainers", [])]
    assert "shared-data" not in [v["name"] for v in spec["volumes"]]


def test_the_seed_pod_template_carries_the_input_container() -> None:
    pod_spec = NIM(secrets=SECRETS, download_inputs=True).pod_template.pod_spec
    assert pod_spec.init_containers[0].name == INPUT_CONTAINER
    assert pod_spec.init_containers[-1].name == "nim"


def test_a_nim_task_refuses_download_inputs_naming_the_field() -> None:
    from nim_agent import NIMTask

    with pytest.raises(ConfigError, match="download_inputs"):
        NIMTask(name="t", nim=NIM(secrets=SECRETS, download_inputs=True))


@pytest.mark.parametrize("bad", ["lots", "20GB"])
def test_inputs_mem_must_be_a_quantity(bad: str) -> None:
    with pytest.raises(ConfigError, match="inputs_mem"):
        NIM(secrets=SECRETS, inputs_mem=bad)


def test_the_download_script_writes_values_and_fetches_files(tmp_path: Path) -> None:
    from flytekit.core import utils
    from flytekit.models.core.types import BlobType
    from flytekit.models.literals import (
        Blob,
        BlobMetadata,
        Literal,
        LiteralMap,
        Primitive,
        Scalar,
    )

    source = tmp_path / "prompt.txt"
    source.write_text("What is Flyte?")
    single = BlobType(format="", dimensionality=BlobType.BlobDimensionality.SINGLE)
    literals = LiteralMap(
        {
            "question": Literal(scalar=Scalar(primitive=Primitive(string_value="hi"))),
            "n": Literal(scalar=Scalar(primitive=Primitive(integer=3))),
            "doc": Literal(
                scalar=Scalar(blob=Blob(metadata=BlobMetadata(type=single), uri=str(source)))
            ),
        }
    )
    inputs_pb = tmp_path / "inputs.pb"
    utils.write_proto_to_file(literals.to_flyte_idl(), str(inputs_pb))
    shared = tmp_path / "shared"
    shared.mkdir()
    # The script's fixed /shared is moved under tmp_path; everything else runs as in the pod.
    script = INPUT_DOWNLOAD_SCRIPT.replace("/shared", str(shared))

    subprocess.run([sys.executable, "-c", script, str(inputs_pb)], check=True, timeout=120)

    values = json.loads((shared / "inputs.json").read_text())
    assert values["question"] == "hi"
    assert values["n"] == 3
    assert values["doc"] == str(shared / "inputs" / "doc")
    assert (shared / "inputs" / "doc").read_text() == "What is Flyte?"
