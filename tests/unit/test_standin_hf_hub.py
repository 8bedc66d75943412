"""The Hugging Face Hub stand-in (devcluster/standin/hf_hub.py) over HTTP, and the real client.

What the real Hub does, as relied on here (sources: huggingface_hub 2.4.0, `file_download.py`
get_hf_file_metadata and `_download_to_tmp_and_move`, `utils/_http.py` hf_raise_for_status and
its tests in tests/test_utils_errors.py, `hf_api.py` ModelInfo/RepoSibling/RepoFile):
- a file's metadata comes from HEAD /{repo}/resolve/{rev}/{file}: X-Repo-Commit (the commit),
  X-Linked-Etag or ETag, X-Linked-Size or Content-Length; LFS files answer a redirect to another
  host, whose Location the client downloads without the Authorization header;
- errors are told apart by X-Error-Code (RepoNotFound, GatedRepo, RevisionNotFound,
  EntryNotFound) and X-Error-Message ("Invalid credentials in Authorization header" for a bad
  token); a private repo asked for without a token is a 401 like a missing one.
The last test runs huggingface_hub's own snapshot_download and hf_hub_download against it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.standins import (
    GATED_REPO,
    NEMO_REPO,
    NO_ADAPTER_REPO,
    PRIVATE_REPO,
    PUBLIC_REPO,
    TOKEN,
    Process,
    get_json,
    http,
    hub_requests,
    start_hub,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BAD_AUTH = {"Authorization": "Bearer hf_not_a_valid_token"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    proc = start_hub(tmp_path_factory.mktemp("hub"))
    yield proc
    proc.stop()


def info(hub: Process, repo: str, **kwargs: object) -> dict[str, object]:
    result: dict[str, object] = get_json(f"{hub.url}/api/models/{repo}?blobs=true", **kwargs)
    return result


def test_model_info_gives_the_commit_and_the_files_with_their_metadata(hub: Process) -> None:
    answer = info(hub, PUBLIC_REPO)
    assert answer["id"] == PUBLIC_REPO and answer["private"] is False
    sha = answer["sha"]
    assert isinstance(sha, str) and len(sha) == 40 and int(sha, 16) >= 0
    siblings = {s["rfilename"]: s for s in answer["siblings"]}  # type: ignore[attr-defined]
    assert set(siblings) == {
        ".gitattributes",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_args.bin",
        "checkpoint-100/adapter_config.json",
        "checkpoint-100/adapter_model.safetensors",
        "checkpoint-100/optimizer.pt",
    }
    assert siblings["checkpoint-100/optimizer.pt"]["size"] == 2 * 1024 * 1024
    assert "lfs" not in siblings["adapter_config.json"]
    assert siblings["adapter_model.safetensors"]["lfs"]["pointerSize"] > 0
    # The same listing at the commit itself, and without blobs=true only the names.
    assert get_json(f"{hub.url}/api/models/{PUBLIC_REPO}/revision/{sha}")["sha"] == sha
    plain = get_json(f"{hub.url}/api/models/{PUBLIC_REPO}/revision/main")
    assert all(set(s) == {"rfilename"} for s in plain["siblings"])


def test_a_small_file_is_served_with_the_hub_headers_and_its_git_blob_id(hub: Process) -> None:
    answer = info(hub, PUBLIC_REPO)
    sibling = next(s for s in answer["siblings"] if s["rfilename"] == "adapter_config.json")  # type: ignore[attr-defined]
    url = f"{hub.url}/{PUBLIC_REPO}/resolve/main/adapter_config.json"

    status, headers, body = http("HEAD", url)
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == answer["sha"]
    assert headers["ETag"] == f'"{sibling["blobId"]}"'
    assert int(headers["Content-Length"]) == sibling["size"]

    status, _, body = http("GET", url)
    assert status == 200
    assert hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest() == sibling["blobId"]
    assert json.loads(body)["peft_type"] == "LORA"

    status, headers, part = http("GET", url, headers={"Range": "bytes=10-"})
    assert status == 206 and part == body[10:]
    assert headers["Content-Range"] == f"bytes 10-{len(body) - 1}/{len(body)}"


def test_an_lfs_file_redirects_to_a_signed_cdn_url_on_another_origin(hub: Process) -> None:
    answer = info(hub, PUBLIC_REPO)
    sibling = next(s for s in answer["siblings"] if s["rfilename"] == "adapter_model.safetensors")  # type: ignore[attr-defined]
    status, headers, _ = http(
        "HEAD", f"{hub.url}/{PUBLIC_REPO}/resolve/main/adapter_model.safetensors"
    )
    assert status == 302
    assert headers["X-Repo-Commit"] == answer["sha"]
    assert headers["X-Linked-Etag"] == f'"{sibling["lfs"]["sha256"]}"'
    assert int(headers["X-Linked-Size"]) == sibling["size"]
    location = headers["Location"]
    assert urlsplit(location).netloc != urlsplit(hub.url).netloc  # another origin: a CDN

    status, _, data = http("GET", location)
    assert status == 200 and hashlib.sha256(data).hexdigest() == sibling["lfs"]["sha256"]
    # A valid safetensors file: an 8-byte header length, a JSON header, the tensors.
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "pt"}
    end = max(t["data_offsets"][1] for k, t in header.items() if k != "__metadata__")
    assert len(data) == 8 + header_len + end

    forged = location.replace("signature=", "signature=0")
    assert http("GET", forged)[0] == 403


@pytest.mark.parametrize(
    ("repo", "headers", "status", "code", "message"),
    [
        (PUBLIC_REPO, {}, 200, None, None),
        (PUBLIC_REPO, AUTH, 200, None, None),
        (PUBLIC_REPO, BAD_AUTH, 401, None, "Invalid credentials in Authorization header"),
        (PRIVATE_REPO, {}, 401, "RepoNotFound", "Repository not found"),
        (PRIVATE_REPO, BAD_AUTH, 401, None, "Invalid credentials in Authorization header"),
        (PRIVATE_REPO, AUTH, 200, None, None),
        ("standin/does-not-exist", {}, 401, "RepoNotFound", "Repository not found"),
        ("standin/does-not-exist", AUTH, 404, "RepoNotFound", "Repository not found"),
        (GATED_REPO, {}, 200, None, None),  # a gated repo's metadata is public ...
    ],
)
def test_model_info_answers_as_the_hub_for_each_kind_of_access(
    hub: Process,
    repo: str,
    headers: dict[str, str],
    status: int,
    code: str | None,
    message: str | None,
) -> None:
    got, answer_headers, _ = http("GET", f"{hub.url}/api/models/{repo}", headers=headers)
    assert got == status
    assert answer_headers.get("X-Error-Code") == code
    assert answer_headers.get("X-Error-Message") == message


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (AUTH, 403)],
)
def test_the_files_of_a_gated_repo_are_refused_as_gated(
    hub: Process, headers: dict[str, str], status: int
) -> None:
    # ... its files are not: 401 without a token, 403 with one that was not granted access.
    got, answer_headers, _ = http(
        "HEAD", f"{hub.url}/{GATED_REPO}/resolve/main/adapter_config.json", headers=headers
    )
    assert got == status
    assert answer_headers["X-Error-Code"] == "GatedRepo"


def test_unknown_revisions_and_files_have_their_own_error_codes(hub: Process) -> None:
    status, headers, _ = http("GET", f"{hub.url}/api/models/{PUBLIC_REPO}/revision/v9")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    status, headers, _ = http("HEAD", f"{hub.url}/{PUBLIC_REPO}/resolve/main/nope.bin")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")


def test_the_tree_listing_is_flat_or_recursive(hub: Process) -> None:
    sha = info(hub, PUBLIC_REPO)["sha"]
    flat = get_json(f"{hub.url}/api/models/{PUBLIC_REPO}/tree/{sha}")
    assert {"type": "directory", "path": "checkpoint-100"}.items() <= next(
        e for e in flat if e["path"] == "checkpoint-100"
    ).items()
    assert not any("/" in e["path"] for e in flat)
    deep = get_json(f"{hub.url}/api/models/{PUBLIC_REPO}/tree/{sha}?recursive=true")
    files = {e["path"]: e for e in deep if e["type"] == "file"}
    assert "checkpoint-100/optimizer.pt" in files
    assert (
        files["adapter_model.safetensors"]["lfs"]["oid"]
        == (
            next(
                s
                for s in info(hub, PUBLIC_REPO)["siblings"]
                if s["rfilename"] == "adapter_model.safetensors"
            )["lfs"]["sha256"]  # type: ignore[attr-defined]
        )
    )


def test_other_fixture_repos_hold_a_nemo_adapter_and_no_adapter(hub: Process) -> None:
    nemo = {s["rfilename"] for s in info(hub, NEMO_REPO)["siblings"]}  # type: ignore[attr-defined]
    assert nemo == {".gitattributes", "README.md", "llama3-8b-lora.nemo"}
    base = {s["rfilename"] for s in info(hub, NO_ADAPTER_REPO)["siblings"]}  # type: ignore[attr-defined]
    assert "adapter_config.json" not in base and "model.safetensors" in base


def test_every_request_is_logged_with_its_auth_class_and_never_the_token(hub: Process) -> None:
    http("GET", f"{hub.url}/api/models/{PRIVATE_REPO}", headers=AUTH)
    http("GET", f"{hub.url}/api/models/{PRIVATE_REPO}", headers=BAD_AUTH)
    entries = [e for e in hub_requests(hub) if e["path"] == f"/api/models/{PRIVATE_REPO}"]
    assert [e["auth"] for e in entries[-2:]] == ["valid", "invalid"]
    assert TOKEN not in hub.log()
    assert f"GET /api/models/{PRIVATE_REPO}" in hub.log()


def test_faults_and_new_commits_can_be_injected(tmp_path: Path) -> None:
    hub = start_hub(tmp_path)
    try:
        before = info(hub, PUBLIC_REPO)["sha"]
        assert http("POST", f"{hub.url}/_standin/fail?count=2&status=502")[0] == 200
        assert http("GET", f"{hub.url}/api/models/{PUBLIC_REPO}")[0] == 502
        assert http("GET", f"{hub.url}/api/models/{PUBLIC_REPO}")[0] == 502
        assert http("GET", f"{hub.url}/api/models/{PUBLIC_REPO}")[0] == 200

        status, _, body = http("POST", f"{hub.url}/_standin/bump?repo={PUBLIC_REPO}")
        assert status == 200
        after = info(hub, PUBLIC_REPO)["sha"]
        assert after == json.loads(body)["sha"] != before
        # The old commit is gone, as after a force-push.
        assert http("GET", f"{hub.url}/api/models/{PUBLIC_REPO}/revision/{before}")[0] == 404
    finally:
        hub.stop()


hf_hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed")


def test_huggingface_hubs_own_client_downloads_from_the_stand_in(
    hub: Process, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    start = len(hub_requests(hub))

    folder = snapshot_download(
        PRIVATE_REPO,
        endpoint=hub.url,
        token=TOKEN,
        cache_dir=tmp_path / "cache",
        allow_patterns=["adapter_config.json", "adapter_model.safetensors"],
    )
    files = sorted(p.name for p in Path(folder).iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    lfs = next(
        s
        for s in info(hub, PRIVATE_REPO, headers=AUTH)["siblings"]  # type: ignore[attr-defined]
        if s["rfilename"] == "adapter_model.safetensors"
    )
    data = (Path(folder) / "adapter_model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == lfs["lfs"]["sha256"]

    single = hf_hub_download(
        PUBLIC_REPO, "README.md", endpoint=hub.url, cache_dir=tmp_path / "cache"
    )
    assert Path(single).read_text().startswith("---\nlibrary_name: peft")

    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(PRIVATE_REPO, endpoint=hub.url, cache_dir=tmp_path / "c2", token=False)
    with pytest.raises(GatedRepoError):
        hf_hub_download(
            GATED_REPO,
            "adapter_config.json",
            endpoint=hub.url,
            token=TOKEN,
            cache_dir=tmp_path / "c3",
        )

    log = hub_requests(hub)[start:]
    cdn = [e for e in log if e["server"] == "cdn"]
    assert cdn and all(e["auth"] == "none" for e in cdn)  # the client kept the token off the CDN
    paths = {e["path"] for e in log}
    assert f"/api/models/{PRIVATE_REPO}/revision/main" in paths
