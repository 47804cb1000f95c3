"""The Dockerfile, checked without a Docker engine: its instructions parse, what it copies exists, its base
and torch index are build arguments (CPU by default), and its command, port and health check are the
server's: ``densepure serve`` options that parse, on 0.0.0.0:8080, probing a route the app has."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL",
                "ENTRYPOINT", "CMD", "LABEL"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped, as Docker reads them."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "a continuation line ends the file"
    return out


@pytest.fixture(scope="module")
def dockerfile():
    return instructions((ROOT / "Dockerfile").read_text())


def exec_form(args: str) -> list[str]:
    value = json.loads(args)  # the exec form: signals reach the server, no shell in between
    assert isinstance(value, list) and all(isinstance(a, str) for a in value)
    return value


def test_every_instruction_is_known_and_the_base_is_an_argument_cpu_by_default(dockerfile):
    assert {keyword for keyword, _ in dockerfile} <= INSTRUCTIONS
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in dockerfile if k == "ARG"}
    assert args["BASE_IMAGE"].startswith("python:3.") and "slim" in args["BASE_IMAGE"]
    assert args["TORCH_INDEX"].endswith("/whl/cpu")
    froms = [a for k, a in dockerfile if k == "FROM"]
    assert froms == ["${BASE_IMAGE}"] and dockerfile.index(("FROM", "${BASE_IMAGE}")) > 0  # ARG before FROM
    runs = " ".join(a for k, a in dockerfile if k == "RUN")
    assert '--index-url "${TORCH_INDEX}" torch' in runs and 'pip install ".[serve]"' in runs
    assert ("USER", "densepure") in dockerfile  # not root


def test_what_it_copies_exists_and_carries_the_package_data(dockerfile):
    copied = []
    for keyword, args in dockerfile:
        if keyword == "COPY":
            *sources, _ = shlex.split(args)
            copied += sources
    for source in copied:
        assert (ROOT / source).exists(), source
    assert {"pyproject.toml", "densepure"} <= set(copied)
    assert "assets/**/*" in (ROOT / "pyproject.toml").read_text()  # the models and the Swagger UI go in the wheel
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert not any(source in ignored for source in copied) and ".git" in ignored and ".venv" in ignored


def test_the_command_serves_on_0_0_0_0_8080_with_options_that_parse(dockerfile):
    from densepure.cli import build_parser
    from densepure.cli.arguments import options_from_args

    (entrypoint,) = [exec_form(a) for k, a in dockerfile if k == "ENTRYPOINT"]
    (cmd,) = [exec_form(a) for k, a in dockerfile if k == "CMD"]
    argv = entrypoint + cmd
    assert argv[:2] == ["densepure", "serve"]
    options = options_from_args(build_parser().parse_args(argv[1:]))
    assert (options.host, options.port) == ("0.0.0.0", 8080)
    assert [a for k, a in dockerfile if k == "EXPOSE"] == ["8080"]
    assert ("STOPSIGNAL", "SIGTERM") in dockerfile
    # flags given after the image are appended to serve's (exec-form ENTRYPOINT, empty CMD)
    extra = options_from_args(build_parser().parse_args([*argv[1:], "--grace-period", "20"]))
    assert extra.limits.grace_s == 20 and extra.port == 8080


def test_the_health_check_probes_a_route_of_the_app(dockerfile):
    from densepure.serve.app import create_app, endpoint_of
    from densepure.serve.runtime import Runtime
    from densepure.serve.settings import ServeOptions

    (check,) = [a for k, a in dockerfile if k == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    assert re.search(r"--start-period=\d+s", options)  # loading the models takes a while: not unhealthy then
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]  # the slim image has no curl: the standard library probes
    (url,) = re.findall(r"'(http://[^']+)'", argv[2])
    parsed = urlparse(url)
    assert (parsed.hostname, parsed.port) == ("127.0.0.1", 8080)
    assert endpoint_of("GET", parsed.path) == "health_ready"
    app = create_app(Runtime(ServeOptions()))  # nothing loads until the app starts
    assert parsed.path in {getattr(route, "path", None) for route in app.routes}
    compile(argv[2], "<healthcheck>", "exec")  # the probe is valid Python
