"""What a NIM's ``GET /v1/models`` answer says: the base model it serves, its LoRA adapters, and
what a deployment still lacks.

Purely computational, no I/O: asking the server is `nim_agent.serving`'s job; deciding the task's
phase from the result is `nim_agent.status`'s. The answer is OpenAI's model list as vLLM-based NIMs
give it::

    {"object": "list", "data": [
        {"id": "meta/llama3-8b-instruct", "object": "model", "root": "...", "parent": null},
        {"id": "support-lora", "object": "model", "root": "/opt/nim/loras/support-lora",
         "parent": "meta/llama3-8b-instruct"}]}

An entry without a ``parent`` (or whose parent is itself) is a base model; an adapter is an entry
whose ``parent`` is a base model listed, and its ``id`` is its folder name under NIM_PEFT_SOURCE.
Adapters are matched by ``parent``, not by ``root``: the served name may differ from the path.

Public API::

    parse_models(body) -> ModelList                  (ValueError saying why it is not a list)
    missing(models, adapters=[...], model=None) -> Missing(model, adapters)
    ModelsReply(at, models | problem, seconds)       one check's outcome, as `serving` reports it
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Missing", "ModelList", "ModelsReply", "missing", "parse_models"]


@dataclass(frozen=True)
class ModelList:
    """The models a NIM serves: base model ids (in listed order) and adapter id -> parent."""

    base: tuple[str, ...] = ()
    adapters: Mapping[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The served base model id (the first listed), "" when none is listed."""
        return self.base[0] if self.base else ""

    def describe(self) -> str:
        """What is listed, as messages say it: `meta/llama3-8b-instruct + adapters a, b`."""
        if not self.base and not self.adapters:
            return "nothing"
        parts = [", ".join(self.base) or "no base model"]
        if self.adapters:
            parts.append("adapters " + ", ".join(sorted(self.adapters)))
        return " + ".join(parts)


_MAX_TEXT = 200


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def parse_models(body: bytes | str) -> ModelList:
    """The model list in a ``/v1/models`` answer body; ValueError (a short reason) otherwise."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        raise ValueError(f"the answer is not JSON: {_short(raw) or '(empty)'}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError(f'the answer has no "data" list: {_short(json.dumps(doc))}')
    entries = [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"]]
    base = tuple(
        e["id"]
        for e in entries
        if not isinstance(e.get("parent"), str) or not e["parent"] or e["parent"] == e["id"]
    )
    adapters = {
        e["id"]: e["parent"]
        for e in entries
        if isinstance(e.get("parent"), str) and e["parent"] and e["parent"] != e["id"]
    }
    return ModelList(base=base, adapters=adapters)


@dataclass(frozen=True)
class Missing:
    """What a server does not list yet: the expected base model (or any base model: "*"), and
    requested adapters (none missing: both empty)."""

    model: str = ""
    adapters: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.model or self.adapters)


def missing(models: ModelList, *, adapters: Sequence[str], model: str | None = None) -> Missing:
    """What of `model` (None: any base model) and `adapters` the list lacks.

    An adapter counts only when listed with a base model of this server as its parent (with
    `model` given: that model); an entry of the same name with another parent does not.
    """
    expected = [m.strip() for m in (model or "").split(",") if m.strip()]
    if expected:
        bases = [m for m in expected if m in models.base]
        lacking_model = "" if bases else expected[0]
    else:
        bases = list(models.base)
        lacking_model = "" if bases else "*"
    lacking = tuple(a for a in adapters if models.adapters.get(a) not in bases)
    return Missing(model=lacking_model, adapters=lacking)


@dataclass(frozen=True)
class ModelsReply:
    """One ``/v1/models`` check: when it was answered, and the list or why there is none."""

    at: datetime
    models: ModelList | None = None
    problem: str = ""
    """Why there is no list (no answer, an error status, an unreadable body); "" when listed."""
    seconds: float = 0.0
    """How long the request took."""
