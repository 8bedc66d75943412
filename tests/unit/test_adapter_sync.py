"""The adapter-sync sidecar of shared servers (nim_agent/adapter_sync.py): its rule, its reading of
the downward API file, its folder rules, and the program itself adding adapters to a running NIM
stand-in from both sources, as the pod runs it.

The downward API file is written here as the kubelet writes it (k8s.io/kubernetes
pkg/fieldpath.FormatMap: sorted ``key="%q-quoted value"`` lines joined by newlines), and
replaced atomically as the kubelet's atomic writer does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from nim_agent import adapter_sync
from nim_agent.adapter_sync import (
    Syncer,
    in_place,
    parse_annotations,
    record_adapters,
    wanted_adapters,
)
from nim_agent.contract import HolderRecord, holder_key
from tests.standins import (
    HF_DOWNLOAD,
    NEMO_REPO,
    PUBLIC_REPO,
    REPO_ROOT,
    base_env,
    get_json,
    start_hub,
    start_nim,
    wait_for,
)

ADAPTER_SYNC = REPO_ROOT / "nim_agent" / "adapter_sync.py"
FLYTE_DOWNLOAD = REPO_ROOT / "nim_agent" / "flyte_download.py"


def go_quote(text: str) -> str:
    """Go's %q of a string (strconv.Quote): what the kubelet writes for a value."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def downward_file(annotations: dict[str, str]) -> str:
    return "\n".join(f"{k}={go_quote(annotations[k])}" for k in sorted(annotations))


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def holder(since: str, *adapters: tuple[str, dict[str, str]]) -> str:
    return json.dumps(
        {"since": since, "adapters": [{"name": n, **s} for n, s in adapters]},
    )


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "value",
    [
        '{"a":"b"}',
        'quotes " and back\\slashes \\"',
        "new\nline\ttab and \x01 control",
        "unicode: é ü 日本",
        "",
    ],
)
def test_the_kubelet_s_quoting_reads_back_to_the_value(value: str) -> None:
    text = downward_file({"x/y": value, "nim-agent.dev/z": "1"})
    assert parse_annotations(text) == {"x/y": value, "nim-agent.dev/z": "1"}


def test_go_escapes_the_kubelet_may_write_are_decoded() -> None:
    line = 'k="\\a\\b\\f\\v\\u00e9\\U0001F600\\xc3\\xa9\\\'"'
    assert parse_annotations(line) == {"k": "\a\b\f\v\u00e9\U0001f600\u00e9'"}


def test_a_holder_record_written_by_nim_agent_is_what_the_sidecar_reads() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    record = HolderRecord(
        since=now,
        until=now + timedelta(hours=1),
        idle_ttl=timedelta(minutes=5),
        adapters={"x": {"hf": "o/x"}, "y-12345678": {"uri": "s3://b/y"}},
    )
    text = downward_file({holder_key("nim-e1-n0-0-abc"): record.to_annotation()})
    assert wanted_adapters(parse_annotations(text)) == {
        "x": {"hf": "o/x"},
        "y-12345678": {"uri": "s3://b/y"},
    }
    assert record_adapters(json.loads(record.to_annotation())) == list(record.adapters.items())


# --------------------------------------------------------------------------- the rule


def test_each_name_is_bound_to_the_source_of_its_oldest_holder_kept_ones_first() -> None:
    annotations = {
        holder_key("b"): holder("2026-11-30T12:00:05Z", ("x", {"hf": "b/x"}), ("y", {"hf": "b/y"})),
        holder_key("a"): holder("2026-11-30T12:00:01Z", ("x", {"hf": "a/x"})),
        holder_key("c"): holder("2026-11-30T12:00:01Z", ("z", {"uri": "s3://c"})),
        "nim-agent.dev/adapters-kept": json.dumps({"y": {"hf": "old/y"}}),
        "other": holder("2026-11-30T11:00:00Z", ("x", {"hf": "not-a-holder/x"})),
    }
    assert wanted_adapters(annotations) == {
        "x": {"hf": "a/x"},
        "y": {"hf": "old/y"},
        "z": {"uri": "s3://c"},
    }
    # Ties on `since` go by holder name: the same on every reader.
    tie = {
        holder_key("n2"): holder("2026-11-30T12:00:00Z", ("x", {"hf": "two/x"})),
        holder_key("n1"): holder("2026-11-30T12:00:00Z", ("x", {"hf": "one/x"})),
    }
    assert wanted_adapters(tie) == {"x": {"hf": "one/x"}}


def test_records_that_are_not_records_are_left_out() -> None:
    annotations = {
        holder_key("a"): "not json",
        holder_key("b"): json.dumps({"since": "t", "adapters": {"x": {"hf": "o/x"}}}),
        holder_key("c"): json.dumps({"adapters": [{"name": "", "hf": "o/e"}, {"name": "u"}]}),
        holder_key("d"): json.dumps({"adapters": [{"name": "two", "hf": "o/t", "uri": "s3://t"}]}),
        "nim-agent.dev/adapters-kept": "[1, 2]",
    }
    assert wanted_adapters(annotations) == {}


# --------------------------------------------------------------------------- the folder


def marker(folder: Path, name: str, doc: dict[str, Any]) -> None:
    folder.mkdir(parents=True)
    (folder / name).write_text(json.dumps(doc))


