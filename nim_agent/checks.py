"""Shared checks: the error type of every configuration, and the value checks behind it.

Purely computational, stdlib only, imported by every layer that validates input (the user's
`NIM`, the operator's settings, the task config, the CLI). Each `check_*` returns None when the
value is valid, else the message (without the field name); `Problems` collects them by field
and `ConfigError` carries them all::

    >>> problems = Problems()
    >>> problems.add("port", check_int(0, 1, 65535))
    >>> raise ConfigError(problems)
    ConfigError: port: 0 is out of range; use an integer from 1 to 65535

Exceptions::

    ValueError
     +-- ConfigError        .problems: tuple[Problem(field, message), ...]
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

__all__ = [
    "ConfigError",
    "Problem",
    "Problems",
    "check_adapter_name",
    "check_cpu",
    "check_dns_label",
    "check_dns_subdomain",
    "check_hf_repo_id",
    "check_http_path",
    "check_http_url",
    "check_image",
    "check_int",
    "check_label_key",
    "check_label_value",
    "check_memory",
    "check_secret_key",
    "closest",
    "parse_quantity",
    "show",
]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration: the field (dotted path) and what is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(ValueError):
    """A configuration is invalid. `problems` lists every problem found, in field order."""

    def __init__(self, problems: Iterable[Problem], what: str = "the NIM configuration") -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            lines = "".join(f"\n  {p}" for p in self.problems)
            text = f"{len(self.problems)} problems in {what}:{lines}"
        super().__init__(text)

    def prefixed(self, prefix: str) -> ConfigError:
        """The same problems with `prefix.` in front of each field name."""
        return ConfigError(Problem(f"{prefix}.{p.field}", p.message) for p in self.problems)


class Problems(list[Problem]):
    """Problems found so far, in the order found: ``add`` keeps only real messages."""

    def add(self, field: str, message: str | None) -> None:
        """Record `message` (a check's result) against `field`; None means valid."""
        if message:
            self.append(Problem(field, message))


# --------------------------------------------------------------------------- value checks
# Each check returns None when the value is valid, or the message (without the field name).


def show(value: object) -> str:
    """A value as it appears in messages: strings JSON-quoted, everything else as repr."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_UNIT_GUESS = {"k": "Ki", "m": "Mi", "g": "Gi", "t": "Ti", "p": "Pi", "e": "Ei"}


def parse_quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity string (`"20Gi"`, `"500m"`, `"1e3"`), or None."""
    m = _QUANTITY.match(text)
    if not m:
        return None
    try:
        number = Decimal(m["num"])
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        return None
    suffix = m["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    return number.scaleb(int(suffix[1:]))


def _memory_suggestion(text: str) -> str:
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$", text)
    if not m:
        return "20Gi"
    number, unit = m.groups()
    unit = unit.rstrip("bB")
    if unit[-1:] in ("i", "I"):
        unit = unit[:-1]
    if not unit:
        return number
    return number + _UNIT_GUESS.get(unit.lower(), "Gi") if len(unit) == 1 else "20Gi"


def check_memory(value: object) -> str | None:
    """A byte quantity such as "20Gi": a string, positive, and not in millibytes."""
    if not isinstance(value, str):
        example = f"{value}Gi" if isinstance(value, int) and not isinstance(value, bool) else "20Gi"
        return f"{show(value)} is not a string; use a quantity string, e.g. {show(example)}"
    quantity = parse_quantity(value)
    if quantity is None:
        example = _memory_suggestion(value)
        return f"{show(value)} is not a Kubernetes quantity; use e.g. {show(example)}"
    if quantity <= 0:
        return f"{show(value)} must be more than zero"
    if value.endswith(("m", "u", "n")):
        return (
            f"{show(value)} means {value[:-1]} milli/micro/nano-bytes; "
            f"use e.g. {show(value[:-1] + 'Mi')}"
        )
    return None


def check_cpu(value: object) -> str | None:
    """CPU as an int, a float or a quantity string ("500m", "2"), more than zero."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return f'{show(value)} is not a number of cores; use e.g. 2 or "500m"'
    if isinstance(value, str):
        quantity = parse_quantity(value)
        if quantity is None:
            return f'{show(value)} is not a CPU quantity; use e.g. 2 or "500m"'
        if value.endswith(("u", "n")) or (quantity * 1000) != int(quantity * 1000):
            return f'{show(value)} is finer than a millicore; use e.g. "500m"'
    else:
        quantity = Decimal(str(value))
    if quantity <= 0:
        return f"{show(value)} must be more than zero cores"
    return None


def check_int(value: object, low: int, high: int | None = None, what: str = "") -> str | None:
    """An int (not a bool) within [low, high]."""
    valid = f"an integer from {low}" + (f" to {high}" if high is not None else " up")
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{show(value)} is not an integer; use {what or valid}"
    if value < low or (high is not None and value > high):
        return f"{show(value)} is out of range; use {what or valid}"
    return None


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _suggest_dns(value: str) -> str:
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", value.lower()).strip("-.")
    return cleaned or "my-name"


def check_dns_label(value: object) -> str | None:
    """A DNS-1123 label (namespaces): lowercase letters, digits and '-', at most 63."""
    if not isinstance(value, str) or not _DNS_LABEL.match(value) or len(value) > 63:
        hint = (
            f"e.g. {show(_suggest_dns(value).replace('.', '-')[:63])}"
            if isinstance(value, str)
            else ""
        )
        return (
            f"{show(value)} is not a DNS-1123 label (lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit, at most 63 characters)"
            + (f"; use {hint}" if hint else "")
        )
    return None


def check_dns_subdomain(value: object) -> str | None:
    """A DNS-1123 subdomain (Secret, PVC, ServiceAccount, class names), at most 253."""
    if not isinstance(value, str) or not _DNS_SUBDOMAIN.match(value) or len(value) > 253:
        hint = f"; use e.g. {show(_suggest_dns(value)[:253])}" if isinstance(value, str) else ""
        return (
            f"{show(value)} is not a Kubernetes object name (lowercase letters, digits, '-' "
            f"and '.', starting and ending with a letter or digit){hint}"
        )
    return None


def check_secret_key(value: object) -> str | None:
    """A key inside a Secret: letters, digits, '-', '_' and '.'."""
    if not isinstance(value, str) or not _SECRET_KEY.match(value) or len(value) > 253:
        return f"{show(value)} is not a Secret key (letters, digits, '-', '_' and '.')"
    return None


def check_label_key(value: object) -> str | None:
    """A label or annotation key: [prefix/]name, name at most 63, prefix a DNS subdomain."""
    if not isinstance(value, str) or not value:
        return f'{show(value)} is not a label key; use e.g. "team" or "example.com/team"'
    prefix, _, name = value.rpartition("/")
    if prefix and (not _DNS_SUBDOMAIN.match(prefix) or len(prefix) > 253):
        return f'{show(value)}: prefix {show(prefix)} is not a DNS subdomain (e.g. "example.com")'
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"{show(value)} is not a label key (name part: at most 63 letters, digits, '-', '_' "
            f"or '.', starting and ending with a letter or digit)"
        )
    return None


def check_label_value(value: object) -> str | None:
    """A label value: at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends."""
    if not isinstance(value, str):
        return f"{show(value)} is not a string; label values are strings (quote numbers)"
    if len(value) > 63 or not _LABEL_NAME.match(value):
        return (
            f"{show(value)} is not a label value (at most 63 letters, digits, '-', '_' or '.', "
            f"starting and ending with a letter or digit)"
        )
    return None


_EXAMPLE_IMAGE = "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


def check_image(value: object) -> str | None:
    """An OCI image reference: [registry/]repository[:tag][@digest], repository lowercase."""
    if not isinstance(value, str) or not _IMAGE.match(value) or len(value) > 4096:
        return (
            f"{show(value)} is not an image reference; use registry/repository[:tag][@digest] "
            f"with a lowercase repository, e.g. {show(_EXAMPLE_IMAGE)}"
        )
    return None


_PATH_CHARS = re.compile(r"^/?[A-Za-z0-9\-._~/%!$&'()*+,;=:@?]*$")


def check_http_path(value: object) -> str | None:
    """A URL path on the server, with or without the leading '/'."""
    if (
        not isinstance(value, str)
        or not value.strip("/")
        or "://" in value
        or not _PATH_CHARS.match(value)
    ):
        return f'{show(value)} is not an HTTP path on the server; use e.g. "v1/health/ready"'
    return None


_HF_REPO = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


def check_hf_repo_id(value: object) -> str | None:
    """A Hugging Face repository id: "owner/name" (or a bare legacy "name")."""
    if not isinstance(value, str) or not _HF_REPO.match(value) or ".." in value or "--" in value:
        return (
            f"{show(value)} is not a Hugging Face repository id; "
            'use "owner/name", e.g. "tloen/alpaca-lora-7b"'
        )
    return None


_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_adapter_name(value: object) -> str | None:
    """A LoRA adapter's name: its folder under NIM_PEFT_SOURCE, and the model id NIM serves it as
    (letters, digits, '-', '_' and '.', starting with a letter or digit, at most 128)."""
    if not isinstance(value, str) or not _ADAPTER_NAME.match(value) or ".." in value:
        return (
            f"{show(value)} is not an adapter name (letters, digits, '-', '_' and '.', starting "
            'with a letter or digit, at most 128 characters), e.g. "support-lora"'
        )
    return None


_HTTP_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[^\s]*)?$")


def check_http_url(value: object) -> str | None:
    """An http(s) URL without spaces or credentials, e.g. "https://hf-mirror.example.com"."""
    if not isinstance(value, str) or not _HTTP_URL.match(value) or "@" in value:
        return (
            f"{show(value)} is not an http(s) URL without credentials; "
            'use e.g. "https://huggingface.co" or "http://hf-mirror.internal:8080"'
        )
    return None


def closest(name: str, candidates: Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the closest candidate, or an empty string."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""
