"""Keep a shared NIM's adapters in step with its holders: the program of the `adapter-sync` sidecar.

nim-agent ships this file's source into a shared NIM pod (`NIMTask(reuse=...)`) and runs it with
`python3 -c` as a native sidecar (an init container with restartPolicy Always) beside the server.
It is one self-contained file that imports nothing from nim_agent; the two adapter downloaders,
nim_agent/hf_download.py (standard library) and nim_agent/flyte_download.py (flytekit), come as
its two arguments, their sources, and are loaded as modules. `wanted_adapters` is the one home of
the rule that binds an adapter name to its source on a shared server; nim-agent imports it from
here (`nim_agent.contract`), so the pod and the connector agree.

Every NIM_AGENT_SYNC_INTERVAL seconds it reads the pod's annotations from the downward API file
(the kubelet rewrites it soon after the annotations change: nim-agent adds a holder's record when
an execution attaches), and puts each adapter the holders want and the folder lacks into
$NIM_PEFT_SOURCE/<name>, with the downloader of its source. The NIM picks the new folder up on its
next scan (NIM_PEFT_REFRESH_INTERVAL). A folder already holding that source (the downloaders'
markers) is left as it is; a folder holding another source is never replaced: on a shared server
an adapter name means one content for the server's whole life.

The rule (`wanted_adapters`): the adapters kept by nim-agent's cleanup (annotation
``nim-agent.dev/adapters-kept``, JSON {name: source}) come first; then each holder record
(annotations ``holders.nim-agent.dev/<holder>``, JSON with ``since`` and ``adapters``, a list of
{"name": ..., <source>}), oldest first (ties: by holder name), binds the names not bound yet. A
source is {"hf": "<repo id>"} (Hugging Face, served as the repository's last part) or
{"uri": "<folder URI>"} (a task input).

Log lines (nim-agent reads them to tell the holder that asked why its adapter is missing):
``adapter-sync: added <name> from <source> ...`` and ``adapter-sync: ERROR <name>: <why>``; a
failed adapter is tried again after NIM_AGENT_SYNC_RETRY_SECONDS.

Environment
  NIM_PEFT_SOURCE                 the folder adapters go into (as the NIM container's)
  NIM_AGENT_ANNOTATIONS           [/etc/nim-agent/annotations] the downward API file
  NIM_AGENT_SYNC_INTERVAL         [0.5] seconds between looks at it
  NIM_AGENT_SYNC_RETRY_SECONDS    [60] before a failed adapter is tried again
  and the downloaders' own: HF_ENDPOINT, HF_TOKEN, NIM_AGENT_HF_CACHE, NIM_AGENT_HF_RETRIES, ...
  (hf_download.py); NIM_AGENT_ADAPTER_CACHE and flytekit's FLYTE_* settings (flyte_download.py)

Example (what the pod runs):
    python3 -c "$(cat adapter_sync.py)" "$(cat hf_download.py)" "$(cat flyte_download.py)"
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import types
from collections.abc import Callable, Mapping
from typing import Any

HOLDER_PREFIX = "holders.nim-agent.dev/"  # + the holder's name: one annotation per holder
KEPT_ANNOTATION = "nim-agent.dev/adapters-kept"
ANNOTATIONS_FILE = "/etc/nim-agent/annotations"
HF_MARKER = ".nim-agent-hf.json"  # hf_download.MARKER
INPUT_MARKER = ".nim-agent-input.json"  # flyte_download.MARKER


def log(message: str) -> None:
    print(f"adapter-sync: {message}", flush=True)


# ------------------------------------------------------------------------------ the rule


def _go_unquote(quoted: str) -> str:
    """A Go double-quoted string literal (`%q`, as the kubelet writes values) as its text."""
    body = quoted[1:-1]
    escapes = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    out: list[str] = []
    raw = bytearray()  # \xHH escapes are bytes of UTF-8 text
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            if raw:
                out.append(raw.decode("utf-8", "replace"))
                raw.clear()
            out.append(ch)
            i += 1
            continue
        kind = body[i + 1] if i + 1 < len(body) else ""
        if kind == "x":
            raw.append(int(body[i + 2 : i + 4], 16))
            i += 4
            continue
        if raw:
            out.append(raw.decode("utf-8", "replace"))
            raw.clear()
        if kind in ("u", "U"):
            width = 4 if kind == "u" else 8
            out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
            i += 2 + width
        elif kind in escapes:
            out.append(escapes[kind])
            i += 2
        else:  # \\ \" \'
            out.append(kind)
            i += 2
    if raw:
        out.append(raw.decode("utf-8", "replace"))
    return "".join(out)


_LINE = re.compile(r'^([^=]+)=("(?:[^"\\]|\\.)*")$')


def parse_annotations(text: str) -> dict[str, str]:
    """The annotations in a downward API file: one ``key="Go-quoted value"`` line each."""
    found = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            try:
                found[m.group(1)] = _go_unquote(m.group(2))
            except (ValueError, IndexError):
                continue
    return found


def as_source(value: object) -> dict[str, str] | None:
    """The source in `value` ({"hf": repo id} or {"uri": URI}, other keys ignored), or None."""
    if isinstance(value, dict):
        found = [(k, value[k]) for k in ("hf", "uri") if k in value]
        if len(found) == 1 and isinstance(found[0][1], str) and found[0][1]:
            return {found[0][0]: found[0][1]}
    return None


def record_adapters(record: object) -> list[tuple[str, dict[str, str]]]:
    """(name, source) of each adapter in a holder record (its "adapters" list), in order."""
    items = record.get("adapters") if isinstance(record, dict) else None
    found = []
    for item in items if isinstance(items, list) else []:
        name = item.get("name") if isinstance(item, dict) else None
        source = as_source(item)
        if isinstance(name, str) and name and source is not None:
            found.append((name, source))
    return found


def _json(text: object) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


def wanted_adapters(annotations: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """{name: source} of the adapters a shared server must have, by the rule of the docstring:
    kept ones first, then the holders' records oldest first, each name bound once."""
    bound: dict[str, dict[str, str]] = {}
    kept = _json(annotations.get(KEPT_ANNOTATION))
    if isinstance(kept, dict):
        for name, value in sorted(kept.items()):
            source = as_source(value)
            if isinstance(name, str) and name and source is not None:
                bound[name] = source
    records = []
    for key, text in annotations.items():
        if key.startswith(HOLDER_PREFIX):
            record = _json(text)
            if isinstance(record, dict):
                records.append((str(record.get("since") or ""), key, record))
    for _, _, record in sorted(records, key=lambda r: (r[0], r[1])):
        for name, source in record_adapters(record):
            bound.setdefault(name, source)
    return bound


