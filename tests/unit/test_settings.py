"""ConnectorSettings: defaults, env vars, the YAML file, and field-named errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from nim_agent.checks import ConfigError
from nim_agent.contract import format_duration, parse_duration
from nim_agent.settings import ConnectorSettings


def test_defaults_are_valid_and_documented_values() -> None:
    s = ConnectorSettings()
    assert s.default_secret_name == "nim-secrets"
    assert s.default_ttl == timedelta(hours=2)
    assert s.allowed_namespaces == ()
    assert s.crashloop_restart_threshold == 3
    assert ConnectorSettings.load({}) == s


def test_env_vars_set_each_field() -> None:
    s = ConnectorSettings.load(
        {
            "NIM_AGENT_DEFAULT_SECRET_NAME": "ngc",
            "NIM_AGENT_DEFAULT_NAMESPACE": "flyte",
            "NIM_AGENT_ALLOWED_NAMESPACES": "nim-shared, research",
            "NIM_AGENT_DEFAULT_TTL": "1h30m",
            "NIM_AGENT_MAX_TTL": "12h",
            "NIM_AGENT_KEEP_FAILED": "true",
            "NIM_AGENT_UNSCHEDULABLE_TIMEOUT": "600",
            "NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD": "5",
            "NIM_AGENT_LOG_LINKS": '{"Pod logs": "https://logs/{namespace}/{pod}/{container}"}',
            "NIM_AGENT_ALLOW_CACHE_PVC": "no",
            "NIM_AGENT_LORA_DOWNLOADER_IMAGE": "ghcr.io/acme/hf-downloader:1",
            "PATH": "/usr/bin",
        }
    )
    assert s.default_secret_name == "ngc"
    assert s.allowed_namespaces == ("nim-shared", "research")
    assert s.default_ttl == timedelta(minutes=90)
    assert s.max_ttl == timedelta(hours=12)
    assert s.keep_failed is True and s.allow_cache_pvc is False
    assert s.unschedulable_timeout == timedelta(minutes=10)
    assert s.crashloop_restart_threshold == 5
    assert s.log_links_for("ns", "pod-1") == [("Pod logs", "https://logs/ns/pod-1/nim")]
    assert s.lora_downloader_image == "ghcr.io/acme/hf-downloader:1"


def test_the_yaml_file_is_read_first_and_env_vars_win(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("default_ttl: 4h\nallowed_namespaces: [a, b]\nkeep_failed: true\n")
    s = ConnectorSettings.load({"NIM_AGENT_CONFIG": str(path), "NIM_AGENT_DEFAULT_TTL": "30m"})
    assert s.default_ttl == timedelta(minutes=30)
    assert s.allowed_namespaces == ("a", "b")
    assert s.keep_failed is True


def test_every_problem_names_its_env_var() -> None:
    with pytest.raises(ConfigError) as caught:
        ConnectorSettings.load(
            {
                "NIM_AGENT_DEFAULT_TTL": "2 hours",
                "NIM_AGENT_DEFALT_SECRET_NAME": "x",
                "NIM_AGENT_KEEP_FAILED": "maybe",
                "NIM_AGENT_ALLOWED_NAMESPACES": "Bad_NS",
                "NIM_AGENT_LOG_LINKS": '{"L": "https://x/{podname}"}',
            }
        )
    fields = [p.field for p in caught.value.problems]
    assert fields == [
        "NIM_AGENT_DEFAULT_TTL",
        "NIM_AGENT_DEFALT_SECRET_NAME",
        "NIM_AGENT_KEEP_FAILED",
        "NIM_AGENT_ALLOWED_NAMESPACES",
        "NIM_AGENT_LOG_LINKS.L",
    ]
    assert "NIM_AGENT_DEFAULT_SECRET_NAME" in str(caught.value)


def test_file_problems_name_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("default_tll: 2h\n")
    with pytest.raises(ConfigError) as caught:
        ConnectorSettings.load({"NIM_AGENT_CONFIG": str(path)})
    assert caught.value.problems[0].field == f"default_tll ({path})"
    assert "'default_ttl'" in caught.value.problems[0].message


def test_a_missing_or_broken_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ConnectorSettings.load({"NIM_AGENT_CONFIG": str(tmp_path / "absent.yaml")})
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ConnectorSettings.load({"NIM_AGENT_CONFIG": str(bad)})


def test_default_ttl_may_not_exceed_max_ttl() -> None:
    with pytest.raises(ConfigError, match="default_ttl: 2h is longer than max_ttl 1h"):
        ConnectorSettings(max_ttl=timedelta(hours=1))


def test_a_wildcard_allows_every_namespace() -> None:
    assert ConnectorSettings(allowed_namespaces=("*",)).namespace_allowed("anything")
    assert not ConnectorSettings(allowed_namespaces=("a",)).namespace_allowed("b")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("45", 45)]
)
def test_durations_parse_and_format_back(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "2 hours", "1d", "-5m", "h"])
def test_malformed_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_each_field_is_converted_by_its_type() -> None:
    s = ConnectorSettings.load(
        {
            "NIM_AGENT_MAX_TTL": "none",  # timedelta | None
            "NIM_AGENT_LORA_DOWNLOADER_IMAGE": "",  # str | None
            "NIM_AGENT_WATCH_NAMESPACES": "a, b",  # tuple[str, ...]
            "NIM_AGENT_REAP_INTERVAL": "45",  # timedelta, plain seconds
            "NIM_AGENT_ALLOW_CACHE_PVC": "off",  # bool
        }
    )
    assert s.max_ttl is None and s.lora_downloader_image is None
    assert s.watch_namespaces == ("a", "b")
    assert s.reap_interval == timedelta(seconds=45)
    assert s.allow_cache_pvc is False
    from_file = ConnectorSettings.from_mapping({"max_ttl": None, "watch_namespaces": ["c"]})
    assert from_file.max_ttl is None and from_file.watch_namespaces == ("c",)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD", "-1", "-1 is not an integer of 1 or more"),
        ("NIM_AGENT_CRASHLOOP_RESTART_THRESHOLD", "three", '"three" is not an integer'),
        ("NIM_AGENT_MAX_TTL", "-5m", "is not a duration"),
        ("NIM_AGENT_LOG_LINKS", "[1]", "is not a mapping of names to strings"),
    ],
)
def test_a_value_its_field_type_cannot_take_is_refused_naming_the_variable(
    var: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        ConnectorSettings.load({var: value})
    [problem] = caught.value.problems
    assert problem.field == var
    assert message in problem.message


def test_status_policy_carries_the_thresholds_of_the_settings() -> None:
    s = ConnectorSettings(crashloop_restart_threshold=7, unschedulable_timeout=timedelta(minutes=3))
    policy = s.status_policy()
    assert policy.crashloop_restart_threshold == 7
    assert policy.unschedulable_timeout == timedelta(minutes=3)


def test_the_serving_adapter_and_security_settings_load_from_env_vars() -> None:
    s = ConnectorSettings.load(
        {
            "NIM_AGENT_SERVING_CHECK": "proxy",
            "NIM_AGENT_SERVING_WINDOW": "10m",
            "NIM_AGENT_SERVING_TIMEOUT": "2",
            "NIM_AGENT_HF_ENDPOINT": "http://hf-mirror.internal:8080",
            "NIM_AGENT_ADAPTER_INPUTS_IMAGE": "registry.local/flytekit:1.16.31",
            "NIM_AGENT_ADAPTER_INPUTS_ENV": '{"FLYTE_AWS_ENDPOINT": "http://minio:9000"}',
            "NIM_AGENT_ADAPTER_INPUTS_SECRET": "flyte-object-store",
            "NIM_AGENT_SECURITY_PROFILE": "nvidia",
            "NIM_AGENT_ALLOWED_SECURITY_PROFILES": "restricted",
        }
    )
    assert s.serving_check == "proxy"
    assert s.serving_window == timedelta(minutes=10) and s.serving_timeout == timedelta(seconds=2)
    assert s.status_policy().serving_window == timedelta(minutes=10)
    assert s.hf_endpoint == "http://hf-mirror.internal:8080"
    assert s.adapter_inputs_image == "registry.local/flytekit:1.16.31"
    assert s.adapter_inputs_env == (("FLYTE_AWS_ENDPOINT", "http://minio:9000"),)
    assert s.adapter_inputs_secret == "flyte-object-store"
    assert s.security_profile == "nvidia" and s.allowed_security_profiles == ("restricted",)
    assert s.security_profile_allowed("restricted") and s.security_profile_allowed("nvidia")
    assert not ConnectorSettings().security_profile_allowed("nvidia")


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("NIM_AGENT_SERVING_CHECK", "always", "is not one of auto, direct, proxy, off"),
        ("NIM_AGENT_SERVING_WINDOW", "0", "is not a positive duration"),
        ("NIM_AGENT_HF_ENDPOINT", "ftp://hub", "is not an http(s) URL"),
        ("NIM_AGENT_ADAPTER_INPUTS_IMAGE", "Registry/Flytekit", "is not an image reference"),
        ("NIM_AGENT_ADAPTER_INPUTS_SECRET", "Bad_Name", "is not a Kubernetes object name"),
        ("NIM_AGENT_SECURITY_PROFILE", "privileged", "is not one of restricted, nvidia"),
        ("NIM_AGENT_ALLOWED_SECURITY_PROFILES", "nvida", "did you mean 'nvidia'"),
    ],
)
def test_bad_serving_adapter_and_security_settings_name_their_variable(
    var: str, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        ConnectorSettings.load({var: value})
    [problem] = caught.value.problems
    assert problem.field == var and fragment in problem.message


def test_the_default_adapter_inputs_image_is_flytekits_own_for_its_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flytekit.configuration.default_images import DefaultImages

    from nim_agent.settings import flytekit_image

    monkeypatch.delenv("FLYTE_INTERNAL_IMAGE", raising=False)
    assert flytekit_image() == DefaultImages.find_image_for()  # flytekit's own naming


def test_kubernetes_service_link_variables_are_not_settings() -> None:
    # What a pod gets for a Service named nim-agent (or nim-agent-metrics) in its namespace.
    links = {
        "NIM_AGENT_SERVICE_HOST": "10.96.0.12",
        "NIM_AGENT_SERVICE_PORT": "8000",
        "NIM_AGENT_SERVICE_PORT_GRPC": "8000",
        "NIM_AGENT_PORT": "tcp://10.96.0.12:8000",
        "NIM_AGENT_PORT_8000_TCP": "tcp://10.96.0.12:8000",
        "NIM_AGENT_PORT_8000_TCP_PROTO": "tcp",
        "NIM_AGENT_PORT_8000_TCP_PORT": "8000",
        "NIM_AGENT_PORT_8000_TCP_ADDR": "10.96.0.12",
        "NIM_AGENT_METRICS_SERVICE_HOST": "10.96.0.13",
    }
    assert ConnectorSettings.load(environ={**links, "NIM_AGENT_DEFAULT_TTL": "3h"}) == (
        ConnectorSettings(default_ttl=timedelta(hours=3))
    )
    with pytest.raises(ConfigError):  # a misspelt setting is still refused
        ConnectorSettings.load(environ={"NIM_AGENT_DEFAULT_TLL": "3h"})
