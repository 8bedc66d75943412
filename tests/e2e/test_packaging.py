"""What the container image holds, checked without Docker (there is no engine here).

The Dockerfile's build stage is replayed: its COPY sources (through .dockerignore) make a fresh
build context, its `uv sync` commands install it into a new virtualenv, and the image's entrypoint
runs from there. The wheel is checked on its own, and the Dockerfile against the files it names.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
CHART = REPO_ROOT / "charts" / "nim-agent"
CHART_VALUES = CHART / "values.yaml"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments), continuation lines joined

    def args_of(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of the Dockerfile, ARGs in FROM substituted."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            base, _, name = rest.partition(" AS ")
            for key, value in global_args.items():
                base = base.replace("${" + key + "}", value)
            stages.append(Stage(base.strip(), name.strip() or None, []))
        elif not stages and instruction == "ARG":
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((instruction, rest))
    return global_args, stages


def copy_sources(stage: Stage) -> list[str]:
    """Sources of the stage's COPY instructions from the build context (not --from=...)."""
    sources = []
    for args in stage.args_of("COPY"):
        if args.startswith("--from"):
            continue
        *srcs, _dest = shlex.split(args)
        sources += [s for s in srcs if not s.startswith("--")]
    return sources


def dockerignore_allows(path: str) -> bool:
    """The allow-list semantics of our .dockerignore: last matching pattern wins."""
    allowed = True
    for pattern in DOCKERIGNORE.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern == "*" or path == pattern or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def sync_commands(stage: Stage) -> list[list[str]]:
    return [shlex.split(a) for a in stage.args_of("RUN") if a.startswith("uv sync")]


def run(args: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(a) for a in args], capture_output=True, text=True, check=False, **kw
    )


# ------------------------------------------------------------------------ the Dockerfile itself


def test_dockerfile_copies_only_files_that_exist_and_reach_the_build_context() -> None:
    _, (build, final) = dockerfile_stages()
    sources = copy_sources(build)
    assert {"pyproject.toml", "uv.lock", "nim_agent"} <= set(sources)
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
    # pyproject's readme is read by the build backend: it must be in the context too.
    readme = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources
    assert copy_sources(final) == [], "the final stage copies from the build stage only"


def test_dockerfile_installs_from_the_lock_file_without_dev_dependencies() -> None:
    _, (build, _) = dockerfile_stages()
    commands = sync_commands(build)
    assert commands, "no `uv sync` in the build stage"
    for command in commands:
        assert "--frozen" in command and "--no-dev" in command, command


def test_dockerfile_pins_the_makefiles_uv_and_a_python_the_package_supports() -> None:
    _, (build, final) = dockerfile_stages()
    makefile = (REPO_ROOT / "Makefile").read_text()
    (make_uv,) = re.findall(r"^UV_VERSION\s*:?=\s*(\S+)", makefile, re.M)
    assert f"UV_VERSION={make_uv}" in build.args_of("ARG")
    python = re.fullmatch(r"python:(\d+\.\d+)-slim", final.base)
    assert python and build.base == final.base, (build.base, final.base)
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "requires-python"
    ]
    assert python.group(1) + ".0" in SpecifierSet(requires)