def describe(source: Mapping[str, str]) -> str:
    """A source as log lines and messages say it: `hf:owner/name` or the URI."""
    if "hf" in source:
        return f"hf:{source['hf']}"
    return source.get("uri", "?")


# ------------------------------------------------------------------------------ the folder


def in_place(root: str, name: str, source: Mapping[str, str]) -> str:
    """What $NIM_PEFT_SOURCE/<name> holds: "same" (this source, complete), "other" (another
    source: never replaced), or "absent" (nothing complete)."""
    folder = os.path.join(root, name)
    for marker, field in ((HF_MARKER, "repo_id"), (INPUT_MARKER, "uri")):
        try:
            with open(os.path.join(folder, marker)) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        mine = source.get("hf" if field == "repo_id" else "uri")
        return "same" if isinstance(doc, dict) and doc.get(field) == mine else "other"
    return "absent"


def load_module(name: str, source: str) -> types.ModuleType:
    """A downloader program (its source) as a module; its main() is not run."""
    module = types.ModuleType(name)
    module.__dict__["__file__"] = f"<{name}>"
    sys.modules[name] = module  # dataclasses and the like look their module up
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


class Syncer:
    """Downloads what `wanted_adapters` names and the folder lacks, one adapter at a time."""

    def __init__(
        self,
        root: str,
        fetch_hf: Callable[[str], str],
        fetch_uri: Callable[[str, str], str],
        retry_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.fetch_hf = fetch_hf  # repo id -> "downloaded" | "cached"; raises on failure
        self.fetch_uri = fetch_uri  # (name, uri) -> "downloaded" | "cached"
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.done: dict[str, dict[str, str]] = {}
        self.failed: dict[str, tuple[dict[str, str], float]] = {}

    def sync(self, wanted: Mapping[str, dict[str, str]]) -> list[str]:
        """One pass; returns the names added."""
        added = []
        for name, source in sorted(wanted.items()):
            if self.done.get(name) == source:
                continue
            failure = self.failed.get(name)
            if failure and failure[0] == source and self.clock() - failure[1] < self.retry_seconds:
                continue
            state = in_place(self.root, name, source)
            if state == "same":
                self.done[name] = dict(source)
                continue
            if state == "other":
                self._fail(name, source, f"{self.root}/{name} holds another adapter; not replaced")
                continue
            started = self.clock()
            try:
                if "hf" in source:
                    outcome = self.fetch_hf(source["hf"])
                else:
                    outcome = self.fetch_uri(name, source["uri"])
            except Exception as e:  # the downloaders' own errors carry the message
                self._fail(name, source, " ".join(str(e).split()) or type(e).__name__)
                continue
            self.done[name] = dict(source)
            self.failed.pop(name, None)
            added.append(name)
            log(f"added {name} from {describe(source)} ({outcome}, {self.clock() - started:.1f}s)")
        return added

    def _fail(self, name: str, source: Mapping[str, str], why: str) -> None:
        self.failed[name] = (dict(source), self.clock())
        log(f"ERROR {name}: {describe(source)}: {why}")


# ------------------------------------------------------------------------------ main


def _hf_fetcher(hf: types.ModuleType, env: dict[str, str]) -> Callable[[str], str]:
    root, _, hub, offline, cache = hf._settings({**env, hf.REPO_IDS_ENV: "[]"})

    def fetch(repo_id: str) -> str:
        hf.adapter_name(repo_id)  # ValueError for an id that is not one
        try:
            return str(hf.download_adapter(hub, repo_id, root, offline, cache))
        except hf.DownloadError as e:
            raise RuntimeError(str(e)) from None

    return fetch


def _uri_fetcher(flyte: types.ModuleType, env: dict[str, str]) -> Callable[[str, str], str]:
    root = env.get("NIM_PEFT_SOURCE", "").strip()
    cache = env.get(flyte.CACHE_ENV, "").strip() or None
    state: dict[str, Any] = {}

    def fetch(name: str, uri: str) -> str:
        if "get_data" not in state:
            try:
                from flytekit.core.context_manager import FlyteContextManager
            except ImportError as e:
                raise RuntimeError(
                    f"this image has no flytekit ({e}); adapters from task inputs need the "
                    "connector's adapter_inputs_image"
                ) from None
            access = FlyteContextManager.current_context().file_access
            state["get_data"] = lambda u, local: access.get_data(u, local, is_multipart=True)
        try:
            return str(flyte.download(state["get_data"], name, uri, root, cache))
        except flyte.DownloadError as e:
            raise RuntimeError(str(e)) from None

    return fetch


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ) if env is None else env
    root = env.get("NIM_PEFT_SOURCE", "").strip()
    if not root or not os.path.isabs(root) or len(argv) != 2:
        log("ERROR needs NIM_PEFT_SOURCE (an absolute path) and the two downloader sources")
        sys.exit(2)
    path = env.get("NIM_AGENT_ANNOTATIONS", "").strip() or ANNOTATIONS_FILE
    interval = float(env.get("NIM_AGENT_SYNC_INTERVAL", "").strip() or 0.5)
    retry = float(env.get("NIM_AGENT_SYNC_RETRY_SECONDS", "").strip() or 60)
    hf = load_module("nim_agent_hf_download", argv[0])
    flyte = load_module("nim_agent_flyte_download", argv[1])
    os.makedirs(root, exist_ok=True)
    syncer = Syncer(root, _hf_fetcher(hf, env), _uri_fetcher(flyte, env), retry)
    log(f"following {path}; adapters into {root}, every {interval:g}s")
    seen = None
    while True:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            if seen is not None:
                log(f"ERROR cannot read {path}: {e.strerror}")
            text = seen or ""
        wanted = wanted_adapters(parse_annotations(text))
        if text != seen:
            names = ", ".join(sorted(wanted)) or "none"
            log(f"holders want {len(wanted)} adapter(s): {names}")
            seen = text
        syncer.sync(wanted)
        time.sleep(interval)


if __name__ == "__main__":
    main()
