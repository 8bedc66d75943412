"""A stand-in for an NVIDIA NIM LLM server: NIM's HTTP surface on port 8000, no model, no GPU.

It answers what nim-agent and its users talk to, the way a vLLM-based NIM answers it, so that pods
on the local real node go through real probes, restarts and HTTP calls. Python 3 standard library
only; runs as any uid (NIM images run as uid 1000). Run: `python3 nim_standin.py`.

Endpoints
  GET  /v1/health/live   200 at once (the process is up)
  GET  /v1/health/ready  503 until STANDIN_STARTUP_SECONDS have passed AND NIM_PEFT_SOURCE has
                         been scanned once; 200 after that, except in the STANDIN_UNREADY_* window
  GET  /v1/models        the base model and one entry per loaded adapter, in vLLM's ModelCard
                         shape (id, object, created, owned_by, root, parent, max_model_len,
                         permission); an adapter's id is its folder name, its parent the base
                         model id, its root the folder's path
  POST /v1/chat/completions, /v1/completions
                         OpenAI-shaped answers naming the model or adapter used (also with
                         `"stream": true`, as server-sent events); an unknown model is a 404
                         {"error": {"type": "NotFoundError", ...}} as vLLM answers
  GET  /v1/metrics       Prometheus text with NIM's metric names (num_requests_running, ...)
  Before ready, /v1/models and the completion endpoints answer 503 (the model is still loading).

Adapters: a folder directly under NIM_PEFT_SOURCE is an adapter when it holds adapter_config.json
and weights (*.safetensors or *.bin: the Hugging Face PEFT layout) or a *.nemo file (NeMo).
Folders whose name starts with "." are skipped (downloaders stage into such folders, then rename).

Environment (defaults in brackets)
  NIM_SERVER_PORT [8000]     port to listen on (NIM's own variable); STANDIN_HOST [0.0.0.0]
  NIM_SERVED_MODEL_NAME      base model id; unset: derived from STANDIN_IMAGE the way NIM images
                             name their model (nvcr.io/nim/meta/llama3-8b-instruct:1.0.0 ->
                             meta/llama3-8b-instruct); without either: meta/llama3-8b-instruct
  STANDIN_IMAGE              the image reference this stand-in runs from (set by the image build)
  NIM_PEFT_SOURCE            folder of adapter folders; unset or missing: no adapters (logged)
  NIM_PEFT_REFRESH_INTERVAL  seconds between re-scans of NIM_PEFT_SOURCE (dynamic LoRA); unset or
                             0: scanned once at start-up
  NIM_CACHE_PATH [/opt/nim/.cache]  model cache: a first start writes a model manifest there, a
                             later start on the same cache logs that it reuses it
  STANDIN_STARTUP_SECONDS [2]  simulated model loading time
  STANDIN_EXIT_CODE          exit at start with this code (after a log line): crash loops
  STANDIN_ALLOCATE_MIB       allocate, touch and hold this much memory at start: a real OOM kill
  STANDIN_SHM_MIB [1]        size of the file written to /dev/shm (NIM uses shared memory)
  STANDIN_UNREADY_AFTER      seconds after becoming ready when readiness starts failing ...
  STANDIN_UNREADY_FOR        ... and for how many seconds (unset: for good); liveness stays 200
  STANDIN_REJECT_ADAPTERS    comma-separated adapter folder names it refuses to load: logged as a
                             load failure and left out of /v1/models, as NIM does
  STANDIN_MODELS_DELAY_SECONDS [0]      delay before answering /v1/models (a slow server)
  STANDIN_COMPLETION_DELAY_SECONDS [0]  delay before answering a completion
  STANDIN_MAX_MODEL_LEN [8192]          max_model_len of the base model entry

Logs go to stdout, one line per event and per request, like a server's. SIGTERM and SIGINT stop
it cleanly (exit 0).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "meta/llama3-8b-instruct"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
NEMO_SUFFIX = ".nemo"
_MIB = 1024 * 1024
# Prometheus histogram buckets (seconds), as vLLM uses for its latency histograms.
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


def log(message: str) -> None:
    """One log line on stdout, uvicorn-like (`INFO 2026-11-30 08:00:00 message`)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stdout.write(f"INFO {stamp} [nim-standin] {message}\n")
    sys.stdout.flush()


