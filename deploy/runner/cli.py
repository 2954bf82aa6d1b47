"""The commands: ``up``, ``prepare``, ``down``, ``status`` and ``logs`` (deploy/native.py)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploy.runner import gateway, processes
from deploy.runner.config import (
    ALL_SERVICES,
    GATEWAY,
    PROCESS_NAME,
    RUNNER_DEFAULTS,
    Replica,
    StackError,
    check_gateway_settings,
    process_sort_key,
    replicas,
    resolve_run_dir,
    say,
    service_command,
    settings_names,
    stack_env,
)
from deploy.runner.control import rpc
from deploy.runner.health import http_status, wait_ready
from deploy.runner.provision import ensure_keys, prepare

# How long ``up`` waits for a port still held before it says who must free it.
PORT_WAIT_SECONDS = processes.STOP_WAIT_SECONDS


def _port_busy(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _programs(env: dict[str, str], run_dir: Path,
              wanted: list[Replica]) -> list[processes.Program]:
    programs = [processes.Program(GATEWAY, gateway.nginx_command(run_dir / "nginx"), env, 100)]
    programs += [processes.Program(r.name, service_command(r.service, env), r.env(env), 200,
                                   watched=settings_names(r.service),
                                   ready_url=f"http://{r.address}/health/ready")
                 for r in wanted]
    return programs


def _refuse_taken_ports(env: Mapping[str, str], wanted: list[Replica],
                        kept: Mapping[str, Mapping[str, Any]], *, killed: bool) -> None:
    """A port something else holds would have the new program fail; say so before starting.

    After this run dir's supervisord was killed (``killed``: its pid file left behind, nobody
    answering), a port still held is waited for first, up to a stop's own limit: its programs
    stop by themselves (launch.py), gracefully, and an ``up`` right after the kill finds them
    finishing their requests and deliveries."""
    busy = [(f"{replica.name}: port {port}", host.strip("[]"), int(port),
             f"choose another {replica.service.upper()}_HTTP_PORT")
            for replica in wanted if replica.name not in kept
            for host, port in [replica.address.rsplit(":", 1)]]
    if GATEWAY not in kept:
        busy.append((f"gateway: port {env['GATEWAY_PORT']}", "127.0.0.1",
                     int(env["GATEWAY_PORT"]), "choose another GATEWAY_PORT"))
    deadline = time.monotonic() + (PORT_WAIT_SECONDS if killed else 0)
    for what, host, port, hint in busy:
        if killed and _port_busy(host, port):
            say(f"{what} is still taken: waiting up to {PORT_WAIT_SECONDS} s for the programs "
                "of this run dir's killed supervisord to stop")
        while _port_busy(host, port):
            if time.monotonic() >= deadline:
                left = (" (a program of this run dir's killed supervisord that does not stop?)"
                        if killed else "")
                raise StackError(f"{what} is taken by a process this run dir's supervisord "
                                 f"does not keep{left}; stop it or {hint}")
            time.sleep(0.5)


def up(env: Mapping[str, str] | None = None, run_dir: str | os.PathLike[str] | None = None, *,
       timeout: float = 60.0) -> None:
    """Start whatever is not running yet and return once every replica is ready.

    Replicas beyond the number asked for (``<SERVICE>_REPLICAS`` went down) are stopped once the
    gateway no longer sends them requests.
    """
    full = stack_env(env)
    check_gateway_settings(full)
    path = resolve_run_dir(run_dir or full.get("SAGA_RUN_DIR"))
    (path / "logs").mkdir(parents=True, exist_ok=True)
    ensure_keys(full, path)
    wanted = [replica for service in ALL_SERVICES for replica in replicas(service, full)]
    prepare(full)
    kept = {name: info for name, info in processes.processes(path).items()
            if info["statename"] in processes.ALIVE}
    # supervisord removes its pid file when it stops; left behind with nobody answering, it
    # was killed, and its programs may still be stopping.
    killed = rpc(path) is None and (path / processes.PID_FILE).exists()
    _refuse_taken_ports(full, wanted, kept, killed=killed)
    changed = gateway.write_config(full, path / "nginx")
    surplus = processes.apply(path, _programs(full, path, wanted))
    if changed and GATEWAY in kept:
        processes.send_signal(path, GATEWAY, "HUP")  # nginx re-reads its config, no request dropped
        say("gateway: config changed, reloaded")
    (path / "stack.json").write_text(json.dumps({
        "gateway_port": int(full["GATEWAY_PORT"]),
        "replicas": {replica.name: replica.address for replica in wanted},
    }))
    processes.stop(path, surplus)
    wait_ready(full["GATEWAY_PORT"], run_dir=path, replicas=wanted, timeout=timeout)
    say(f"all ready: http://127.0.0.1:{full['GATEWAY_PORT']}/")
    if full.get("IDENTITY_SEED_DEV_ACCOUNTS", "true").lower() not in ("0", "false", "no"):
        say("development accounts (README.md, \"Accounts\"): ana@example.com / "
            "ana-dev-password, bob@example.com / bob-dev-password; operator client "
            "ops-console / ops-dev-secret")


def down(run_dir: str | os.PathLike[str] | None = None) -> None:
    """Stop every program of this run dir, then its supervisord: nothing is left running."""
    path = resolve_run_dir(run_dir)
    if not processes.shutdown(path):
        say(f"nothing running from {path}")
    if legacy := sorted(f.name for f in path.glob("*.pid") if PROCESS_NAME.fullmatch(f.stem)):
        say(f"pid files of the runner before supervisord in {path}: {', '.join(legacy)}; "
            "stop those processes by hand (kill -- -<pid>), then delete the files")


def status(run_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Each process: its pid, supervisord's state of it, and whether it answers ready.

    The gateway answers at its /health, a replica at its own address (the gateway would answer
    for whichever replica it picked).
    """
    path = resolve_run_dir(run_dir)
    try:
        stack = json.loads((path / "stack.json").read_text())
    except (OSError, ValueError):
        stack = {}
    port = stack.get("gateway_port") or os.environ.get("GATEWAY_PORT") \
        or RUNNER_DEFAULTS["GATEWAY_PORT"]
    addresses: dict[str, str] = stack.get("replicas", {})
    kept = processes.processes(path)
    rows = []
    for name in sorted({GATEWAY, *ALL_SERVICES, *addresses, *kept}, key=process_sort_key):
        info = kept.get(name, {})
        alive = info.get("statename") in processes.ALIVE
        url = f"http://127.0.0.1:{port}/health" if name == GATEWAY \
            else f"http://{addresses.get(name, '-')}/health/ready"
        rows.append({"name": name, "pid": info.get("pid") or None, "alive": alive,
                     "state": info.get("statename", "-"),
                     "ready": alive and name in (GATEWAY, *addresses) and http_status(url) == 200})
    return rows


