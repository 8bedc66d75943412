"""NIM and NIMSecrets: seed defaults, validation messages, the config-file form."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nim_agent.checks import parse_quantity
from nim_agent.config import NIM, ConfigError, NIMSecrets, Problem
from tests.configs import everything

SECRETS = {"ngc_image_secret": "ngc-pull", "ngc_secret_key": "api_key", "secrets_prefix": "_FSEC_"}


def config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"secrets": dict(SECRETS)}
    data.update(overrides)
    return data


def lora(**overrides: Any) -> dict[str, Any]:
    data = config(
        env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
        hf_repo_ids=["tloen/alpaca-lora-7b"],
        lora_adapter_mem="2Gi",
    )
    data.update(overrides)
    return data


def secrets(**overrides: Any) -> dict[str, Any]:
    return config(secrets={**SECRETS, **overrides})


# (case id, config-file dict, the field the message must name, a word the message must contain)
BAD_CONFIGS: list[tuple[str, dict[str, Any], str, str]] = [
    ("image empty", config(image=""), "image", '""'),
    ("image uppercase repo", config(image="nvcr.io/NIM/llama:1"), "image", "lowercase"),
    ("image with spaces", config(image="nvcr.io/nim llama"), "image", "image reference"),
    (
        "health endpoint is a URL",
        config(health_endpoint="http://x/ready"),
        "health_endpoint",
        "path",
    ),
    ("health endpoint empty", config(health_endpoint="/"), "health_endpoint", "path"),
    ("port zero", config(port=0), "port", "1..65535"),
    ("port too large", config(port=70000), "port", "1..65535"),
    ("port as string", config(port="8000"), "port", "1..65535"),
    ("cpu negative", config(cpu=-1), "cpu", "more than zero"),
    ("cpu zero", config(cpu=0), "cpu", "more than zero"),
    ("cpu unparseable", config(cpu="two"), "cpu", "500m"),
    ("cpu finer than millicore", config(cpu="100u"), "cpu", "millicore"),
    ("cpu bool", config(cpu=True), "cpu", "cores"),
    ("gpu negative", config(gpu=-1), "gpu", "0 or more"),
    ("gpu fraction", config(gpu=0.5), "gpu", "not an integer"),
    ("mem in GB", config(mem="20GB"), "mem", '"20Gi"'),
    ("mem as int", config(mem=20), "mem", '"20Gi"'),
    ("mem in millibytes", config(mem="512m"), "mem", "Mi"),
    ("mem zero", config(mem="0"), "mem", "more than zero"),
    ("shm size with space", config(shm_size="16 Gi"), "shm_size", '"16Gi"'),
    ("env not a mapping", config(env=["A=1"]), "env", "mapping"),
    ("env name starts with digit", config(env={"1ABC": "x"}), "env", '"1ABC"'),
    (
        "env value not a string",
        config(env={"NIM_MAX_GPU_LORAS": 4}),
        "env.NIM_MAX_GPU_LORAS",
        '"4"',
    ),
    ("env sets NGC_API_KEY", config(env={"NGC_API_KEY": "nvapi-x"}), "env.NGC_API_KEY", "Secret"),
    ("env sets HF_TOKEN", config(env={"HF_TOKEN": "hf_x"}), "env.HF_TOKEN", "hf_token_key"),
    (
        "env sets NIM_CACHE_PATH",
        config(env={"NIM_CACHE_PATH": "/x"}),
        "env.NIM_CACHE_PATH",
        "cache_pvc",
    ),
    ("lora without NIM_PEFT_SOURCE", lora(env={}), "env.NIM_PEFT_SOURCE", "required"),
    ("lora without adapter mem", lora(lora_adapter_mem=None), "lora_adapter_mem", "required"),
    ("lora adapter mem in GB", lora(lora_adapter_mem="2GB"), "lora_adapter_mem", '"2Gi"'),
    (
        "peft source relative",
        lora(env={"NIM_PEFT_SOURCE": "loras"}),
        "env.NIM_PEFT_SOURCE",
        "absolute",
    ),
    (
        "peft source in cache",
        lora(env={"NIM_PEFT_SOURCE": "/opt/nim/.cache/l"}),
        "env.NIM_PEFT_SOURCE",
        "overlaps",
    ),
    ("hf repo ids a string", lora(hf_repo_ids="tloen/alpaca-lora-7b"), "hf_repo_ids", "not a list"),
    ("hf repo id malformed", lora(hf_repo_ids=["not a repo"]), "hf_repo_ids[0]", "owner/name"),
    ("hf repo id three parts", lora(hf_repo_ids=["a/b/c"]), "hf_repo_ids[0]", "owner/name"),
    ("hf adapters collide", lora(hf_repo_ids=["a/lora", "b/lora"]), "hf_repo_ids[1]", "adapter"),
    ("namespace with capitals", config(namespace="My_NS"), "namespace", '"my-ns"'),
    (
        "ephemeral storage malformed",
        config(ephemeral_storage="100 GB"),
        "ephemeral_storage",
        '"100Gi"',
    ),
    ("cache pvc with spaces", config(cache_pvc="My Cache"), "cache_pvc", "object name"),
    (
        "node selector bad key",
        config(node_selector={"gpu type": "a100"}),
        "node_selector",
        "label key",
    ),
    (
        "node selector bad value",
        config(node_selector={"gpu": "a 100"}),
        "node_selector.gpu",
        "label value",
    ),
    (
        "toleration misspelled field",
        config(tolerations=[{"key": "a", "efect": "NoSchedule"}]),
        "tolerations[0].efect",
        "'effect'",
    ),
    (
        "toleration bad operator",
        config(tolerations=[{"key": "a", "operator": "Equals"}]),
        "tolerations[0].operator",
        "Equal",
    ),
    (
        "toleration bad effect",
        config(tolerations=[{"key": "a", "effect": "NoScheduled"}]),
        "tolerations[0].effect",
        "'NoSchedule'",
    ),
    (
        "toleration Exists with value",
        config(tolerations=[{"key": "a", "operator": "Exists", "value": "b"}]),
        "tolerations[0].value",
        "absent",
    ),
    (
        "toleration seconds without NoExecute",
        config(tolerations=[{"key": "a", "operator": "Exists", "tolerationSeconds": 5}]),
        "tolerations[0].tolerationSeconds",
        "NoExecute",
    ),
    ("tolerations not a list", config(tolerations={"key": "a"}), "tolerations", "not a list"),
    ("gpu toleration not a bool", config(gpu_toleration="yes"), "gpu_toleration", "true or false"),
    (
        "affinity unknown field",
        config(affinity={"nodeAfinity": {}}),
        "affinity.nodeAfinity",
        "'nodeAffinity'",
    ),
    ("affinity not a mapping", config(affinity="zone-a"), "affinity", "mapping"),
    (
        "runtime class bad",
        config(runtime_class_name="Nvidia GPU"),
        "runtime_class_name",
        "object name",
    ),
    (
        "priority class bad",
        config(priority_class_name="High_Priority"),
        "priority_class_name",
        "object name",
    ),
    ("service account bad", config(service_account="NIM SA"), "service_account", "object name"),
    ("label value too long", config(labels={"team": "x" * 64}), "labels.team", "63"),
    ("label key bad prefix", config(labels={"Example.COM/team": "a"}), "labels", "prefix"),
    ("label value not a string", config(labels={"cost-center": 42}), "labels.cost-center", "quote"),
    ("annotation key bad", config(annotations={"bad key": "v"}), "annotations", "label key"),
    ("annotation value not a string", config(annotations={"a": 1}), "annotations.a", "quote"),
    ("pull policy lowercase", config(image_pull_policy="always"), "image_pull_policy", "'Always'"),
    (
        "startup threshold zero",
        config(startup_failure_threshold=0),
        "startup_failure_threshold",
        "1 or more",
    ),
    (
        "startup period negative",
        config(startup_period_seconds=-10),
        "startup_period_seconds",
        "1 or more",
    ),
    (
        "readiness period zero",
        config(readiness_period_seconds=0),
        "readiness_period_seconds",
        "1 or more",
    ),
    (
        "liveness threshold string",
        config(liveness_failure_threshold="3"),
        "liveness_failure_threshold",
        "integer",
    ),
    (
        "lora downloader image bad",
        config(lora_downloader_image="Python:3"),
        "lora_downloader_image",
        "image",
    ),
    ("secrets missing", {"image": "nvcr.io/nim/x:1"}, "secrets", "required"),
    ("secrets not a mapping", config(secrets="ngc"), "secrets", "mapping"),
    (
        "secrets image secret bad name",
        secrets(ngc_image_secret="NGC Pull"),
        "secrets.ngc_image_secret",
        '"ngc-pull"',
    ),
    ("secrets key bad", secrets(ngc_secret_key="api key"), "secrets.ngc_secret_key", "Secret key"),
    (
        "secrets group bad",
        secrets(ngc_secret_group="NGC_Group"),
        "secrets.ngc_secret_group",
        "object name",
    ),
    (
        "secrets hf group without key",
        secrets(hf_token_group="hf"),
        "secrets.hf_token_group",
        "hf_token_key",
    ),
    ("secrets prefix bad", secrets(secrets_prefix="_F-SEC_"), "secrets.secrets_prefix", "prefix"),
    (
        "secrets key missing",
        config(secrets={"ngc_image_secret": "a", "secrets_prefix": ""}),
        "secrets.ngc_secret_key",
        "required",
    ),
    ("secrets unknown key", secrets(hf_token="x"), "secrets.hf_token", "did you mean"),
    ("unknown top-level key", config(memory="20Gi"), "memory", "'mem'"),
    ("secret field at top level", config(ngc_secret_group="ngc"), "ngc_secret_group", "secrets"),
    ("hf endpoint without scheme", config(hf_endpoint="hf-mirror.local"), "hf_endpoint", "http"),
    (
        "hf endpoint with credentials",
        config(hf_endpoint="https://user:pw@hf.example.com"),
        "hf_endpoint",
        "credentials",
    ),
    (
        "security profile unknown",
        config(security_profile="privileged"),
        "security_profile",
        "restricted, nvidia",
    ),
    ("security profile typo", config(security_profile="nvida"), "security_profile", "'nvidia'"),
]


def test_the_bad_config_table_has_at_least_thirty_cases() -> None:
    assert len(BAD_CONFIGS) >= 30
    assert len({case[0] for case in BAD_CONFIGS}) == len(BAD_CONFIGS)


@pytest.mark.parametrize(
    ("data", "field", "word"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_each_bad_config_is_rejected_with_a_message_naming_its_field(
    data: dict[str, Any], field: str, word: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        NIM.from_dict(data)
    fields = [p.field for p in caught.value.problems]
    assert field in fields, f"expected a problem on {field!r}, got {caught.value}"
    message = next(p.message for p in caught.value.problems if p.field == field)
    assert word in message
    assert f"{field}: " in str(caught.value)


def test_config_error_is_a_value_error_listing_every_problem_together() -> None:
    with pytest.raises(ValueError) as caught:
        NIM(secrets=NIMSecrets(**SECRETS), mem="20GB", port=0, gpu=-1)
    error = caught.value
    assert isinstance(error, ConfigError)
    assert [p.field for p in error.problems] == ["port", "gpu", "mem"]
    assert str(error).startswith("3 problems in the NIM configuration:")
    assert 'mem: "20GB" is not a Kubernetes quantity; use e.g. "20Gi"' in str(error)


def test_a_single_problem_reads_as_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        NIM(secrets=NIMSecrets(**SECRETS), mem="20GB")
    assert str(caught.value) == 'mem: "20GB" is not a Kubernetes quantity; use e.g. "20Gi"'
    assert caught.value.problems == (
        Problem("mem", '"20GB" is not a Kubernetes quantity; use e.g. "20Gi"'),
    )


def test_secrets_and_nim_problems_are_reported_in_one_error_from_a_file() -> None:
    data = config(mem="20GB")
    data["secrets"]["ngc_secret_key"] = "bad key"
    with pytest.raises(ConfigError) as caught:
        NIM.from_dict(data)
    assert {p.field for p in caught.value.problems} == {"secrets.ngc_secret_key", "mem"}


def test_nim_keeps_every_seed_default() -> None:
    nim = NIM(secrets=NIMSecrets(**SECRETS))
    assert nim.image == "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0"
    assert nim.health_endpoint == "v1/health/ready"
    assert (nim.port, nim.cpu, nim.gpu, nim.mem, nim.shm_size) == (8000, 1, 1, "20Gi", "16Gi")
    assert nim.env == {} and nim.hf_repo_ids == [] and nim.lora_adapter_mem is None
    assert nim.startup_failure_threshold == 100


def test_nim_secrets_keeps_every_seed_field_with_optional_groups() -> None:
    s = NIMSecrets(**SECRETS)
    assert (s.ngc_secret_group, s.hf_token_group, s.hf_token_key) == (None, None, None)
    full = NIMSecrets(**SECRETS, ngc_secret_group="ngc", hf_token_group="hf", hf_token_key="token")
    assert full.hf_token_key == "token"


@pytest.mark.parametrize("cpu", [1, 2, 0.5, "500m", "2", "1.5"])
def test_cpu_accepts_cores_fractions_and_quantities(cpu: object) -> None:
    assert NIM(secrets=NIMSecrets(**SECRETS), cpu=cpu).cpu == cpu  # type: ignore[arg-type]


@pytest.mark.parametrize("mem", ["20Gi", "20G", "20000Mi", "1.5Gi", "20e9", "512Ki"])
def test_memory_accepts_kubernetes_quantities(mem: str) -> None:
    assert NIM(secrets=NIMSecrets(**SECRETS), mem=mem).mem == mem


@pytest.mark.parametrize(
    "image",
    [
        "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0",
        "localhost:5000/nim:dev",
        "llama",
        "nvcr.io/nim/meta/llama3-8b-instruct@sha256:" + "a" * 64,
    ],
)
def test_image_accepts_registry_ports_bare_names_and_digests(image: str) -> None:
    assert NIM(secrets=NIMSecrets(**SECRETS), image=image).image == image


def test_collections_are_copied_so_later_changes_do_not_leak_in() -> None:
    env = {"A": "1"}
    repos = ["tloen/alpaca-lora-7b"]
    nim = NIM(
        secrets=NIMSecrets(**SECRETS),
        env={**env, "NIM_PEFT_SOURCE": "/opt/nim/loras"},
        hf_repo_ids=repos,
        lora_adapter_mem="2Gi",
    )
    repos.append("x/y")
    assert nim.hf_repo_ids == ["tloen/alpaca-lora-7b"]


def test_nim_is_frozen() -> None:
    nim = NIM(secrets=NIMSecrets(**SECRETS))
    with pytest.raises(AttributeError):
        nim.port = 9000  # type: ignore[misc]


def test_health_path_gets_exactly_one_leading_slash() -> None:
    base = NIMSecrets(**SECRETS)
    assert NIM(secrets=base).health_path == "/v1/health/ready"
    assert NIM(secrets=base, health_endpoint="/v1/health/ready").health_path == "/v1/health/ready"


def test_base_url_is_localhost_on_the_port() -> None:
    assert NIM(secrets=NIMSecrets(**SECRETS), port=9000).base_url == "http://localhost:9000"


def test_to_dict_and_from_dict_round_trip_every_field() -> None:
    data = everything().to_dict()
    nim = NIM.from_dict(copy.deepcopy(data))
    assert nim.to_dict() == data
    assert NIM.from_dict(nim.to_dict()) == nim


def test_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(ConfigError) as caught:
        NIM.from_dict(["image"])
    assert caught.value.problems[0].field == "(top level)"


@pytest.mark.parametrize(
    ("text", "value"),
    [("20Gi", 20 * 2**30), ("500m", 0.5), ("1e3", 1000), ("2k", 2000), ("1.5Gi", 1.5 * 2**30)],
)
def test_quantities_parse_to_their_value(text: str, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["20GB", "", "Gi", "1 Gi", "2K"])
def test_malformed_quantities_do_not_parse(text: str) -> None:
    assert parse_quantity(text) is None


def readme_table(heading: str) -> dict[str, str]:
    """{parameter: default cell} of the reference table under `heading` in README.md."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, re.M)
    return {name: default.strip() for name, default in rows}


@pytest.mark.parametrize("cls", [NIM, NIMSecrets], ids=["NIM", "NIMSecrets"])
def test_the_readme_reference_lists_every_field_with_its_default(cls: type) -> None:
    import ast
    import dataclasses

    table = readme_table(f"`{cls.__name__}`")
    fields = dataclasses.fields(cls)
    assert list(table) == [f.name for f in fields]
    for f in fields:
        if f.default is dataclasses.MISSING:
            assert table[f.name] == "required", f.name
        else:
            assert ast.literal_eval(table[f.name].strip("`")) == f.default, f.name
