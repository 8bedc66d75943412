"""The NIM stand-in (devcluster/standin/nim_standin.py), run as a real process and used over HTTP.

The shapes checked here are the ones a vLLM-based NIM answers: vLLM's ModelCard for /v1/models
(vllm/entrypoints/openai/serving_models.py, show_available_models), its ErrorResponse for an
unknown model, and the metric names of NIM's observability docs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standins import NIM_STANDIN, Process, base_env, get_json, http, start_nim, wait_for

MODEL_CARD_KEYS = {
    "id",
    "object",
    "created",
    "owned_by",
    "root",
    "parent",
    "max_model_len",
    "permission",
}


def make_adapter(root: Path, name: str, weights: str = "adapter_model.safetensors") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (folder / weights).write_bytes(b"\0" * 64)
    return folder


def ready(nim: Process) -> bool:
    return http("GET", nim.url + "/v1/health/ready")[0] == 200


def model_ids(nim: Process) -> list[str]:
    return [m["id"] for m in get_json(nim.url + "/v1/models")["data"]]


@pytest.fixture
def nims() -> Iterator[list[Process]]:
    """Processes started by a test are stopped after it, whatever happens."""
    started: list[Process] = []
    yield started
    for proc in started:
        proc.stop()
        Path(f"/dev/shm/nim-standin-{proc.popen.pid}").unlink(missing_ok=True)  # if it was killed


def test_live_answers_at_once_and_ready_only_after_the_startup_time(
    tmp_path: Path, nims: list[Process]
) -> None:
    launched = time.monotonic()
    nim = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="4")
    nims.append(nim)

    assert http("GET", nim.url + "/v1/health/live")[0] == 200
    status, _, body = http("GET", nim.url + "/v1/health/ready")
    assert status == 503, body
    assert http("GET", nim.url + "/v1/models")[0] == 503  # still "loading the model"
    wait_for(lambda: ready(nim), 60, "readiness")
    assert time.monotonic() - launched >= 4
    assert "is ready to serve" in nim.log()


def test_models_lists_the_base_model_and_each_adapter_folder_as_vllm_does(
    tmp_path: Path, nims: list[Process]
) -> None:
    loras = tmp_path / "loras"
    make_adapter(loras, "sql-lora")
    make_adapter(loras, "chat-lora", weights="adapter_model.bin")
    (loras / "nemo-lora").mkdir()
    (loras / "nemo-lora" / "adapter.nemo").write_bytes(b"tar")
    (loras / "no-weights").mkdir()
    (loras / "no-weights" / "adapter_config.json").write_text("{}")
    make_adapter(loras, ".partial-sql-lora-123")  # a downloader's staging folder
    (loras / "stray-file.txt").write_text("not a folder")
    nim = start_nim(
        tmp_path,
        STANDIN_STARTUP_SECONDS="0.2",
        NIM_PEFT_SOURCE=str(loras),
        NIM_SERVED_MODEL_NAME="meta/llama-3.1-8b-instruct",
    )
    nims.append(nim)
    wait_for(lambda: ready(nim), 60, "readiness")

    answer = get_json(nim.url + "/v1/models")
    assert answer["object"] == "list"
    cards = {card["id"]: card for card in answer["data"]}
    assert list(cards) == ["meta/llama-3.1-8b-instruct", "chat-lora", "nemo-lora", "sql-lora"]
    for card in cards.values():
        assert set(card) == MODEL_CARD_KEYS
        assert card["object"] == "model" and card["owned_by"] == "vllm"
        assert card["permission"][0]["object"] == "model_permission"
    base = cards["meta/llama-3.1-8b-instruct"]
    assert base["parent"] is None and base["max_model_len"] == 8192
    for name in ("chat-lora", "nemo-lora", "sql-lora"):
        assert cards[name]["parent"] == "meta/llama-3.1-8b-instruct"
        assert cards[name]["root"] == str(loras / name)
        assert cards[name]["max_model_len"] is None


@pytest.mark.parametrize(
    ("image", "model"),
    [
        ("nvcr.io/nim/meta/llama3-8b-instruct:1.0.0", "meta/llama3-8b-instruct"),
        (
            "nvcr.io/nim/mistralai/mistral-7b-instruct-v0.3:latest",
            "mistralai/mistral-7b-instruct-v0.3",
        ),
        ("127.0.0.1:5050/nim-standin:dev", "nim-standin"),
        ("localhost/nim/meta/llama3-70b-instruct@sha256:abcd", "meta/llama3-70b-instruct"),
        ("meta/llama3-8b-instruct", "meta/llama3-8b-instruct"),
    ],
)
def test_the_base_model_id_is_derived_from_the_image_as_nim_names_it(
    image: str, model: str
) -> None:
    sys.path.insert(0, str(NIM_STANDIN.parent))
    try:
        import nim_standin
    finally:
        sys.path.remove(str(NIM_STANDIN.parent))
    assert nim_standin.model_id_from_image(image) == model
    assert nim_standin.served_model_name({"STANDIN_IMAGE": image}) == model
    assert (
        nim_standin.served_model_name({"STANDIN_IMAGE": image, "NIM_SERVED_MODEL_NAME": "x"}) == "x"
    )
    assert nim_standin.served_model_name({}) == "meta/llama3-8b-instruct"


def test_the_running_server_names_its_model_after_standin_image(
    tmp_path: Path, nims: list[Process]
) -> None:
    nim = start_nim(
        tmp_path,
        STANDIN_STARTUP_SECONDS="0",
        STANDIN_IMAGE="nvcr.io/nim/meta/llama3-70b-instruct:1.2.0",
    )
    nims.append(nim)
    wait_for(lambda: ready(nim), 60, "readiness")
    assert model_ids(nim) == ["meta/llama3-70b-instruct"]


def test_completions_name_the_model_or_adapter_used(tmp_path: Path, nims: list[Process]) -> None:
    loras = tmp_path / "loras"
    make_adapter(loras, "sql-lora")
    nim = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0", NIM_PEFT_SOURCE=str(loras))
    nims.append(nim)
    wait_for(lambda: ready(nim), 60, "readiness")

    chat = {"model": "sql-lora", "messages": [{"role": "user", "content": "count the rows"}]}
    status, headers, body = http("POST", nim.url + "/v1/chat/completions", chat)
    assert status == 200 and headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["model"] == "sql-lora"
    message = answer["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert "sql-lora" in message["content"] and "count the rows" in message["content"]
    assert answer["choices"][0]["finish_reason"] == "stop"
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    status, _, body = http(
        "POST",
        nim.url + "/v1/completions",
        {"model": "meta/llama3-8b-instruct", "prompt": "Once upon"},
    )
    answer = json.loads(body)
    assert status == 200 and answer["object"] == "text_completion"
    assert answer["model"] == "meta/llama3-8b-instruct"
    assert "meta/llama3-8b-instruct" in answer["choices"][0]["text"]


def test_an_unknown_model_is_a_404_not_found_error_as_vllm_answers(
    tmp_path: Path, nims: list[Process]
) -> None:
    nim = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0")
    nims.append(nim)
    wait_for(lambda: ready(nim), 60, "readiness")

    for path in ("/v1/chat/completions", "/v1/completions"):
        body = {"model": "missing-lora", "prompt": "x", "messages": []}
        status, _, raw = http("POST", nim.url + path, body)
        assert status == 404
        assert json.loads(raw) == {
            "error": {
                "message": "The model `missing-lora` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
        }
    status, _, raw = http("POST", nim.url + "/v1/chat/completions", b"{not json")
    assert status == 400 and json.loads(raw)["error"]["type"] == "BadRequestError"


def test_a_streamed_chat_completion_is_server_sent_events_ending_in_done(
    tmp_path: Path, nims: list[Process]
) -> None:
    nim = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0")
    nims.append(nim)
    wait_for(lambda: ready(nim), 60, "readiness")

    body = {
        "model": "meta/llama3-8b-instruct",
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
    status, headers, raw = http("POST", nim.url + "/v1/chat/completions", body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [line[len("data: ") :] for line in raw.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert "hello" in text and "meta/llama3-8b-instruct" in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_metrics_use_nim_names_and_count_requests(tmp_path: Path, nims: list[Process]) -> None:
    nim = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0")
    nims.append(nim)
    wait_for(lambda: ready(nim), 60, "readiness")

    def metric(text: str, name: str) -> float:
        label = '{model_name="meta/llama3-8b-instruct"}'
        line = next(line for line in text.splitlines() if line.startswith(name + label))
        return float(line.split()[-1])

    status, headers, raw = http("GET", nim.url + "/v1/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    before = raw.decode()
    for name, kind in (
        ("num_requests_running", "gauge"),
        ("num_requests_waiting", "gauge"),
        ("gpu_cache_usage_perc", "gauge"),
        ("prompt_tokens_total", "counter"),
        ("generation_tokens_total", "counter"),
        ("request_success_total", "counter"),
        ("time_to_first_token_seconds", "histogram"),
        ("time_per_output_token_seconds", "histogram"),
        ("e2e_request_latency_seconds", "histogram"),
    ):
        assert f"# TYPE {name} {kind}" in before
    assert metric(before, "request_success_total") == 0

    chat = {"model": "meta/llama3-8b-instruct", "messages": [{"role": "user", "content": "a b c"}]}
    assert http("POST", nim.url + "/v1/chat/completions", chat)[0] == 200
    after = http("GET", nim.url + "/v1/metrics")[2].decode()
    assert metric(after, "request_success_total") == 1
    assert metric(after, "prompt_tokens_total") == 3
    assert metric(after, "e2e_request_latency_seconds_count") == 1


def test_standin_exit_code_makes_it_exit_at_start_with_that_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(NIM_STANDIN)],
        env=base_env(STANDIN_EXIT_CODE="3"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "exiting with code 3" in result.stdout


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_standin_allocate_mib_really_holds_that_memory(tmp_path: Path, nims: list[Process]) -> None:
    nim = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0", STANDIN_ALLOCATE_MIB="96")
    nims.append(nim)
    assert "holding 96 MiB" in nim.log()
    assert _rss_mib(nim.popen.pid) >= 96


MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")


@pytest.mark.skipif(
    os.geteuid() != 0 or not (MEMORY_CGROUP / "memory.limit_in_bytes").exists(),
    reason="needs root and the cgroup v1 memory controller (as on the real node)",
)
def test_allocating_past_a_memory_limit_gets_it_oom_killed(tmp_path: Path) -> None:
    # A memory cgroup like the one the kubelet makes for a container with limits.memory=64Mi.
    group = MEMORY_CGROUP / f"nim-agent-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(64 * 1024 * 1024))
        procs = group / "cgroup.procs"
        result = subprocess.run(
            [sys.executable, str(NIM_STANDIN)],
            env=base_env(NIM_SERVER_PORT="0", STANDIN_ALLOCATE_MIB="256"),
            preexec_fn=lambda: procs.write_text(str(os.getpid())),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
        assert int((group / "memory.failcnt").read_text()) > 0
        assert "holding 256 MiB" not in result.stdout
    finally:
        group.rmdir()


def test_readiness_fails_for_a_while_after_being_ready_and_liveness_stays_up(
    tmp_path: Path, nims: list[Process]
) -> None:
    nim = start_nim(
        tmp_path,
        STANDIN_STARTUP_SECONDS="0",
        STANDIN_UNREADY_AFTER="1",
        STANDIN_UNREADY_FOR="3",
    )
    nims.append(nim)
    seen: list[int] = []

    def transitions() -> bool:
        status = http("GET", nim.url + "/v1/health/ready")[0]
        assert http("GET", nim.url + "/v1/health/live")[0] == 200
        if not seen or seen[-1] != status:
            seen.append(status)
        return seen[-3:] == [200, 503, 200]

    wait_for(transitions, 60, "ready, then not ready, then ready again", every=0.1)
    assert "readiness failing" in nim.log() and "readiness restored" in nim.log()


def test_rejected_adapters_are_left_out_of_models_and_logged(
    tmp_path: Path, nims: list[Process]
) -> None:
    loras = tmp_path / "loras"
    make_adapter(loras, "good-lora")
    make_adapter(loras, "bad-lora")
    nim = start_nim(
        tmp_path,
        STANDIN_STARTUP_SECONDS="0",
        NIM_PEFT_SOURCE=str(loras),
        STANDIN_REJECT_ADAPTERS="bad-lora, other",
    )
    nims.append(nim)
    wait_for(lambda: ready(nim), 60, "readiness")

    assert model_ids(nim) == ["meta/llama3-8b-instruct", "good-lora"]
    assert "failed to load LoRA adapter 'bad-lora'" in nim.log()
    chat = {"model": "bad-lora", "messages": [{"role": "user", "content": "x"}]}
    assert http("POST", nim.url + "/v1/chat/completions", chat)[0] == 404


def test_adapter_folders_added_or_removed_while_running_are_picked_up(
    tmp_path: Path, nims: list[Process]
) -> None:
    loras = tmp_path / "loras"
    make_adapter(loras, "first-lora")
    nim = start_nim(
        tmp_path,
        STANDIN_STARTUP_SECONDS="0",
        NIM_PEFT_SOURCE=str(loras),
        NIM_PEFT_REFRESH_INTERVAL="0.2",
    )
    nims.append(nim)
    wait_for(lambda: ready(nim), 60, "readiness")
    assert model_ids(nim)[1:] == ["first-lora"]

    staged = make_adapter(loras, ".partial-second-lora")
    staged.rename(loras / "second-lora")
    wait_for(lambda: "second-lora" in model_ids(nim), 60, "second-lora in /v1/models")
    shutil.rmtree(loras / "first-lora")
    wait_for(lambda: "first-lora" not in model_ids(nim), 60, "first-lora gone from /v1/models")
    assert "loaded LoRA adapter 'second-lora'" in nim.log()


def test_it_writes_to_dev_shm_and_the_cache_and_reuses_the_cache_on_restart(
    tmp_path: Path, nims: list[Process]
) -> None:
    cache = tmp_path / "nim-cache"
    first = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0", NIM_CACHE_PATH=str(cache))
    nims.append(first)
    wait_for(lambda: ready(first), 60, "readiness")
    shm = Path(f"/dev/shm/nim-standin-{first.popen.pid}")
    if Path("/dev/shm").is_dir():
        assert shm.stat().st_size == 1024 * 1024
    assert (cache / "standin" / "model_manifest.json").is_file()
    assert "downloaded model" in first.log()
    assert first.stop() == 0  # SIGTERM: a clean stop ...
    assert not shm.exists()  # ... that cleans up after itself

    second = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0", NIM_CACHE_PATH=str(cache))
    nims.append(second)
    wait_for(lambda: ready(second), 60, "readiness")
    assert f"found model meta/llama3-8b-instruct in cache {cache}" in second.log()


def test_an_unwritable_cache_or_missing_peft_source_is_logged_not_fatal(
    tmp_path: Path, nims: list[Process]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    nim = start_nim(
        tmp_path,
        STANDIN_STARTUP_SECONDS="0",
        NIM_CACHE_PATH=str(blocker / "cache"),  # below a file: cannot be created
        NIM_PEFT_SOURCE=str(tmp_path / "missing"),
    )
    nims.append(nim)
    wait_for(lambda: ready(nim), 60, "readiness")
    assert "WARNING cannot write to NIM_CACHE_PATH" in nim.log()
    assert "is not a folder; no adapters" in nim.log()
    assert model_ids(nim) == ["meta/llama3-8b-instruct"]


SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(
    os.geteuid() != 0 or not SYSTEM_PYTHON.exists(),
    reason="switching to uid 1000 needs root, and a python3 that uid 1000 can run",
)
def test_it_serves_as_uid_1000_like_nim_images(nims: list[Process]) -> None:
    # Everything uid 1000 needs must be readable by it: a world-readable folder, the program in it.
    work = Path(tempfile.mkdtemp(prefix="nim-standin-uid-"))
    try:
        work.chmod(0o755)
        program = work / "nim_standin.py"
        shutil.copy(NIM_STANDIN, program)
        program.chmod(0o644)
        make_adapter(work / "loras", "sql-lora")
        for path in (work / "loras", *(work / "loras").rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        cache = work / "cache"
        cache.mkdir()
        os.chown(cache, 1000, 1000)
        log_path = work / "nim.log"
        env = base_env(
            NIM_SERVER_PORT="0",
            STANDIN_HOST="127.0.0.1",
            STANDIN_STARTUP_SECONDS="0",
            NIM_PEFT_SOURCE=str(work / "loras"),
            NIM_CACHE_PATH=str(cache),
        )
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                [str(SYSTEM_PYTHON), str(program)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=1000,
                group=1000,
                cwd=work,
            )
        proc = Process(popen, log_path)
        nims.append(proc)

        def port() -> str | None:
            assert popen.poll() is None, proc.log()
            lines = [line for line in proc.log().splitlines() if "listening on http://" in line]
            return lines[0].rsplit(":", 1)[1] if lines else None

        proc.url = f"http://127.0.0.1:{wait_for(port, 60, 'the stand-in to listen')}"
        wait_for(lambda: ready(proc), 60, "readiness")
        assert "(uid 1000," in proc.log()
        assert model_ids(proc) == ["meta/llama3-8b-instruct", "sql-lora"]
        assert (cache / "standin" / "model_manifest.json").stat().st_uid == 1000
        assert proc.stop() == 0
    finally:
        for proc in nims:
            proc.stop()
            Path(f"/dev/shm/nim-standin-{proc.popen.pid}").unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