def model_id_from_image(image: str) -> str:
    """The model id a NIM image serves, derived from its reference.

    >>> model_id_from_image("nvcr.io/nim/meta/llama3-8b-instruct:1.0.0")
    'meta/llama3-8b-instruct'
    >>> model_id_from_image("127.0.0.1:5050/nim-standin:dev")
    'nim-standin'
    """
    ref = image.split("@", 1)[0]
    parts = ref.split("/")
    last = parts[-1]
    if ":" in last:
        parts[-1] = last.split(":", 1)[0]
    # The first part is a registry when it looks like a host (a dot, a port or localhost).
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == "nim":
        parts = parts[1:]
    return "/".join(parts) or DEFAULT_MODEL


def served_model_name(env: dict[str, str]) -> str:
    """NIM_SERVED_MODEL_NAME, else the id derived from STANDIN_IMAGE, else the seed's model."""
    name = env.get("NIM_SERVED_MODEL_NAME", "").strip()
    if name:
        return name
    image = env.get("STANDIN_IMAGE", "").strip()
    return model_id_from_image(image) if image else DEFAULT_MODEL


def is_adapter_folder(folder: Path) -> bool:
    """True for a Hugging Face PEFT folder (config + weights) or a NeMo one (a .nemo file)."""
    try:
        files = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError:
        return False
    if any(name.endswith(NEMO_SUFFIX) for name in files):
        return True
    return "adapter_config.json" in files and any(name.endswith(WEIGHT_SUFFIXES) for name in files)


