"""The `nim-agent` command.

    nim-agent render -f nim.yaml [--name NAME] [--namespace NS]

Exit status: 0 success, 2 invalid input (one line per problem on stderr, naming the field),
1 anything else. Each subcommand imports what it needs only when it runs, so `nim-agent render`
never loads flytekit or the Kubernetes client.

Adding a subcommand: write `_add_<name>(subparsers)` that declares its arguments and sets
`handler=` to a function `(args) -> int` doing its imports inside, and list it in `_COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_INVALID = 2


class InvalidInput(Exception):
    """Input the user can fix: each line is one problem, already naming its field."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


# --------------------------------------------------------------------------- render


def _add_render(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "render",
        help="print the Kubernetes objects the connector would create for a config file",
        description=(
            "Print, as multi-document YAML, the objects the connector creates for a NIM config "
            "file (Pod first, then Service). The file is YAML or JSON: top-level keys are NIM "
            "parameters, `secrets:` holds the NIMSecrets parameters. Connector settings are "
            "read from NIM_AGENT_* env vars (and the file named by NIM_AGENT_CONFIG)."
        ),
    )
    p.add_argument("-f", "--file", required=True, help="config file (YAML or JSON); - for stdin")
    p.add_argument(
        "--name",
        help="task name, any form (capitals, dots, any length); object names derive from it "
        "(default: the file's name)",
    )
    p.add_argument(
        "--namespace",
        help="namespace of the execution (default: the connector's default_namespace)",
    )
    p.set_defaults(handler=_render)


RENDER_HEADER = """\
# Objects the nim-agent connector creates for this config, in creation order.
# At creation it also sets the annotation nim-agent.dev/expires-at (creation time + ttl) and
# the Service's ownerReferences (the Pod's uid); a local run's name gets a random suffix.
"""


def _render(args: argparse.Namespace) -> int:
    from nim_agent.config import NIM, ConfigError, check_dns_label
    from nim_agent.render import DeploymentIdentity, namespace_for, render, to_yaml
    from nim_agent.settings import ConnectorSettings

    path: str = args.file
    problems: list[str] = []
    if args.namespace is not None and (message := check_dns_label(args.namespace)):
        problems.append(f"--namespace: {message}")
    try:
        settings = ConnectorSettings.load()
    except ConfigError as exc:
        problems.extend(f"connector settings: {p}" for p in exc.problems)
    data = _read_config(path)
    try:
        nim = NIM.from_dict(data)
    except ConfigError as exc:
        problems.extend(f"{path}: {p}" for p in exc.problems)
    if problems:
        raise InvalidInput(problems)
    try:
        namespace = namespace_for(nim, args.namespace, settings)
        name = args.name if args.name is not None else _default_name(path)
        identity = DeploymentIdentity.for_local(name, namespace, nonce="")
        objects = render(nim, identity, settings)
    except ConfigError as exc:
        raise InvalidInput([f"{path}: {p}" for p in exc.problems]) from None
    sys.stdout.write(to_yaml(objects, header=RENDER_HEADER))
    return 0


def _default_name(path: str) -> str:
    if path == "-":
        return "nim"
    name = Path(path).name
    for suffix in (".yaml", ".yml", ".json"):
        name = name.removesuffix(suffix)
    return name or "nim"


def _read_config(path: str) -> object:
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput([f"{path}: cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise InvalidInput([f"{path}: is not UTF-8 text"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InvalidInput([f"{path}: not valid YAML or JSON{where}: {problem}"]) from None


# --------------------------------------------------------------------------- entry point

_COMMANDS: list[Callable[[Any], None]] = [_add_render]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="nim-agent",
        description="Run NVIDIA NIM servers as steps of Flyte workflows.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `nim-agent` with `argv` (default: the process arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_INVALID
    try:
        status: int = handler(args)
    except InvalidInput as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    return status


if __name__ == "__main__":
    sys.exit(main())