def test_final_stage_runs_the_connector_as_the_charts_non_root_user() -> None:
    _, (_, final) = dockerfile_stages()
    values = yaml.safe_load(CHART_VALUES.read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert final.args_of("USER") == [f"{uid}:{uid}"]
    assert any(f"--uid {uid}" in a for a in final.args_of("RUN"))
    assert final.args_of("ENTRYPOINT") == ['["nim-agent"]']
    assert final.args_of("CMD") == ['["serve"]']
    exposed = {int(p) for a in final.args_of("EXPOSE") for p in a.split()}
    assert exposed == {values["ports"]["containerPort"], values["metrics"]["port"]}
    # No compilers, package managers or uv in the image: only the virtualenv is copied in.
    for args in final.args_of("RUN"):
        assert not re.search(r"\b(apt-get|apk|pip|uv|gcc|make)\b", args), args


# ---------------------------------------------------------------------------------- the wheel


def test_wheel_carries_the_package_and_its_entry_points(uv: Path, tmp_path: Path) -> None:
    result = run([uv, "build", "--wheel", "--out-dir", tmp_path, REPO_ROOT], timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("nim_agent-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entries = zf.read(entry_points).decode()
    assert "nim_agent/__init__.py" in names
    assert "nim_agent/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "charts/", "devcluster/"))]
    assert re.search(r"^\[console_scripts\]\nnim-agent = nim_agent\.cli:main$", entries, re.M)
    assert re.search(r"^\[flytekit\.plugins\]\nnim_agent = nim_agent\.connector$", entries, re.M)


# ----------------------------------------------------------- the image's install, replayed


@pytest.fixture(scope="module")
def image_venv(uv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv built the way the Dockerfile's build stage builds /opt/nim-agent."""
    root = tmp_path_factory.mktemp("image")
    context, venv = root / "src", root / "venv"
    _, (build, _) = dockerfile_stages()
    context.mkdir()
    for source in copy_sources(build):
        src = REPO_ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, context / source)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))},
        "UV_PROJECT_ENVIRONMENT": str(venv),
        # The image's python is the base image's; here, the one running the tests.
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
    }
    for command in sync_commands(build):
        assert command[0] == "uv", command
        result = run([uv, *command[1:]], cwd=context, env=env, timeout=900)
        assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stderr[-3000:]}"
    yield venv
    shutil.rmtree(root, ignore_errors=True)


def test_image_venv_holds_exactly_the_locked_versions_and_no_dev_tools(
    image_venv: Path, uv: Path
) -> None:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    locked = {p["name"]: p.get("version") for p in lock["package"]}
    result = run([uv, "pip", "freeze", "--python", image_venv / "bin" / "python"])
    assert result.returncode == 0, result.stderr
    installed = dict(line.split("==", 1) for line in result.stdout.splitlines() if "==" in line)
    assert installed, result.stdout
    for name, version in installed.items():
        key = re.sub(r"[-_.]+", "-", name).lower()
        assert key in locked, f"{name} is installed but not in uv.lock"
        assert locked[key] == version, f"{name} {version} installed, {locked[key]} locked"
    for dev_tool in ("pytest", "ruff", "mypy", "hypothesis"):
        assert dev_tool not in installed, f"dev dependency {dev_tool} is in the image"


def test_image_venv_imports_the_installed_package_not_the_checkout(image_venv: Path) -> None:
    python = image_venv / "bin" / "python"
    result = run([python, "-c", "import nim_agent; print(nim_agent.__file__)"], cwd=image_venv)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(image_venv), result.stdout


@pytest.mark.parametrize("command", [[], ["serve"], ["render"]], ids=["main", "serve", "render"])
def test_image_entrypoint_answers_help(image_venv: Path, command: list[str]) -> None:
    # ENTRYPOINT ["nim-agent"], CMD ["serve"]: the chart runs `nim-agent serve`.
    result = run([image_venv / "bin" / "nim-agent", *command, "--help"], cwd=image_venv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage" in result.stdout.lower()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def grpc_health(port: int) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError as e:
            return f"unavailable ({e.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_image_serves_grpc_health_and_metrics_with_the_charts_settings(
    image_venv: Path, helm: Path, tmp_path: Path
) -> None:
    # What the pod's probes see: `nim-agent serve` from the image's install, its settings file
    # rendered by the chart, and an API server that is down (health must not depend on it).
    rendered = run([helm, "template", "x", CHART, "--show-only", "templates/configmap.yaml"])
    assert rendered.returncode == 0, rendered.stderr
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_load(rendered.stdout)["data"]["settings.yaml"])
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "down", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "down", "context": {"cluster": "down", "user": "u"}}],
                "current-context": "down",
            }
        )
    )
    grpc_port, metrics_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "NIM_AGENT_CONFIG": str(settings),
        "KUBECONFIG": str(kubeconfig),
    }
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                image_venv / "bin" / "nim-agent",
                "serve",
                f"--port={grpc_port}",
                f"--metrics-port={metrics_port}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline, status = time.monotonic() + 60, ""
        while time.monotonic() < deadline and server.poll() is None:
            status = grpc_health(grpc_port)
            if status == "SERVING":
                break
            time.sleep(0.5)
        assert status == "SERVING", f"health: {status!r}; log:\n{log.read_text()[-3000:]}"
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            metrics = response.read().decode()
        assert re.search(r"^nim_agent_\w+", metrics, re.M), metrics[:2000]
        # Kubernetes stops pods with SIGTERM: the server exits well within the grace period.
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0, log.read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