def scan_adapters(source: Path) -> dict[str, Path]:
    """Adapter folder name -> path, for the adapter folders directly under `source` (sorted)."""
    found: dict[str, Path] = {}
    try:
        entries = sorted(source.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if is_adapter_folder(entry):
            found[entry.name] = entry
    return found


def _float_env(env: dict[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"nim-standin: {name}={raw!r} is not a number of seconds") from None


class Histogram:
    """A Prometheus histogram (cumulative buckets, sum, count); callers hold the state lock."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> Iterator[str]:
        for bound, count in zip(self.buckets, self.counts, strict=True):
            yield f'{name}_bucket{{{labels},le="{bound}"}} {count}'
        yield f'{name}_bucket{{{labels},le="+Inf"}} {self.count}'
        yield f"{name}_sum{{{labels}}} {self.total}"
        yield f"{name}_count{{{labels}}} {self.count}"


class Server:
    """The stand-in's state: configuration, readiness clock, loaded adapters, metrics."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.model = served_model_name(env)
        self.started = time.monotonic()
        self.startup_seconds = _float_env(env, "STANDIN_STARTUP_SECONDS", 2.0) or 0.0
        self.unready_after = _float_env(env, "STANDIN_UNREADY_AFTER", None)
        self.unready_for = _float_env(env, "STANDIN_UNREADY_FOR", None)
        self.refresh = _float_env(env, "NIM_PEFT_REFRESH_INTERVAL", None) or 0.0
        self.models_delay = _float_env(env, "STANDIN_MODELS_DELAY_SECONDS", 0.0) or 0.0
        self.completion_delay = _float_env(env, "STANDIN_COMPLETION_DELAY_SECONDS", 0.0) or 0.0
        self.max_model_len = int(env.get("STANDIN_MAX_MODEL_LEN", "8192") or 8192)
        self.reject = {a.strip() for a in env.get("STANDIN_REJECT_ADAPTERS", "").split(",")}
        self.reject.discard("")
        peft = env.get("NIM_PEFT_SOURCE", "").strip()
        self.peft_source = Path(peft) if peft else None
        self.cache_path = Path(env.get("NIM_CACHE_PATH", "/opt/nim/.cache") or "/opt/nim/.cache")
        self.created = int(time.time())
        self.lock = threading.Lock()
        self.adapters: dict[str, Path] = {}
        self.scanned = False
        self.ready_since: float | None = None  # monotonic time the model finished "loading"
        self.running = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = 0
        self.failure = 0
        self.ttft = Histogram(_LATENCY_BUCKETS)
        self.tpot = Histogram(_LATENCY_BUCKETS)
        self.e2e = Histogram(_LATENCY_BUCKETS)
        self.prompt_hist = Histogram(_TOKEN_BUCKETS)
        self.generation_hist = Histogram(_TOKEN_BUCKETS)
        self._logged_rejects: set[str] = set()
        self._last_ready = True
        self.held_memory: list[bytearray] = []
        self.shm_file: Path | None = None  # removed again on a clean stop

    # ------------------------------------------------------------------ start-up side effects

    def allocate(self, mib: int) -> None:
        """Allocate `mib` MiB and write to every page, so the memory is really resident."""
        log(f"allocating {mib} MiB (STANDIN_ALLOCATE_MIB)")
        chunk = 64
        left = mib
        while left > 0:
            size = min(chunk, left)
            # Multiplying a non-zero byte writes every page (a zeroed bytearray may stay virtual).
            self.held_memory.append(bytearray(b"\x5a") * (size * _MIB))
            left -= size
        log(f"holding {mib} MiB")

    def write_shm(self) -> None:
        """Write a file to /dev/shm as NIM's workers do; a missing /dev/shm is logged, not fatal."""
        size = int(self.env.get("STANDIN_SHM_MIB", "1") or 1)
        path = Path("/dev/shm") / f"nim-standin-{os.getpid()}"
        try:
            with path.open("wb") as f:
                f.write(b"\0" * (size * _MIB))
            self.shm_file = path
            log(f"wrote {size} MiB to {path}")
        except OSError as e:
            log(f"WARNING cannot write to /dev/shm ({e.strerror}); continuing without it")

    def prepare_cache(self) -> None:
        """Write the model manifest into NIM_CACHE_PATH, or reuse the one a previous run wrote."""
        manifest = self.cache_path / "standin" / "model_manifest.json"
        try:
            if manifest.is_file():
                log(f"found model {self.model} in cache {self.cache_path}; not downloading")
                return
            manifest.parent.mkdir(parents=True, exist_ok=True)
            tmp = manifest.with_suffix(".tmp")
            tmp.write_text(json.dumps({"model": self.model, "written_at": time.time()}))
            tmp.replace(manifest)
            log(f"downloaded model {self.model} into cache {self.cache_path} (stand-in manifest)")
        except OSError as e:
            log(f"WARNING cannot write to NIM_CACHE_PATH {self.cache_path} ({e.strerror})")

    # ------------------------------------------------------------------ adapters

    def rescan(self) -> None:
        """Scan NIM_PEFT_SOURCE, load new adapters (minus the rejected ones), drop removed ones."""
        if self.peft_source is None:
            if not self.scanned:
                log("NIM_PEFT_SOURCE is not set; serving the base model only")
        elif not self.peft_source.is_dir() and not self.scanned:
            log(f"WARNING NIM_PEFT_SOURCE {self.peft_source} is not a folder; no adapters")
        found = scan_adapters(self.peft_source) if self.peft_source is not None else {}
        loaded: dict[str, Path] = {}
        for name, path in found.items():
            if name in self.reject:
                if name not in self._logged_rejects:
                    log(f"ERROR failed to load LoRA adapter {name!r} from {path}: rejected")
                    self._logged_rejects.add(name)
                continue
            loaded[name] = path
        with self.lock:
            before = set(self.adapters)
            self.adapters = loaded
            self.scanned = True
        for name in sorted(set(loaded) - before):
            log(f"loaded LoRA adapter {name!r} from {loaded[name]}")
        for name in sorted(before - set(loaded)):
            log(f"unloaded LoRA adapter {name!r} (folder gone)")

    def refresher(self, stop: threading.Event) -> None:
        while not stop.wait(self.refresh):
            try:
                self.rescan()
            except Exception as e:  # a failed scan must not stop later ones
                log(f"ERROR adapter refresh failed: {e!r}")

    # ------------------------------------------------------------------ readiness

    def mark_ready(self) -> None:
        """Called once the model is "loaded" (start-up time passed, adapters scanned)."""
        with self.lock:
            self.ready_since = time.monotonic()
            count = len(self.adapters)
        log(f"model {self.model} is ready to serve on /v1 (adapters: {count})")

    def is_ready(self) -> bool:
        now = time.monotonic()
        with self.lock:
            if self.ready_since is None:
                return False
            if self.unready_after is None:
                return True
            window_start = self.ready_since + self.unready_after
            ready = now < window_start or (
                self.unready_for is not None and now >= window_start + self.unready_for
            )
            if ready != self._last_ready:
                log("readiness restored" if ready else "readiness failing (STANDIN_UNREADY_AFTER)")
                self._last_ready = ready
            return ready

    def model_cards(self) -> list[dict[str, Any]]:
        """The /v1/models data, shaped as vLLM's ModelCard (see show_available_models)."""
        with self.lock:
            adapters = dict(self.adapters)
        root = str(self.cache_path / "standin" / self.model)
        cards = [self._card(self.model, root=root, parent=None, max_len=self.max_model_len)]
        for name, path in adapters.items():
            cards.append(self._card(name, root=str(path), parent=self.model, max_len=None))
        return cards

    def _card(
        self, model_id: str, root: str, parent: str | None, max_len: int | None
    ) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "max_model_len": max_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid5(uuid.NAMESPACE_URL, model_id).hex}",
                    "object": "model_permission",
                    "created": self.created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }

    def known_model(self, name: str) -> bool:
        with self.lock:
            return name == self.model or name in self.adapters

    # ------------------------------------------------------------------ metrics

    def metrics_text(self) -> str:
        labels = f'model_name="{self.model}"'
        with self.lock:
            out = [
                "# HELP num_requests_running Number of requests currently running on GPU.",
                "# TYPE num_requests_running gauge",
                f"num_requests_running{{{labels}}} {self.running}",
                "# HELP num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE num_requests_waiting gauge",
                f"num_requests_waiting{{{labels}}} 0",
                "# HELP num_request_max Max number of concurrently running requests.",
                "# TYPE num_request_max gauge",
                f"num_request_max{{{labels}}} 256",
                "# HELP gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.",
                "# TYPE gpu_cache_usage_perc gauge",
                f"gpu_cache_usage_perc{{{labels}}} {min(1.0, self.running / 256):.4f}",
                "# HELP prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE prompt_tokens_total counter",
                f"prompt_tokens_total{{{labels}}} {self.prompt_tokens}",
                "# HELP generation_tokens_total Number of generation tokens processed.",
                "# TYPE generation_tokens_total counter",
                f"generation_tokens_total{{{labels}}} {self.generation_tokens}",
                "# HELP request_success_total Count of successfully processed requests.",
                "# TYPE request_success_total counter",
                f"request_success_total{{{labels}}} {self.success}",
                "# HELP request_failure_total Count of failed requests.",
                "# TYPE request_failure_total counter",
                f"request_failure_total{{{labels}}} {self.failure}",
            ]
            for name, help_text, hist in (
                ("time_to_first_token_seconds", "Time to first token in seconds.", self.ttft),
                ("time_per_output_token_seconds", "Time per output token in seconds.", self.tpot),
                ("e2e_request_latency_seconds", "End to end request latency in seconds.", self.e2e),
                ("request_prompt_tokens", "Number of prefill tokens processed.", self.prompt_hist),
                ("request_generation_tokens", "Number of generation tokens.", self.generation_hist),
            ):
                out.append(f"# HELP {name} Histogram of {help_text[0].lower()}{help_text[1:]}")
                out.append(f"# TYPE {name} histogram")
                out.extend(hist.lines(name, labels))
        return "\n".join(out) + "\n"

    def record(self, prompt_tokens: int, generated: int, seconds: float) -> None:
        with self.lock:
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += generated
            self.success += 1
            self.ttft.observe(seconds)
            self.tpot.observe(seconds / max(generated, 1))
            self.e2e.observe(seconds)
            self.prompt_hist.observe(prompt_tokens)
            self.generation_hist.observe(generated)


