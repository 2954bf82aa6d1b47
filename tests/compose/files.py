"""Read compose mode's files the way Docker does, without Docker: the compose file (YAML merge
keys, ``${VAR:-default}`` interpolation) and Dockerfiles (continued lines, stages, instructions).

Only the subset this repository uses is implemented; anything else fails loudly rather than
being read wrong.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from deploy import native
from identity.settings import IdentitySettings
from order.settings import OrderSettings
from payment.settings import PaymentSettings
from production.settings import ProductionSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
TEMPLATE = REPO / "gateway" / "templates" / "gateway.conf.template"

# Each service's one settings class, in native mode's order.
SETTINGS: dict[str, type[BaseSettings]] = {
    "order": OrderSettings,
    "payment": PaymentSettings,
    "production": ProductionSettings,
    "identity": IdentitySettings,
}
assert tuple(SETTINGS) == native.ALL_SERVICES

# $$ | ${NAME} | ${NAME:-default} / ${NAME-default} / ${NAME:?err} / ${NAME:+alt} | $NAME
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation of one string, against `env` (no `.env` file here)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and (op or "").startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":?", "?"):
            if unset_or_empty:
                raise ValueError(f"compose requires {name}: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return _VARIABLE.sub(substitute, value)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def raw_compose() -> dict[str, Any]:
    """The compose file as written: anchors and merge keys resolved, `${...}` left alone."""
    return _load_compose(COMPOSE_FILE.read_text())


@cache
def _load_compose(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as `docker compose` sees it with `env` (default: an empty environment)."""
    return _interpolate_tree(raw_compose(), env or {})  # type: ignore[no-any-return]


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, map or list form, as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def services() -> dict[str, dict[str, Any]]:
    """The compose services, interpolated with an empty environment."""
    return compose()["services"]  # type: ignore[no-any-return]


def env_of(name: str) -> dict[str, str]:
    return service_env(services()[name])


# --- Dockerfiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str
    stage: str  # the stage's name (`FROM ... AS name`), else its index


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    instructions: tuple[Instruction, ...]

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        logical: list[str] = []
        pending = ""
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("#") or (not stripped and not pending):
                continue  # comments, even inside a continued instruction, are dropped
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            logical.append(pending + stripped)
            pending = ""
        assert not pending, f"{path}: the last instruction ends with a line continuation"
        instructions, stage = [], ""
        for number, text in enumerate(logical):
            keyword, _, args = text.partition(" ")
            keyword = keyword.upper()
            if keyword == "FROM":
                words = args.split()
                as_name = len(words) == 3 and words[1].upper() == "AS"
                stage = words[2] if as_name else str(number)
            instructions.append(Instruction(keyword, args.strip(), stage))
        return cls(path, tuple(instructions))

    def stages(self) -> list[str]:
        return [i.stage for i in self.instructions if i.keyword == "FROM"]

    def base_of(self, stage: str) -> str:
        return next(i.args.split()[0] for i in self.instructions
                    if i.keyword == "FROM" and i.stage == stage)

    def chain(self, stage: str | None = None) -> list[Instruction]:
        """What a build of `stage` (default: the last) runs: its parent stages' instructions too."""
        stage = stage or self.stages()[-1]
        assert stage in self.stages(), f"{self.path.name} has no stage {stage!r}"
        own = [i for i in self.instructions if i.stage == stage]
        parent = self.base_of(stage)
        return (self.chain(parent) if parent in self.stages() else []) + own

    def last(self, keyword: str, stage: str | None = None) -> Instruction | None:
        found = [i for i in self.chain(stage) if i.keyword == keyword]
        return found[-1] if found else None

    def env(self, stage: str | None = None) -> dict[str, str]:
        env: dict[str, str] = {}
        for instruction in self.chain(stage):
            if instruction.keyword == "ENV":
                for word in shlex.split(instruction.args):
                    name, _, value = word.partition("=")
                    env[name] = value
        return env

    def healthcheck(self, stage: str | None = None) -> list[str] | None:
        """The HEALTHCHECK command in exec form, or None when there is none (or NONE)."""
        instruction = self.last("HEALTHCHECK", stage)
        if instruction is None or instruction.args.upper() == "NONE":
            return None
        _, _, command = instruction.args.partition("CMD ")
        return exec_form(command)


def exec_form(text: str) -> list[str]:
    """A CMD/HEALTHCHECK argument list; the shell form becomes what Docker runs for it."""
    text = text.strip()
    if text.startswith("["):
        argv = json.loads(text)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        return argv
    return ["/bin/sh", "-c", text]


def dockerfile_of(name: str) -> tuple[Dockerfile, str | None]:
    """The Dockerfile a compose service is built from, and the target it builds."""
    build = services()[name]["build"]
    build = {"context": build} if isinstance(build, str) else build
    path = REPO / build["context"] / build.get("dockerfile", "Dockerfile")
    return Dockerfile.read(path), build.get("target")
