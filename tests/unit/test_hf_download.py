"""The LoRA adapter downloader (nim_agent/hf_download.py), run for real against the Hub stand-in.

Every run is the pod's: the module's source given to `python3 -c`, configured by environment,
talking HTTP to devcluster/standin/hf_hub.py. What it fetched is read from the Hub stand-in's
request log, not from the downloader's own words.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nim_agent.hf_download import MARKER, adapter_name, select_adapter_files
from tests.standins import (
    GATED_REPO,
    HF_DOWNLOAD,
    NEMO_REPO,
    NO_ADAPTER_REPO,
    PRIVATE_REPO,
    PUBLIC_REPO,
    TOKEN,
    Process,
    get_json,
    http,
    hub_requests,
    run_downloader,
    start_hub,
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    proc = start_hub(tmp_path_factory.mktemp("hub"))
    yield proc
    proc.stop()


@pytest.fixture
def own_hub(tmp_path: Path) -> Iterator[Process]:
    """A Hub stand-in for one test (faults and new commits must not leak into other tests)."""
    proc = start_hub(tmp_path)
    yield proc
    proc.stop()


def fetched(hub: Process, since: int) -> list[str]:
    """The files downloaded (GET .../resolve/...) since request `since` of the Hub's log."""
    return sorted(
        e["path"].split("/resolve/", 1)[1].split("/", 1)[1]
        for e in hub_requests(hub)[since:]
        if e["method"] == "GET" and "/resolve/" in e["path"] and e["status"] in (200, 302)
    )


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hf-download: ERROR: ")
    return lines[0]


# ------------------------------------------------------------------------------ pure rules


@pytest.mark.parametrize(
    ("repo_id", "name"),
    [
        ("tloen/alpaca-lora-7b", "alpaca-lora-7b"),
        ("org/llama-3.1_sql.v2", "llama-3.1_sql.v2"),
        ("single-name", "single-name"),
    ],
)
def test_the_adapter_folder_is_named_after_the_last_part_of_the_repo_id(
    repo_id: str, name: str
) -> None:
    assert adapter_name(repo_id) == name


@pytest.mark.parametrize("bad", ["", "a/b/c", "../etc", "org/..", "org/.hidden", "a b/c", "org/"])
def test_ids_that_are_not_repo_ids_are_refused_before_becoming_folders(bad: str) -> None:
    with pytest.raises(ValueError, match="not a Hugging Face repository id"):
        adapter_name(bad)


@pytest.mark.parametrize(
    ("files", "chosen"),
    [
        (
            ["README.md", "adapter_config.json", "adapter_model.safetensors", "training_args.bin"],
            ["adapter_config.json", "adapter_model.safetensors"],
        ),
        (
            ["adapter_config.json", "adapter_model.bin", "adapter_model.safetensors"],
            ["adapter_config.json", "adapter_model.bin", "adapter_model.safetensors"],
        ),
        (["lora.nemo", "README.md"], ["lora.nemo"]),
        (["adapter_config.json", "README.md"], []),  # a config without weights
        (["adapter_model.safetensors"], []),  # weights without a config
        (["ckpt/adapter_config.json", "ckpt/adapter_model.safetensors"], []),  # not at the top
        (["config.json", "model-00001-of-00002.safetensors"], []),  # a full model
    ],
)
def test_only_the_adapters_own_top_level_files_are_chosen(
    files: list[str], chosen: list[str]
) -> None:
    assert select_adapter_files(files) == chosen


def test_the_program_parses_as_python_3_8_for_older_images() -> None:
    ast.parse(HF_DOWNLOAD.read_text(), feature_version=(3, 8))


def test_the_program_imports_nothing_from_nim_agent() -> None:
    tree = ast.parse(HF_DOWNLOAD.read_text())
    modules = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(m.startswith("nim_agent") for m in modules), modules


# ------------------------------------------------------------------------------ for real