def _words(text: str) -> int:
    return max(1, len(re.findall(r"\S+", text)))


def _prompt_text(body: dict[str, Any], chat: bool) -> str:
    if not chat:
        prompt = body.get("prompt", "")
        return " ".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)
    messages = body.get("messages") or []
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content", "")
            if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content)
    return ""


def make_handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nim-standin/1"
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY the body waits for the
        # client's delayed ACK (40 ms on Linux) on a kept-alive connection, as through the API
        # server's proxy. uvicorn, which NIM runs on, sets it too.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # access log, uvicorn-like
            host, port = self.client_address[:2]
            log(f"{host}:{port} - {format % args}")

        # ---------------------------------------------------------------- plumbing

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _error(self, status: HTTPStatus, message: str, err_type: str) -> None:
            # vLLM's ErrorResponse (the OpenAI shape): {"error": {message, type, param, code}}
            error = {"message": message, "type": err_type, "param": None, "code": status.value}
            self._json(status.value, {"error": error})

        def _not_ready(self) -> None:
            self._error(
                HTTPStatus.SERVICE_UNAVAILABLE, "The model is still loading.", "ServiceUnavailable"
            )

        def _path(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/") or "/"

        # ---------------------------------------------------------------- routes

        def do_GET(self) -> None:
            path = self._path()
            if path == "/v1/health/live":
                self._json(200, {"object": "health.response", "message": "Service is live."})
            elif path == "/v1/health/ready":
                if server.is_ready():
                    self._json(200, {"object": "health.response", "message": "Service is ready."})
                else:
                    message = "Service is not ready."
                    self._json(503, {"object": "health.response", "message": message})
            elif path == "/v1/models":
                if not server.is_ready():
                    return self._not_ready()
                if server.models_delay:
                    time.sleep(server.models_delay)
                self._json(200, {"object": "list", "data": server.model_cards()})
            elif path == "/v1/metrics":
                self._send(200, server.metrics_text().encode(), "text/plain; version=0.0.4")
            elif path in ("/v1/chat/completions", "/v1/completions"):
                self._json(405, {"detail": "Method Not Allowed"})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_POST(self) -> None:
            path = self._path()
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if path not in ("/v1/chat/completions", "/v1/completions"):
                return self._json(404, {"detail": "Not Found"})
            if not server.is_ready():
                return self._not_ready()
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the request body must be a JSON object")
            except ValueError as e:
                with server.lock:
                    server.failure += 1
                message = f"Invalid request body: {e}"
                return self._error(HTTPStatus.BAD_REQUEST, message, "BadRequestError")
            model = body.get("model")
            if not isinstance(model, str) or not model:
                message = "`model` is required."
                return self._error(HTTPStatus.BAD_REQUEST, message, "BadRequestError")
            if not server.known_model(model):
                with server.lock:
                    server.failure += 1
                return self._error(
                    HTTPStatus.NOT_FOUND, f"The model `{model}` does not exist.", "NotFoundError"
                )
            self._complete(body, model, chat=path.endswith("chat/completions"))

        def _complete(self, body: dict[str, Any], model: str, chat: bool) -> None:
            begin = time.monotonic()
            with server.lock:
                server.running += 1
            try:
                if server.completion_delay:
                    time.sleep(server.completion_delay)
                prompt = _prompt_text(body, chat)
                kind = "base model" if model == server.model else "adapter"
                text = f"[{model}] stand-in answer from {kind} {model!r} to: {prompt[:200]}"
                prompt_tokens, generated = _words(prompt), _words(text)
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": generated,
                    "total_tokens": prompt_tokens + generated,
                }
                ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
                created = int(time.time())
                if body.get("stream"):
                    self._stream(ident, created, model, text, chat, usage)
                else:
                    if chat:
                        choice: dict[str, Any] = {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    else:
                        choice = {"index": 0, "text": text, "logprobs": None}
                        choice["finish_reason"] = "stop"
                    self._json(
                        200,
                        {
                            "id": ident,
                            "object": "chat.completion" if chat else "text_completion",
                            "created": created,
                            "model": model,
                            "choices": [choice],
                            "usage": usage,
                        },
                    )
                server.record(prompt_tokens, generated, time.monotonic() - begin)
            finally:
                with server.lock:
                    server.running -= 1

        def _stream(
            self, ident: str, created: int, model: str, text: str, chat: bool, usage: dict[str, int]
        ) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            obj = "chat.completion.chunk" if chat else "text_completion"
            pieces = re.findall(r"\S+\s*", text)
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                if chat:
                    delta: dict[str, Any] = {"content": piece}
                    if i == 0:
                        delta["role"] = "assistant"
                    choice: dict[str, Any] = {"index": 0, "delta": delta}
                else:
                    choice = {"index": 0, "text": piece}
                choice["logprobs"] = None
                choice["finish_reason"] = "stop" if last else None
                chunk = {"id": ident, "object": obj, "created": created, "model": model}
                chunk["choices"] = [choice]
                if last:
                    chunk["usage"] = usage
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


class QuietServer(ThreadingHTTPServer):
    """A threading HTTP server that logs a client hanging up as one line, not a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (BrokenPipeError, ConnectionResetError)):
            log(f"{client_address[0]}:{client_address[1]} - client closed the connection early")
        else:
            super().handle_error(request, client_address)


def main() -> None:
    env = dict(os.environ)
    exit_code = env.get("STANDIN_EXIT_CODE", "").strip()
    if exit_code:
        log(f"ERROR simulated start-up failure: exiting with code {exit_code} (STANDIN_EXIT_CODE)")
        sys.exit(int(exit_code))

    server = Server(env)
    log(f"starting NIM stand-in for model {server.model} (uid {os.getuid()}, pid {os.getpid()})")
    mib = env.get("STANDIN_ALLOCATE_MIB", "").strip()
    if mib:
        server.allocate(int(mib))
    server.write_shm()
    server.prepare_cache()

    host = env.get("STANDIN_HOST", "0.0.0.0")
    port = int(env.get("NIM_SERVER_PORT", "8000") or 8000)
    httpd = QuietServer((host, port), make_handler(server))
    stop = threading.Event()

    def shutdown(signum: int, _frame: object) -> None:
        log(f"received signal {signum}; shutting down")
        stop.set()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    log(f"listening on http://{host}:{httpd.server_address[1]}")

    # Model "loading" and the first adapter scan happen after the port opens, as on a real NIM:
    # /v1/health/live answers while /v1/health/ready still says 503.
    def load() -> None:
        log(f"loading model {server.model} ({server.startup_seconds:g} s)")
        server.rescan()
        remaining = server.startup_seconds - (time.monotonic() - server.started)
        if remaining > 0 and stop.wait(remaining):
            return
        server.mark_ready()
        if server.refresh > 0:
            log(f"re-scanning NIM_PEFT_SOURCE every {server.refresh:g} s")
            server.refresher(stop)

    threading.Thread(target=load, name="loader", daemon=True).start()
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    if server.shm_file is not None:
        server.shm_file.unlink(missing_ok=True)
    log("stopped")


if __name__ == "__main__":
    main()
