"""The stand-ins of devcluster/standin/ as tests use them: real processes on free ports.

Each stand-in runs as the program it is (`python3 <file>`, configured by environment) with its
output in a log file, exactly as a pod would run it; tests talk to it over HTTP. Nothing here
imports the stand-ins.

Example::

    nim = start_nim(tmp_path, STANDIN_STARTUP_SECONDS="0.5")
    status, _, body = http("GET", nim.url + "/v1/health/live")
    nim.stop()
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
NIM_STANDIN = REPO_ROOT / "devcluster" / "standin" / "nim_standin.py"
HF_HUB = REPO_ROOT / "devcluster" / "standin" / "hf_hub.py"
HF_DOWNLOAD = REPO_ROOT / "nim_agent" / "hf_download.py"
OBJECTSTORE = REPO_ROOT / "devcluster" / "objectstore.sh"

# Fixture repositories of the Hub stand-in (its defaults) and its one valid token.
PUBLIC_REPO = "standin/llama3-8b-lora-public"
PRIVATE_REPO = "standin/llama3-8b-lora-private"
GATED_REPO = "standin/llama3-8b-lora-gated"
NEMO_REPO = "standin/llama3-8b-lora-nemo"
NO_ADAPTER_REPO = "standin/llama3-8b-base-only"
TOKEN = "hf_test_token_b7f1c2d9"

# Starting a Python process on a loaded 2-core machine can take seconds; these are upper bounds.
START_TIMEOUT_S = 30.0

T = TypeVar("T")


def base_env(**extra: str) -> dict[str, str]:
    """A minimal environment: nothing of the test runner's (no HF_TOKEN, no proxies) leaks in."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **extra}


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> tuple[int, Message, bytes]:
    """(status, headers, body) of one request; error statuses and redirects are returned as is."""
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def get_json(url: str, **kwargs: Any) -> Any:
    status, _, body = http("GET", url, **kwargs)
    assert status == 200, f"GET {url}: {status} {body[:300]!r}"
    return json.loads(body)


@dataclass
class Process:
    """A stand-in process: its Popen, its log file and its base URL."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop it (SIGTERM, then SIGKILL after 10 s); its exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


def _spawn(program: Path, env: dict[str, str], log_path: Path, **popen: Any) -> Process:
    log_file = log_path.open("wb")
    popen_obj = subprocess.Popen(
        [sys.executable, str(program)], env=env, stdout=log_file, stderr=subprocess.STDOUT, **popen
    )
    log_file.close()
    return Process(popen_obj, log_path)


def start_nim(tmp_path: Path, wait: bool = True, **env: str) -> Process:
    """Start the NIM stand-in on a free port (NIM_SERVER_PORT=0 unless given); wait until it
    listens. The log is tmp_path/nim-<n>.log."""
    n = len(list(tmp_path.glob("nim-*.log")))
    settings = base_env(
        NIM_SERVER_PORT="0", STANDIN_HOST="127.0.0.1", NIM_CACHE_PATH=str(tmp_path / "cache")
    )
    settings.update(env)
    proc = _spawn(NIM_STANDIN, settings, tmp_path / f"nim-{n}.log")
    if wait:

        def listening() -> str | None:
            if proc.popen.poll() is not None:
                raise AssertionError(f"the NIM stand-in exited early:\n{proc.log()}")
            match = re.search(r"listening on http://[^:]+:(\d+)", proc.log())
            return match.group(1) if match else None

        port = wait_for(listening, START_TIMEOUT_S, "the NIM stand-in to listen")
        proc.url = f"http://127.0.0.1:{port}"
    return proc


def start_hub(tmp_path: Path, **env: str) -> Process:
    """Start the Hub stand-in on free ports; its url is the Hub endpoint (HF_ENDPOINT)."""
    n = len(list(tmp_path.glob("hub-*.log")))
    ready = tmp_path / f"hub-{n}.ready"
    settings = base_env(
        HF_STANDIN_HOST="127.0.0.1",
        HF_STANDIN_PORT="0",
        HF_STANDIN_CDN_PORT="0",
        HF_STANDIN_TOKEN=TOKEN,
        HF_STANDIN_CHECKPOINT_MIB="2",
        HF_STANDIN_READY_FILE=str(ready),
    )
    settings.update(env)
    proc = _spawn(HF_HUB, settings, tmp_path / f"hub-{n}.log")

    def started() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"the Hub stand-in exited early:\n{proc.log()}")
        return ready.exists()

    wait_for(started, START_TIMEOUT_S, "the Hub stand-in to listen")
    proc.url = json.loads(ready.read_text())["endpoint"]
    return proc


def hub_requests(hub: Process) -> list[dict[str, Any]]:
    """The Hub stand-in's request log (both its Hub and CDN ports)."""
    log: list[dict[str, Any]] = get_json(hub.url + "/_standin/requests")
    return log