def test_a_public_adapter_is_downloaded_and_only_its_adapter_files(
    hub: Process, tmp_path: Path
) -> None:
    start = len(hub_requests(hub))
    result = run_downloader([PUBLIC_REPO], tmp_path / "loras", hub)
    assert result.returncode == 0, result.stderr

    folder = tmp_path / "loras" / "llama3-8b-lora-public"
    assert listing(tmp_path / "loras") == ["llama3-8b-lora-public"]  # no staging leftovers
    assert listing(folder) == [MARKER, "adapter_config.json", "adapter_model.safetensors"]
    assert fetched(hub, start) == ["adapter_config.json", "adapter_model.safetensors"]
    info = get_json(f"{hub.url}/api/models/{PUBLIC_REPO}?blobs=true")
    lfs = next(s for s in info["siblings"] if s["rfilename"] == "adapter_model.safetensors")
    data = (folder / "adapter_model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == lfs["lfs"]["sha256"]
    marker = json.loads((folder / MARKER).read_text())
    assert marker["repo_id"] == PUBLIC_REPO and marker["sha"] == info["sha"]
    assert "leaving 6 other file(s)" in result.stdout


def test_a_private_adapter_needs_the_token_which_never_reaches_the_cdn_or_the_output(
    hub: Process, tmp_path: Path
) -> None:
    start = len(hub_requests(hub))
    result = run_downloader([PRIVATE_REPO], tmp_path / "loras", hub, HF_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    assert listing(tmp_path / "loras" / "llama3-8b-lora-private") == [
        MARKER,
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    log = hub_requests(hub)[start:]
    assert {e["auth"] for e in log if e["server"] == "hub"} == {"valid"}
    cdn = [e for e in log if e["server"] == "cdn"]
    assert cdn and {e["auth"] for e in cdn} == {"none"}
    assert TOKEN not in result.stdout + result.stderr
    assert TOKEN not in (tmp_path / "loras" / "llama3-8b-lora-private" / MARKER).read_text()


@pytest.mark.parametrize(
    ("repo", "token", "expected"),
    [
        (
            PRIVATE_REPO,
            None,
            "standin/llama3-8b-lora-private: repository not found at {hub}, or it is private or "
            "gated and no token was given",
        ),
        (
            PRIVATE_REPO,
            "hf_wrong",
            "standin/llama3-8b-lora-private: the Hub at {hub} refused the token in HF_TOKEN",
        ),
        (
            "standin/no-such-adapter",
            None,
            "standin/no-such-adapter: repository not found at {hub}, or it is private",
        ),
        (
            "standin/no-such-adapter",
            TOKEN,
            "standin/no-such-adapter: repository not found at {hub}, or the token has no access",
        ),
        (GATED_REPO, TOKEN, "standin/llama3-8b-lora-gated: the repository is gated"),
        (
            NO_ADAPTER_REPO,
            None,
            "standin/llama3-8b-base-only: no adapter files at the top of the repository (need "
            "adapter_config.json with *.safetensors or *.bin weights, or a *.nemo file); it has: "
            ".gitattributes, README.md, config.json, model.safetensors, tokenizer.json",
        ),
    ],
)
def test_each_failure_is_one_clear_line_and_a_nonzero_exit(
    hub: Process, tmp_path: Path, repo: str, token: str | None, expected: str
) -> None:
    env = {"HF_TOKEN": token} if token else {}
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")
    result = run_downloader(
        [repo], tmp_path / "loras", hub, NIM_AGENT_TERMINATION_LOG=str(termination_log), **env
    )
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert expected.format(hub=hub.url) in line
    assert termination_log.read_text() == line.removeprefix("hf-download: ERROR: ")
    assert not (tmp_path / "loras" / adapter_name(repo)).exists()
    if token:
        assert token not in result.stdout + result.stderr


def test_a_hub_that_cannot_be_reached_is_named_after_the_retries(tmp_path: Path) -> None:
    # Port 9 (discard) on localhost: nothing listens there, the connection is refused.
    result = run_downloader(
        [PUBLIC_REPO],
        tmp_path / "loras",
        HF_ENDPOINT="http://127.0.0.1:9",
        NIM_AGENT_HF_RETRIES="3",
    )
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "cannot reach the Hub at http://127.0.0.1:9" in line and "after 3 attempts" in line
    assert result.stdout.count("retrying in") == 2


def test_a_nemo_adapter_is_its_nemo_file(hub: Process, tmp_path: Path) -> None:
    result = run_downloader([NEMO_REPO], tmp_path / "loras", hub)
    assert result.returncode == 0, result.stderr
    assert listing(tmp_path / "loras" / "llama3-8b-lora-nemo") == [MARKER, "llama3-8b-lora.nemo"]


def test_a_second_run_with_the_same_commit_downloads_nothing(
    own_hub: Process, tmp_path: Path
) -> None:
    loras = tmp_path / "loras"
    assert run_downloader([PUBLIC_REPO, NEMO_REPO], loras, own_hub).returncode == 0
    start = len(hub_requests(own_hub))
    second = run_downloader([PUBLIC_REPO, NEMO_REPO], loras, own_hub)
    assert second.returncode == 0, second.stderr
    assert fetched(own_hub, start) == []
    assert "already holds revision" in second.stdout
    assert "(0 downloaded, 2 already there)" in second.stdout

    # A damaged cache (a file cut short) is downloaded again.
    weights = loras / "llama3-8b-lora-public" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    start = len(hub_requests(own_hub))
    assert run_downloader([PUBLIC_REPO], loras, own_hub).returncode == 0
    assert fetched(own_hub, start) == ["adapter_config.json", "adapter_model.safetensors"]


def test_a_new_commit_replaces_the_cached_folder_atomically(
    own_hub: Process, tmp_path: Path
) -> None:
    loras = tmp_path / "loras"
    assert run_downloader([PUBLIC_REPO], loras, own_hub).returncode == 0
    folder = loras / "llama3-8b-lora-public"
    old = (folder / "adapter_model.safetensors").read_bytes()

    status, _, body = http("POST", f"{own_hub.url}/_standin/bump?repo={PUBLIC_REPO}")
    assert status == 200
    result = run_downloader([PUBLIC_REPO], loras, own_hub)
    assert result.returncode == 0, result.stderr
    assert (folder / "adapter_model.safetensors").read_bytes() != old
    assert json.loads((folder / MARKER).read_text())["sha"] == json.loads(body)["sha"]
    assert listing(loras) == ["llama3-8b-lora-public"]  # no .partial-/.old- folders left


def test_server_errors_are_retried_with_backoff(own_hub: Process, tmp_path: Path) -> None:
    assert http("POST", f"{own_hub.url}/_standin/fail?count=2&status=503")[0] == 200
    result = run_downloader([PUBLIC_REPO], tmp_path / "loras", own_hub)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("the Hub answered 503") == 2
    statuses = [e["status"] for e in hub_requests(own_hub) if e["path"].startswith("/api/")]
    assert statuses == [503, 503, 200]


def test_a_download_that_fails_midway_leaves_no_adapter_folder(
    own_hub: Process, tmp_path: Path
) -> None:
    # The listing succeeds, then every file request answers 500 until the retries are spent.
    assert http("POST", f"{own_hub.url}/_standin/fail?count=100&status=500&match=/resolve/")[0]
    result = run_downloader([PUBLIC_REPO], tmp_path / "loras", own_hub, NIM_AGENT_HF_RETRIES="2")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "answered 500" in line
    assert listing(tmp_path / "loras") == []  # no half-filled folder NIM could pick up


def test_invalid_settings_are_all_reported_with_exit_status_2(tmp_path: Path) -> None:
    result = run_downloader(
        ["../escape", "ok/name", "other/name"],
        Path("relative/path"),
        HF_ENDPOINT="ftp://mirror",
        NIM_AGENT_HF_RETRIES="many",
    )
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    for part in (
        "NIM_PEFT_SOURCE: 'relative/path' is not an absolute path",
        "'../escape' is not a Hugging Face repository id",
        "'ok/name' and 'other/name' would share the folder 'name'",
        "HF_ENDPOINT: 'ftp://mirror' is not an http(s) URL",
        "NIM_AGENT_HF_RETRIES: 'many' is not a number",
    ):
        assert part in line


def test_offline_mode_uses_what_is_there_and_fails_without_it(hub: Process, tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    assert run_downloader([PUBLIC_REPO], loras, hub).returncode == 0
    start = len(hub_requests(hub))
    offline = run_downloader([PUBLIC_REPO], loras, hub, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert len(hub_requests(hub)) == start  # not a single request
    missing = run_downloader([NEMO_REPO], loras, hub, HF_HUB_OFFLINE="1")
    assert missing.returncode == 1
    assert "HF_HUB_OFFLINE is set" in one_error_line(missing.stderr)


def test_an_unwritable_target_is_named_in_the_failure(hub: Process, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_downloader([PUBLIC_REPO], blocker / "loras", hub)
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert f"{PUBLIC_REPO}: cannot write into {blocker / 'loras'}" in line


# ------------------------------------------------------------------------------ a cache volume


def test_with_a_cache_a_later_server_asks_for_the_commit_only_and_links_the_revision(
    own_hub: Process, tmp_path: Path
) -> None:
    cache = tmp_path / "pvc" / "nim-agent" / "adapters"
    first = run_downloader([PUBLIC_REPO], tmp_path / "pod1", own_hub, NIM_AGENT_HF_CACHE=str(cache))
    assert first.returncode == 0, first.stderr
    sha = json.loads(get_json_marker(cache))["sha"]
    revision = cache / "hf" / "standin--llama3-8b-lora-public" / sha

    start = len(hub_requests(own_hub))
    second = run_downloader(
        [PUBLIC_REPO], tmp_path / "pod2", own_hub, NIM_AGENT_HF_CACHE=str(cache)
    )
    assert second.returncode == 0, second.stderr
    asked = [e["path"] for e in hub_requests(own_hub)[start:]]
    assert fetched(own_hub, start) == [] and len(asked) == 1 and "/revision/main" in asked[0]
    for pod in ("pod1", "pod2"):
        link = tmp_path / pod / "llama3-8b-lora-public"
        assert link.is_symlink() and Path(os.readlink(link)) == revision
        assert listing(link) == [MARKER, "adapter_config.json", "adapter_model.safetensors"]


def test_a_new_commit_lands_beside_the_old_one_which_a_running_server_keeps(
    own_hub: Process, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = run_downloader([PUBLIC_REPO], tmp_path / "pod1", own_hub, NIM_AGENT_HF_CACHE=str(cache))
    assert first.returncode == 0, first.stderr
    old_target = os.readlink(tmp_path / "pod1" / "llama3-8b-lora-public")
    assert http("POST", f"{own_hub.url}/_standin/bump?repo={PUBLIC_REPO}")[0] == 200
    start = len(hub_requests(own_hub))
    result = run_downloader(
        [PUBLIC_REPO], tmp_path / "pod2", own_hub, NIM_AGENT_HF_CACHE=str(cache)
    )
    assert result.returncode == 0, result.stderr
    assert fetched(own_hub, start) == ["adapter_config.json", "adapter_model.safetensors"]
    new_target = os.readlink(tmp_path / "pod2" / "llama3-8b-lora-public")
    assert new_target != old_target and Path(old_target).is_dir()  # the first pod's is intact
    assert len(listing(cache / "hf" / "standin--llama3-8b-lora-public")) == 2


def test_offline_with_a_cache_links_the_newest_complete_revision(
    hub: Process, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = run_downloader([PUBLIC_REPO], tmp_path / "pod1", hub, NIM_AGENT_HF_CACHE=str(cache))
    assert first.returncode == 0, first.stderr
    start = len(hub_requests(hub))
    offline = run_downloader(
        [PUBLIC_REPO], tmp_path / "pod2", hub, NIM_AGENT_HF_CACHE=str(cache), HF_HUB_OFFLINE="1"
    )
    assert offline.returncode == 0, offline.stderr
    assert len(hub_requests(hub)) == start
    assert (tmp_path / "pod2" / "llama3-8b-lora-public" / "adapter_model.safetensors").is_file()


def get_json_marker(cache: Path) -> str:
    (marker,) = cache.glob(f"hf/*/*/{MARKER}")
    return marker.read_text()