def _print_logs(run_dir: Path, names: list[str], lines: int | None) -> None:
    files = [processes.log_file(run_dir, name) for name in names]
    files = [file for file in files if file.exists()]
    if not files:
        raise StackError(f"no logs in {run_dir / 'logs'}")
    if lines is None:
        os.execvp("tail", ["tail", "-n", "20", "-F", *map(str, files)])
    for file in files:
        print(f"==> {file} <==")
        print(processes.log_tail(run_dir, file.stem, lines))


def main(argv: list[str] | None = None, description: str = "") -> int:
    parser = argparse.ArgumentParser(prog="native.py", description=description)
    parser.add_argument("--run-dir", help="default: $SAGA_RUN_DIR, else .run at the repo root")
    commands = parser.add_subparsers(dest="command", required=True)
    up_cmd = commands.add_parser("up", help="start what is missing, wait until all are ready")
    up_cmd.add_argument("--timeout", type=float, default=60.0)
    commands.add_parser("prepare", help="only create the databases, roles and vhost")
    commands.add_parser("down", help="stop everything this run dir started")
    commands.add_parser("status", aliases=["ps"], help="pid, state and ready of each process")
    logs_cmd = commands.add_parser("logs", help="follow the logs (or print the last --lines)")
    logs_cmd.add_argument("names", nargs="*",
                          help=f"any of {GATEWAY}, {', '.join(ALL_SERVICES)}, or a "
                               "replica: order-2")
    logs_cmd.add_argument("--lines", "-n", type=int)
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            up(None, args.run_dir, timeout=args.timeout)
        elif args.command == "prepare":
            prepare()
        elif args.command == "down":
            down(args.run_dir)
        elif args.command in ("status", "ps"):
            print(f"{'NAME':<14} {'PID':>8}  {'STATE':<9} {'ALIVE':<6} READY")
            for row in status(args.run_dir):
                print(f"{row['name']:<14} {row['pid'] or '-':>8}  {row['state']:<9} "
                      f"{row['alive']!s:<6} {row['ready']}")
        else:
            path = resolve_run_dir(args.run_dir)
            logged = [f.stem for f in (path / "logs").glob("*.log")
                      if PROCESS_NAME.fullmatch(f.stem)]
            names = args.names or sorted({GATEWAY, *ALL_SERVICES, *logged},
                                         key=process_sort_key)
            if unknown := [name for name in names if not PROCESS_NAME.fullmatch(name)]:
                parser.error(f"unknown process: {', '.join(sorted(unknown))}")
            _print_logs(path, names, args.lines)
    except StackError as exc:
        print(f"native: {exc}", file=sys.stderr)
        if args.command == "up":
            print("native: `make down` (or `deploy/native.py down`) stops what did start",
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