def run_downloader(
    repo_ids: list[str], peft_source: Path, hub: Process | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run nim_agent/hf_download.py the way the pod does: its source given to `python3 -c`."""
    settings = base_env(
        NIM_PEFT_SOURCE=str(peft_source),
        NIM_AGENT_HF_REPO_IDS=json.dumps(repo_ids),
        NIM_AGENT_HF_BACKOFF_SECONDS="0.05",
        NIM_AGENT_HF_TIMEOUT_SECONDS="20",
    )
    if hub is not None:
        settings["HF_ENDPOINT"] = hub.url
    settings.update(env)
    return subprocess.run(
        [sys.executable, "-c", HF_DOWNLOAD.read_text()],
        env=settings,
        capture_output=True,
        text=True,
        timeout=120,
    )


def objectstore_binary() -> Path:
    """Where devcluster/objectstore.sh keeps its MinIO binary (built or not)."""
    out = subprocess.run(["bash", str(OBJECTSTORE), "bin"], capture_output=True, text=True)
    return Path(out.stdout.strip())


def objectstore_up(state: Path, port: int, bucket: str = "nim-test") -> dict[str, str]:
    """Start MinIO with its state in `state` (devcluster/objectstore.sh up); its settings file
    (FLYTE_AWS_ENDPOINT, FLYTE_AWS_ACCESS_KEY_ID, ..., OBJECTSTORE_RAW_OUTPUT_PREFIX)."""
    done = _objectstore(state, port, bucket, "up")
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def objectstore_down(state: Path, port: int, bucket: str = "nim-test") -> None:
    _objectstore(state, port, bucket, "down")


def _objectstore(
    state: Path, port: int, bucket: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = base_env(
        DEVCLUSTER_DIR=str(state),
        OBJECTSTORE_PORT=str(port),
        OBJECTSTORE_BUCKET=bucket,
        HOME=str(Path.home()),
    )
    if "NIM_AGENT_CACHE" in os.environ:
        env["NIM_AGENT_CACHE"] = os.environ["NIM_AGENT_CACHE"]
    return subprocess.run(
        ["bash", str(OBJECTSTORE), *args], env=env, capture_output=True, text=True, timeout=300
    )


FLYTE_DOWNLOAD = REPO_ROOT / "nim_agent" / "flyte_download.py"


def run_inputs_downloader(
    adapters: dict[str, str], peft_source: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run nim_agent/flyte_download.py the way the pod does: its source given to `python3 -c`
    (with this environment's flytekit, as the pod's flytekit image has it)."""
    settings = base_env(
        NIM_PEFT_SOURCE=str(peft_source),
        NIM_AGENT_ADAPTER_URIS=json.dumps(adapters),
        HOME=str(peft_source.parent / "home"),
    )
    settings.update(env)
    return subprocess.run(
        [sys.executable, "-c", FLYTE_DOWNLOAD.read_text()],
        env=settings,
        capture_output=True,
        text=True,
        timeout=300,
    )
