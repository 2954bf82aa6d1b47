"""The gateway: nginx's config rendered from the one template compose uses too, every path a
worker writes inside the run dir; supervisord runs nginx like any other program."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from deploy.runner.config import TEMPLATE, TEMPLATE_VARS, StackError


def render_template(text: str, values: Mapping[str, str]) -> str:
    """envsubst restricted to TEMPLATE_VARS: `${VAR}` and `$VAR`; nginx's own `$vars` stay."""
    names = "|".join(TEMPLATE_VARS)
    pattern = re.compile(rf"\$(?:\{{({names})\}}|({names})(?![A-Za-z0-9_]))")

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if not values.get(name):
            raise StackError(f"gateway template needs {name}")
        return values[name]

    return pattern.sub(value, text)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise StackError("nginx is not installed; run deploy/bootstrap.sh as root, or: "
                         "sudo apt-get update && sudo apt-get install -y nginx")
    return found


def _main_conf(nginx_dir: Path) -> str:
    """The main config around conf.d: every path a worker writes stays inside the run dir."""
    temp = "\n".join(f"    {kind}_temp_path {nginx_dir / 'tmp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    mime = "    include /etc/nginx/mime.types;\n" if Path("/etc/nginx/mime.types").exists() else ""
    # As root, nginx would hand requests to `nobody`, which may not enter the run dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        "# Written by deploy/native.py; edit gateway/templates/gateway.conf.template instead.\n"
        f"{user}daemon off;\nworker_processes auto;\npid {nginx_dir / 'nginx.pid'};\n"
        "error_log stderr warn;\n\n"
        "events {\n    worker_connections 1024;\n}\n\n"
        "http {\n"
        f"{mime}    default_type application/octet-stream;\n"
        "    sendfile on;\n    keepalive_timeout 65;\n"
        f"{temp}\n    include {nginx_dir / 'conf.d'}/*.conf;\n"
        "}\n"
    )


def nginx_command(nginx_dir: Path, *args: str) -> list[str]:
    """nginx in the foreground (``daemon off``) on the run dir's config."""
    return [nginx_binary(), "-p", f"{nginx_dir}/", "-c", str(nginx_dir / "nginx.conf"),
            "-e", "stderr", *args]


def write_config(env: Mapping[str, str], nginx_dir: Path) -> bool:
    """Render and validate the gateway config; True when it differs from what was there."""
    for sub in ("conf.d", "tmp"):
        (nginx_dir / sub).mkdir(parents=True, exist_ok=True)
    gateway_conf = nginx_dir / "conf.d" / "gateway.conf"
    rendered = render_template(TEMPLATE.read_text(), env)
    changed = not gateway_conf.exists() or gateway_conf.read_text() != rendered
    gateway_conf.write_text(rendered)
    (nginx_dir / "nginx.conf").write_text(_main_conf(nginx_dir))
    check = subprocess.run(nginx_command(nginx_dir, "-t", "-q"), capture_output=True, text=True,
                           check=False)
    if check.returncode != 0:
        raise StackError(f"nginx rejected {gateway_conf}:\n{check.stdout}{check.stderr}")
    return changed
