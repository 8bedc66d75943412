"""The seed's sidecar form: the NIM server next to the task's own container, as a flytekit
PodTemplate (`NIM(...).pod_template`).

The server runs as a native sidecar, as the upstream flytekit plugin runs it: the last init
container, with ``restartPolicy: Always``, after the downloads (the task's inputs, the LoRA
adapters). Kubernetes (1.29 and later) starts the task's own container only once the server's
startup probe has passed, so task code finds the server ready at `NIM.base_url`; the server is
stopped when the task's container exits. ``pod_spec.containers`` is empty: Flyte adds the task's
container as the primary one.

Purely computational: the containers, volumes, secrets and placement are the connector's own
(`nim_agent.render.pod_spec_parts`); this module adds what only the sidecar form has (the input
download of the seed's `download_inputs`) and adapts the spec to flytekit: `sidecar_pod_template`
is the one place that builds flytekit and Kubernetes client objects (both imported on use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nim_agent.contract import INPUT_CONTAINER, SHARED_PATH
from nim_agent.render import (
    NIM_UID,
    NVIDIA_GID,
    container_security_context,
    drop_none,
    guaranteed_resources,
    pod_spec_parts,
)
from nim_agent.settings import ConnectorSettings

if TYPE_CHECKING:
    from flytekit import PodTemplate

    from nim_agent.config import NIM

__all__ = [
    "DEFAULT_INPUT_DOWNLOADER_IMAGE",
    "INPUT_DOWNLOAD_SCRIPT",
    "sidecar_pod_spec",
    "sidecar_pod_template",
]

# The seed's `download_inputs`: propeller replaces {{.input}} with the task's inputs.pb; the
# script (run with the flytekit image's python) writes their values to /shared/inputs.json and
# downloads every file or directory input below /shared/inputs/<name>.
INPUT_DOWNLOAD_SCRIPT = f"""\
import json, os, sys
from flyteidl.core import literals_pb2
from flytekit.core import utils
from flytekit.core.context_manager import FlyteContextManager
from flytekit.interaction.string_literals import literal_map_string_repr
from flytekit.models.literals import LiteralMap

ctx = FlyteContextManager.current_context()
ctx.file_access.get_data(sys.argv[1], "{SHARED_PATH}/inputs.pb")
literals = LiteralMap.from_flyte_idl(
    utils.load_proto_from_file(literals_pb2.LiteralMap, "{SHARED_PATH}/inputs.pb")
)
values = literal_map_string_repr(literals)
for name, literal in literals.literals.items():
    blob = literal.scalar.blob if literal.scalar else None
    if blob is not None:
        target = os.path.join("{SHARED_PATH}/inputs", name)
        multipart = blob.metadata.type.dimensionality == 1
        ctx.file_access.get_data(blob.uri, target, is_multipart=multipart)
        values[name] = target
with open("{SHARED_PATH}/inputs.json", "w") as out:
    json.dump(values, out)
print("inputs written to {SHARED_PATH}/inputs.json:", sorted(values))
"""
DEFAULT_INPUT_DOWNLOADER_IMAGE = "cr.flyte.org/flyteorg/flytekit:py3.11-latest"


def _input_downloader(nim: NIM, image: str, security: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": INPUT_CONTAINER,
        "image": image,
        "command": ["python3", "-c", INPUT_DOWNLOAD_SCRIPT, "{{.input}}"],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": guaranteed_resources({"cpu": "1", "memory": nim.inputs_mem}),
        "securityContext": security,
        "volumeMounts": [
            {"name": "shared-data", "mountPath": SHARED_PATH},
            {"name": "downloader-tmp", "mountPath": "/tmp"},
        ],
    }


def sidecar_pod_spec(
    nim: NIM,
    settings: ConnectorSettings | None = None,
    input_downloader_image: str = DEFAULT_INPUT_DOWNLOADER_IMAGE,
) -> dict[str, Any]:
    """The seed's sidecar form as a pod spec dict: the NIM server as the last init container,
    a native sidecar (``restartPolicy: Always``), and no containers: Flyte adds the task's own
    (primary) container, which starts once the server's startup probe has passed.

    Same containers, volumes, secrets and placement as the connector's Pod; left out are the
    pod-wide settings that would also bind the task's container (non-root, restartPolicy,
    service links, token mount): our containers carry their own security context (the
    `security_profile`'s, "restricted" by default). With `download_inputs`, an init container
    first downloads the task's inputs to /shared (also mounted, read-only, in the server).
    """
    profile = nim.security_profile or "restricted"
    security = container_security_context(profile, sidecar=True)
    parts = pod_spec_parts(nim, settings or ConnectorSettings(), security=security)
    (server,) = parts.pop("containers")
    server["restartPolicy"] = "Always"
    downloads = list(parts.pop("initContainers", None) or [])
    volumes = list(parts.pop("volumes"))
    if nim.download_inputs:
        downloads.insert(0, _input_downloader(nim, input_downloader_image, security))
        volumes += [
            {"name": "shared-data", "emptyDir": {}},
            {"name": "downloader-tmp", "emptyDir": {}},
        ]
        server["volumeMounts"] = [
            *(server.get("volumeMounts") or []),
            {"name": "shared-data", "mountPath": SHARED_PATH, "readOnly": True},
        ]
    # fsGroup lets the server's uid write to a PVC cache.
    group = NVIDIA_GID if profile == "nvidia" else NIM_UID
    spec = {
        "securityContext": {"fsGroup": group},
        **parts,
        "initContainers": [*downloads, server],
        "containers": [],
        "volumes": volumes,
    }
    return drop_none(spec)  # type: ignore[no-any-return]


def sidecar_pod_template(nim: NIM, settings: ConnectorSettings | None = None) -> PodTemplate:
    """`sidecar_pod_spec` as a flytekit PodTemplate (kubernetes V1PodSpec inside)."""
    from flytekit import PodTemplate
    from flytekit.configuration.default_images import DefaultImages
    from kubernetes.client import V1PodSpec

    spec = sidecar_pod_spec(nim, settings, input_downloader_image=DefaultImages.default_image())
    return PodTemplate(
        pod_spec=V1PodSpec.from_dict(spec),
        labels=dict(nim.labels or {}) or None,
        annotations=dict(nim.annotations or {}) or None,
    )
