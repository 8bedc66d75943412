"""Download LoRA adapters that are task inputs (FlyteDirectory) from Flyte's object store.

This module is the program of the `lora-inputs` init container: nim-agent ships its source into
the pod and runs it with `python3 -c`, in an image with flytekit (by default flytekit's own image
of the connector's flytekit version). It is one self-contained file that imports nothing from
nim_agent. It reads the data the way a Flyte task reads its inputs: flytekit's own data access
(`FileAccessProvider.get_data`), configured as flytekit configures it in a task pod: the
FLYTE_AWS_* / FLYTE_GCP_* / FLYTE_AZURE_* variables, or the cloud identity of the pod's
ServiceAccount (IRSA, GKE Workload Identity, Azure Workload Identity).

For each adapter it downloads the folder at its URI into a staging folder next to the target,
checks that it holds an adapter (adapter_config.json with *.safetensors / *.bin weights, or a
NeMo *.nemo file, at the top; the rule of hf_download.select_adapter_files), records the URI in
`.nim-agent-input.json` and moves the folder into place. With NIM_AGENT_ADAPTER_CACHE (a folder on
a volume that outlives the pod, such as a cache PVC) each URI is kept there once, at
$NIM_AGENT_ADAPTER_CACHE/inputs/<sha256 of the URI>, and $NIM_PEFT_SOURCE/<name> becomes a
symbolic link to it: a Flyte output's URI never changes content, so a later server on the same
volume downloads nothing.

Environment
  NIM_PEFT_SOURCE           the folder adapters go into: $NIM_PEFT_SOURCE/<name>
  NIM_AGENT_ADAPTER_URIS    a JSON object of adapter name -> folder URI, e.g.
                            {"support-lora": "s3://bucket/raw/ab/cd/o0"}
  NIM_AGENT_ADAPTER_CACHE   optional folder of adapters kept across pods (see above)
  flytekit's data settings  FLYTE_AWS_ENDPOINT, FLYTE_AWS_ACCESS_KEY_ID, ... as in a task pod

Exit status: 0 all adapters in place; 1 a download failed (one line on stderr naming the adapter,
its URI and what to do, also written to /dev/termination-log when it exists;
NIM_AGENT_TERMINATION_LOG names another path); 2 invalid settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from typing import Any, NoReturn

URIS_ENV = "NIM_AGENT_ADAPTER_URIS"
CACHE_ENV = "NIM_AGENT_ADAPTER_CACHE"
MARKER = ".nim-agent-input.json"  # in each adapter folder: its URI and files
ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
NEMO_SUFFIX = ".nemo"
NOT_WEIGHTS = frozenset({"training_args.bin"})
TERMINATION_LOG_ENV = "NIM_AGENT_TERMINATION_LOG"
TERMINATION_LOG = "/dev/termination-log"
EXIT_FAILED = 1
EXIT_CONFIG = 2
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STALE_SECONDS = 6 * 3600


class DownloadError(Exception):
    """A failure with a one-line message a person can act on."""


def log(message: str) -> None:
    print(f"lora-inputs: {message}", flush=True)


def is_adapter(filenames: list[str]) -> bool:
    """Whether top-level file names make up a LoRA adapter (hf_download.select_adapter_files)."""
    top = {name for name in filenames if "/" not in name}
    weights = [n for n in top if n.endswith(WEIGHT_SUFFIXES) and n not in NOT_WEIGHTS]
    return any(n.endswith(NEMO_SUFFIX) for n in top) or (ADAPTER_CONFIG in top and bool(weights))


def _files(folder: str) -> dict[str, int]:
    """Relative path -> size of every file below folder (the marker left out)."""
    found = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, folder)
            if rel != MARKER:
                found[rel] = os.path.getsize(path)
    return found


def _complete(folder: str, uri: str) -> bool:
    """Whether folder holds a complete download of uri (its marker, and every file's size)."""
    try:
        with open(os.path.join(folder, MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    files = marker.get("files") if isinstance(marker, dict) else None
    if marker.get("uri") != uri or not isinstance(files, dict) or not files:
        return False
    return all(
        os.path.isfile(os.path.join(folder, name))
        and os.path.getsize(os.path.join(folder, name)) == size
        for name, size in files.items()
    )


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _link(link: str, target: str) -> None:
    if os.path.islink(link) and os.readlink(link) == target:
        return
    staging = f"{link}.link-{os.getpid()}-{random.randrange(16**6):06x}"
    os.symlink(target, staging)
    if os.path.isdir(link) and not os.path.islink(link):
        _remove(link)
    os.replace(staging, link)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def download(get_data: Any, name: str, uri: str, root: str, cache: str | None) -> str:
    """Put the adapter at uri into root/name (with `cache`: a link to its copy there); returns
    "downloaded" or "cached". `get_data(uri, local_path)` fetches a folder."""
    link = os.path.join(root, name)
    key = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:32]
    target = os.path.join(cache, "inputs", key) if cache else link
    os.makedirs(root, exist_ok=True)
    if _complete(target, uri):
        log(f"{name}: {target} already holds {uri}; not downloading")
        if cache:
            _link(link, target)
        return "cached"
    home = os.path.dirname(target)
    os.makedirs(home, exist_ok=True)
    tag = key if cache else name
    now = time.time()
    for entry in os.listdir(home):  # leftovers of interrupted runs (shared cache: only old ones)
        if entry.startswith((f".partial-{tag}-", f".old-{tag}-")):
            path = os.path.join(home, entry)
            if not cache or now - os.path.getmtime(path) > _STALE_SECONDS:
                _remove(path)
    suffix = f"{os.getpid()}-{random.randrange(16**6):06x}"
    staging = os.path.join(home, f".partial-{tag}-{suffix}")
    try:
        log(f"{name}: {uri} -> {target}")
        try:
            get_data(uri, staging)
        except Exception as e:  # flytekit, fsspec and the cloud SDKs raise many kinds
            if "NotFound" in type(e).__name__ or isinstance(e, FileNotFoundError):
                raise DownloadError(
                    f"adapter {name}: nothing was downloaded from {uri} ({_describe(e)}); is it "
                    "the folder of a FlyteDirectory output, and does it still exist?"
                ) from None
            raise DownloadError(
                f"adapter {name}: cannot download {uri} ({_describe(e)}); check that the pod "
                "may read Flyte's object store: the connector's adapter_inputs_env / "
                "adapter_inputs_secret settings, or the cloud identity of NIM(service_account=...)"
            ) from None
        if not os.path.isdir(staging):
            raise DownloadError(
                f"adapter {name}: nothing was downloaded from {uri}; is it the folder of a "
                "FlyteDirectory output, and does it still exist?"
            )
        files = _files(staging)
        if not is_adapter(list(files)):
            listed = ", ".join(sorted(files)[:12]) or "no files"
            raise DownloadError(
                f"adapter {name}: {uri} holds no LoRA adapter at its top (need "
                f"adapter_config.json with *.safetensors or *.bin weights, or a *.nemo file); "
                f"it has: {listed}"
            )
        with open(os.path.join(staging, MARKER), "w") as f:
            json.dump({"uri": uri, "files": files}, f)
        total = sum(files.values())
        if cache and _complete(target, uri):
            pass  # another pod on the same volume finished it first
        elif os.path.lexists(target):
            old = os.path.join(home, f".old-{tag}-{suffix}")
            os.rename(target, old)
            os.rename(staging, target)
            _remove(old)
        else:
            os.rename(staging, target)
    finally:
        if os.path.lexists(staging):
            _remove(staging)
    if cache:
        _link(link, target)
    log(f"{name}: {len(files)} file(s), {total} bytes")
    return "downloaded"


def _settings(env: dict[str, str]) -> tuple[str, dict[str, str], str | None]:
    problems = []
    root = env.get("NIM_PEFT_SOURCE", "").strip()
    if not root or not os.path.isabs(root):
        problems.append(f"NIM_PEFT_SOURCE: {root!r} is not an absolute path")
    raw = env.get(URIS_ENV, "")
    adapters: dict[str, str] = {}
    try:
        parsed = json.loads(raw)
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in parsed.items()
        ):
            raise ValueError
        adapters = parsed
    except ValueError:
        problems.append(f"{URIS_ENV}: {raw!r} is not a JSON object of adapter names to URIs")
    for name in adapters:
        if not _NAME.match(name) or ".." in name:
            problems.append(f"{URIS_ENV}: {name!r} is not an adapter name")
    cache = env.get(CACHE_ENV, "").strip() or None
    if cache is not None and not os.path.isabs(cache):
        problems.append(f"{CACHE_ENV}: {cache!r} is not an absolute path")
    if problems:
        raise ValueError("; ".join(problems))
    return root, adapters, cache


def _fail(message: str, status: int, env: dict[str, str]) -> NoReturn:
    print(f"lora-inputs: ERROR: {message}", file=sys.stderr, flush=True)
    path = env.get(TERMINATION_LOG_ENV, "").strip() or TERMINATION_LOG
    if os.path.exists(path):
        try:
            with open(path, "w") as f:
                f.write(message[:4000])
        except OSError:
            pass
    sys.exit(status)


def main(env: dict[str, str] | None = None) -> None:
    """Download every adapter named in the environment; exit 1 on the first failure."""
    env = dict(os.environ) if env is None else env
    try:
        root, adapters, cache = _settings(env)
    except ValueError as e:
        _fail(str(e), EXIT_CONFIG, env)
    try:
        from flytekit.core.context_manager import FlyteContextManager
    except ImportError as e:
        _fail(
            f"this image has no flytekit ({e}); set the connector's adapter_inputs_image to "
            "an image with flytekit",
            EXIT_CONFIG,
            env,
        )
    file_access = FlyteContextManager.current_context().file_access

    def get_data(uri: str, local: str) -> None:
        file_access.get_data(uri, local, is_multipart=True)

    outcome = {"downloaded": 0, "cached": 0}
    for name, uri in adapters.items():
        try:
            outcome[download(get_data, name, uri, root, cache)] += 1
        except DownloadError as e:
            _fail(str(e), EXIT_FAILED, env)
        except OSError as e:
            _fail(f"adapter {name}: cannot write into {root}: {e.strerror} ({e.filename})", 1, env)
    log(
        f"done: {len(adapters)} adapters in {root} "
        f"({outcome['downloaded']} downloaded, {outcome['cached']} already there)"
    )


if __name__ == "__main__":
    main()