def test_a_folder_s_marker_says_whether_it_holds_the_source(tmp_path: Path) -> None:
    marker(tmp_path / "x", ".nim-agent-hf.json", {"repo_id": "o/x", "sha": "1"})
    marker(tmp_path / "y", ".nim-agent-input.json", {"uri": "s3://y"})
    assert in_place(str(tmp_path), "x", {"hf": "o/x"}) == "same"
    assert in_place(str(tmp_path), "x", {"hf": "other/x"}) == "other"
    assert in_place(str(tmp_path), "y", {"uri": "s3://y"}) == "same"
    assert in_place(str(tmp_path), "y", {"hf": "o/y"}) == "other"
    assert in_place(str(tmp_path), "z", {"hf": "o/z"}) == "absent"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_syncer_adds_each_adapter_once_retries_failures_later_and_never_replaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    failing = {"o/bad"}

    def fetch_hf(repo: str) -> str:
        calls.append(repo)
        if repo in failing:
            raise RuntimeError(f"{repo}: repository not found")
        marker(tmp_path / repo.split("/")[1], ".nim-agent-hf.json", {"repo_id": repo})
        return "downloaded"

    def fetch_uri(name: str, uri: str) -> str:
        calls.append(uri)
        marker(tmp_path / name, ".nim-agent-input.json", {"uri": uri})
        return "downloaded"

    clock = FakeClock()
    syncer = Syncer(str(tmp_path), fetch_hf, fetch_uri, retry_seconds=60, clock=clock)
    marker(tmp_path / "taken", ".nim-agent-hf.json", {"repo_id": "first/taken"})
    wanted = {
        "good": {"hf": "o/good"},
        "bad": {"hf": "o/bad"},
        "in-1234": {"uri": "s3://b/in"},
        "taken": {"hf": "second/taken"},
    }
    assert syncer.sync(wanted) == ["good", "in-1234"]
    assert syncer.sync(wanted) == [] and calls == ["o/bad", "o/good", "s3://b/in"]
    clock.now += 61
    failing.clear()
    assert syncer.sync(wanted) == ["bad"]
    out = capsys.readouterr().out
    assert "adapter-sync: ERROR bad: hf:o/bad: o/bad: repository not found" in out
    assert "adapter-sync: ERROR taken: hf:second/taken:" in out and "not replaced" in out
    assert "adapter-sync: added good from hf:o/good (downloaded" in out
    assert json.loads((tmp_path / "taken" / ".nim-agent-hf.json").read_text()) == {
        "repo_id": "first/taken"
    }


def test_the_module_runs_as_a_self_contained_program() -> None:
    import ast

    tree = ast.parse(ADAPTER_SYNC.read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(str(m).startswith("nim_agent") for m in imported), imported
    assert adapter_sync.HOLDER_PREFIX == "holders.nim-agent.dev/"


# --------------------------------------------------------------------------- the program


def test_the_sidecar_adds_adapters_of_both_sources_to_a_running_nim_which_lists_them(
    tmp_path: Path,
) -> None:
    """Hot-add, locally: the NIM stand-in runs with NIM_PEFT_REFRESH_INTERVAL (as a shared
    server's NIM does); the sidecar program follows an annotations file; a Hugging Face adapter
    (from the Hub stand-in) and a folder given as a task input (a local URI: flytekit's own
    data access reads it as it reads s3://) appear at /v1/models while the server runs."""
    import subprocess

    hub = start_hub(tmp_path)
    loras = tmp_path / "loras"
    loras.mkdir()
    nim = start_nim(
        tmp_path,
        NIM_PEFT_SOURCE=str(loras),
        NIM_PEFT_REFRESH_INTERVAL="0.2",
        STANDIN_STARTUP_SECONDS="0",
    )
    annotations = tmp_path / "annotations"
    write_atomically(annotations, downward_file({"nim-agent.dev/endpoint": "http://x"}))
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (trained / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    env = base_env(
        NIM_PEFT_SOURCE=str(loras),
        NIM_AGENT_ANNOTATIONS=str(annotations),
        NIM_AGENT_SYNC_INTERVAL="0.2",
        HF_ENDPOINT=hub.url,
        NIM_AGENT_HF_BACKOFF_SECONDS="0.05",
        HOME=str(tmp_path / "home"),
    )
    log = (tmp_path / "sync.log").open("w")
    sidecar = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ADAPTER_SYNC.read_text(),
            HF_DOWNLOAD.read_text(),
            FLYTE_DOWNLOAD.read_text(),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def listed() -> set[str]:
            models = get_json(nim.url + "/v1/models")["data"]
            return {m["id"] for m in models if m.get("parent")}

        assert listed() == set()
        public = PUBLIC_REPO.rsplit("/", 1)[1]
        records = {
            holder_key("first"): holder("2026-11-30T12:00:00Z", (public, {"hf": PUBLIC_REPO}))
        }
        write_atomically(annotations, downward_file(records))
        wait_for(lambda: public in listed(), 60, f"{public} at /v1/models")
        nemo = NEMO_REPO.rsplit("/", 1)[1]
        records[holder_key("second")] = holder(
            "2026-11-30T12:00:09Z",
            (nemo, {"hf": NEMO_REPO}),
            ("support-1a2b3c4d", {"uri": trained.as_uri()}),
        )
        write_atomically(annotations, downward_file(records))
        wait_for(lambda: {nemo, "support-1a2b3c4d"} <= listed(), 120, "both at /v1/models")
        assert sidecar.poll() is None  # it keeps running beside the server
        text = (tmp_path / "sync.log").read_text()
        assert f"added {public} from hf:{PUBLIC_REPO}" in text
        assert f"added support-1a2b3c4d from {trained.as_uri()}" in text
        assert "ERROR" not in text
        assert (loras / "support-1a2b3c4d" / "adapter_model.safetensors").exists()
    finally:
        sidecar.terminate()
        sidecar.wait(10)
        log.close()
        nim.stop()
        hub.stop()
