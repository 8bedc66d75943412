"""Reuse on the user's and the operator's side: `Reuse` and `NIMTask(reuse=...)`, the task config
that carries it, the settings, the rendered shared server and its holders' Services, the keys
users may not set, and the resource_meta of a holder."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from flytekit.types.directory import FlyteDirectory

from nim_agent import NIM, ConfigError, NIMSecrets, NIMTask, Reuse
from nim_agent.connector import NIMMetadata
from nim_agent.contract import (
    ANNOTATION_REUSE,
    LABEL_GENERATION,
    LABEL_HOLDER,
    LABEL_SHARE_KEY,
    is_reserved_key,
)
from nim_agent.render import (
    ADAPTER_SYNC_PROGRAM,
    DeploymentIdentity,
    ExecutionIdentity,
    SharedServer,
    render_pod,
    service_for_holder,
)
from nim_agent.settings import ConnectorSettings
from nim_agent.spec import from_custom, to_custom

SECRETS = NIMSecrets(ngc_image_secret="ngc-pull", ngc_secret_key="api_key", secrets_prefix="")
PEFT = {"NIM_PEFT_SOURCE": "/opt/nim/loras"}


def nim(**overrides: Any) -> NIM:
    return NIM(secrets=SECRETS, **overrides)


# --------------------------------------------------------------------------- user side


def test_reuse_true_is_the_defaults_and_false_or_none_is_no_sharing() -> None:
    assert Reuse.of(True) == Reuse(scope="namespace", idle_ttl=None)
    assert Reuse.of(False) is None and Reuse.of(None) is None
    custom = Reuse(scope="project-domain", idle_ttl=timedelta(minutes=3))
    assert Reuse.of(custom) is custom


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scope": "cluster"}, "reuse.scope"),
        ({"idle_ttl": timedelta(0)}, "reuse.idle_ttl"),
        ({"idle_ttl": 60}, "reuse.idle_ttl"),
    ],
)
def test_a_bad_reuse_is_a_config_error_naming_its_field(kwargs: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        Reuse(**kwargs)
    assert [p.field for p in err.value.problems] == [field]


def test_reuse_that_is_not_a_reuse_is_refused_naming_reuse() -> None:
    with pytest.raises(ConfigError, match='reuse: "yes" is not True, False or Reuse'):
        NIMTask(name="t", nim=nim(), reuse="yes")  # type: ignore[arg-type]


def test_the_task_config_carries_reuse_and_reads_it_back() -> None:
    task = NIMTask(name="t", nim=nim(), reuse=True)
    assert task.reuse == Reuse()
    assert from_custom(task.get_custom(None)).reuse == Reuse()  # type: ignore[arg-type]
    custom = Reuse(scope="project-domain", idle_ttl=timedelta(minutes=3))
    spec = from_custom(to_custom(nim(), None, False, custom))
    assert spec.reuse == custom
    assert from_custom(to_custom(nim())).reuse is None
    assert "reuse" not in to_custom(nim())  # an older connector reads the same config


def test_reuse_with_adapters_as_inputs_needs_the_typed_endpoint() -> None:
    kwargs: dict[str, Any] = {
        "name": "t",
        "nim": nim(env=PEFT, lora_adapter_mem="1Gi"),
        "inputs": {"support": FlyteDirectory},
        "reuse": True,
    }
    with pytest.raises(ConfigError) as err:
        NIMTask(**kwargs)
    assert err.value.problems[0].field == "typed_endpoint"
    assert "<name>-<hash of its URI>" in err.value.problems[0].message
    assert NIMTask(**kwargs, typed_endpoint=True).reuse == Reuse()
    long = {"x" * 120: FlyteDirectory}
    with pytest.raises(ConfigError, match="served as <name>-<8 hex>"):
        NIMTask(**{**kwargs, "inputs": long}, typed_endpoint=True)


# --------------------------------------------------------------------------- operator side


def test_the_reuse_settings_load_from_the_environment() -> None:
    settings = ConnectorSettings.load(
        {
            "NIM_AGENT_ALLOW_REUSE": "false",
            "NIM_AGENT_REUSE_IDLE_TTL": "2m",
            "NIM_AGENT_REUSE_MAX_TTL": "6h",
        }
    )
    assert settings.allow_reuse is False
    assert settings.reuse_idle_ttl == timedelta(minutes=2)
    assert settings.shared_lifetime == timedelta(hours=6)
    capped = ConnectorSettings(max_ttl=timedelta(hours=3), default_ttl=timedelta(hours=1))
    assert capped.shared_lifetime == timedelta(hours=3)


# --------------------------------------------------------------------------- the shared server


def shared_pod(config: NIM, inputs: bool = False) -> dict[str, Any]:
    identity = DeploymentIdentity(name="nim-s-0", namespace="ns")
    shared = SharedServer(key="k" * 32, generation=2, lifetime=timedelta(hours=6), inputs=inputs)
    return render_pod(config, identity, ConnectorSettings(), shared=shared)


def test_a_shared_server_carries_its_key_and_no_execution_identity() -> None:
    pod = shared_pod(nim(labels={"team": "ml"}))
    labels = pod["metadata"]["labels"]
    assert labels[LABEL_SHARE_KEY] == "k" * 32 and labels[LABEL_GENERATION] == "2"
    assert not {k for k in labels if k.endswith(("/execution", "/node", "/retry"))}
    assert labels["team"] == "ml"
    assert pod["metadata"]["annotations"][ANNOTATION_REUSE] == "namespace"
    assert pod["spec"]["activeDeadlineSeconds"] == 6 * 3600  # its lifetime cap
    assert "initContainers" not in pod["spec"]  # no adapters, no NIM_PEFT_SOURCE: no sidecar


def test_a_shared_server_with_adapters_runs_the_adapter_sync_sidecar() -> None:
    config = nim(env=PEFT, lora_adapter_mem="1Gi", hf_endpoint="http://hub.example")
    pod = shared_pod(config)
    spec = pod["spec"]
    [sidecar] = spec["initContainers"]  # no adapter of its own: only the sidecar
    assert sidecar["name"] == "adapter-sync" and sidecar["restartPolicy"] == "Always"
    assert sidecar["command"][:3] == ["python3", "-c", ADAPTER_SYNC_PROGRAM]
    assert len(sidecar["command"]) == 5  # + the sources of both downloaders
    assert sidecar["image"] == config.image  # Hugging Face only: the downloader's image
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["NIM_PEFT_SOURCE"] == "/opt/nim/loras"
    assert env["NIM_AGENT_ANNOTATIONS"] == "/etc/nim-agent/annotations"
    assert env["HF_ENDPOINT"] == "http://hub.example"
    assert sidecar["resources"]["requests"] == sidecar["resources"]["limits"]
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts == {"lora": "/opt/nim/loras", "nim-agent-annotations": "/etc/nim-agent"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["nim-agent-annotations"]["downwardAPI"]["items"] == [
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
    ]
    [main] = spec["containers"]
    nim_env = {e["name"]: e.get("value") for e in main["env"]}
    assert nim_env["NIM_PEFT_REFRESH_INTERVAL"] == "5"
    own = shared_pod(nim(env={**PEFT, "NIM_PEFT_REFRESH_INTERVAL": "30"}, lora_adapter_mem="1Gi"))
    own_env = [e for e in own["spec"]["containers"][0]["env"] if "REFRESH" in e["name"]]
    assert own_env == [{"name": "NIM_PEFT_REFRESH_INTERVAL", "value": "30"}]


def test_a_shared_server_taking_input_adapters_runs_its_sidecar_in_flytekit_s_image() -> None:
    settings = ConnectorSettings(
        adapter_inputs_image="registry.example/flytekit:1",
        adapter_inputs_secret="object-store",
    )
    identity = DeploymentIdentity(name="nim-s-0", namespace="ns")
    shared = SharedServer(key="k" * 32, inputs=True)
    pod = render_pod(nim(env=PEFT, lora_adapter_mem="1Gi"), identity, settings, shared=shared)
    [sidecar] = pod["spec"]["initContainers"]
    assert sidecar["image"] == "registry.example/flytekit:1"
    assert sidecar["envFrom"] == [{"secretRef": {"name": "object-store"}}]
    assert {m["name"] for m in sidecar["volumeMounts"]} >= {"downloader-tmp"}


def test_the_creator_s_adapters_come_with_the_pod_before_the_sidecar_starts() -> None:
    config = nim(env=PEFT, lora_adapter_mem="1Gi", hf_repo_ids=["o/x"])
    pod = shared_pod(config)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["lora-downloader", "adapter-sync"]
    # Its adapters are its holders' (records): the pod names none of its own.
    assert "nim-agent.dev/adapters" not in pod["metadata"]["annotations"]


def test_a_holder_s_service_is_its_own_name_selecting_the_shared_pod() -> None:
    pod = shared_pod(nim())
    pod["metadata"]["uid"] = "u-1"
    execution = ExecutionIdentity("p", "d", "e1", "n0", 0)
    service = service_for_holder(pod, "nim-e1-n0-0-abc", execution=execution, task_name="t")
    meta = service["metadata"]
    assert meta["name"] == "nim-e1-n0-0-abc"
    assert service["spec"]["selector"] == {"nim-agent.dev/deployment": "nim-s-0"}
    assert meta["labels"][LABEL_HOLDER] == "nim-e1-n0-0-abc"
    assert meta["labels"]["nim-agent.dev/execution"] == "e1"
    assert meta["annotations"]["nim-agent.dev/endpoint"] == (
        "http://nim-e1-n0-0-abc.ns.svc.cluster.local:8000"
    )
    assert json.loads(meta["annotations"]["nim-agent.dev/execution-id"])["execution"] == "e1"
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "nim-s-0", "uid": "u-1"}
    ]


@pytest.mark.parametrize(
    ("key", "reserved"),
    [
        ("holders.nim-agent.dev/nim-e1", True),
        ("a.b.nim-agent.dev/x", True),
        ("nim-agent.dev/adapters-kept", True),
        ("nim-agent.dev/simulate", False),
        ("nim-agent.dev/simulate-ready-after", False),
        ("xnim-agent.dev/x", False),
        ("team", False),
        ("example.com/holders", False),
    ],
)
def test_users_may_not_set_nim_agent_s_keys_nor_holder_records(key: str, reserved: bool) -> None:
    assert is_reserved_key(key) is reserved
    pod = render_pod(nim(annotations={key: "v"}), DeploymentIdentity(name="n", namespace="ns"))
    assert (key in pod["metadata"]["annotations"]) is (not reserved)


# --------------------------------------------------------------------------- resource meta


def test_a_holder_s_metadata_names_the_shared_server_and_round_trips() -> None:
    meta = NIMMetadata(
        namespace="ns",
        name="nim-e1-n0-0-abc",
        endpoint="http://nim-e1-n0-0-abc.ns.svc.cluster.local:8000",
        shared="nim-llama-shared-123",
    )
    assert NIMMetadata.decode(meta.encode()) == meta
    assert meta.pod_name == "nim-llama-shared-123"
    assert NIMMetadata(namespace="ns", name="x").pod_name == "x"
    bad = NIMMetadata.decode(b'{"namespace": "ns", "name": "x", "shared": "%"}')
    assert bad.error
