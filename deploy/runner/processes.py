"""The processes of a native stack, kept by one supervisord per run dir.

Why supervisor (``supervisor==4.3.0``, pinned in pyproject.toml's ``native`` extra): it is the
long-kept Unix process supervisor (since 2004, still released), pure Python, so it comes with
the virtualenv as everything else and needs no root, no systemd and no Docker. It does what the
runner used to do by hand (pid files, start times read from /proc, process groups, signals) and
what it did not do at all: restart a process that dies. One ``supervisord`` per run dir, with a
generated ``supervisord.conf`` (one program per replica, and nginx), is driven over its
documented XML-RPC API on a unix socket in the run dir; the standard library's
``xmlrpc.client`` speaks it, so ``down`` and ``status`` need nothing installed.

Restart policy, as compose's ``restart: unless-stopped``: a program that dies is started again
at once (``autorestart=true``); one that dies within ``startsecs`` of its start is retried after
1 s, 2 s, 3 s ... (supervisord's BACKOFF) up to ``startretries`` times, then left FATAL until the
next ``up``. ``down`` (or a test's stop) is the only way a program stays stopped.

Each program runs ``deploy/runner/launch.py`` with a JSON file of its argv and environment
(``env/<name>.json``, mode 0600): no quoting of values through supervisord's config; it writes
the program's output straight to ``logs/<name>.log``, each start under the start mark
``log_tail(this_run=True)`` cuts at.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.runner.config import REPO_ROOT, StackError, process_sort_key, say
from deploy.runner.control import rpc, socket_path

START_MARK = "native: starting"  # launch.py writes it, log_tail cuts at it
LAUNCHER = Path(__file__).resolve().with_name("launch.py")
CONFIG = "supervisord.conf"
PID_FILE = "supervisord.pid"  # in the run dir; launch.py reads it too
# Restart policy (module docstring): alive this long counts as started; retries before FATAL.
START_SECONDS = 2
START_RETRIES = 20
# Past a graceful stop's own limits (sagakit.runtime.STOP_REPORT_SECONDS): a hung one is killed.
STOP_WAIT_SECONDS = 60
# supervisord's process states (supervisor.states.ProcessStates) the runner tells apart.
ALIVE = {"STARTING", "RUNNING"}
FAILED = {"BACKOFF", "FATAL", "EXITED", "UNKNOWN"}


@dataclass(frozen=True)
class Program:
    """One process supervisord keeps: a replica or the gateway."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(repr=False)
    priority: int = 500  # lower starts first and stops last
    # The variables its settings class reads: :func:`apply` restarts it when one changed. None
    # for the gateway, whose config is rendered from the environment and re-read on a signal.
    watched: frozenset[str] | None = None
    # Where it answers ready: a restart waits for it before the next program's.
    ready_url: str | None = None


def log_file(run_dir: Path, name: str) -> Path:
    return run_dir / "logs" / f"{name}.log"


def log_tail(run_dir: Path, name: str, lines: int = 40, *, this_run: bool = False) -> str:
    """The last `lines` of a log; with `this_run`, none from before the latest start."""
    try:
        text = log_file(run_dir, name).read_bytes()[-200_000:].decode(errors="replace")
    except OSError:
        return f"(no log for {name})"
    if this_run and (mark := text.rfind(START_MARK)) >= 0:
        text = text[text.rfind("\n", 0, mark) + 1 :]
    return "\n".join(text.splitlines()[-lines:])


def processes(run_dir: Path) -> dict[str, dict[str, Any]]:
    """supervisord's view of each program (state ``statename``, ``pid``...), gateway first."""
    proxy = rpc(run_dir)
    if proxy is None:
        return {}
    infos = {info["name"]: info for info in proxy.supervisor.getAllProcessInfo()}
    return {name: infos[name] for name in sorted(infos, key=process_sort_key)}


def recorded(run_dir: Path) -> list[str]:
    """Every program this run dir's supervisord keeps (running or not), gateway first."""
    return list(processes(run_dir))


def read_pid(run_dir: Path, name: str) -> int | None:
    """The pid of `name` while supervisord has it starting or running, else None."""
    proxy = rpc(run_dir)
    if proxy is None:
        return None
    try:
        info = proxy.supervisor.getProcessInfo(name)
    except xmlrpc.client.Fault:  # BAD_NAME: not a program of this run dir
        return None
    return int(info["pid"]) if info["statename"] in ALIVE and info["pid"] else None


# --- The config and its programs ----------------------------------------------------------------


def _value(text: str | Path) -> str:
    """A value in supervisord's config, where %(name)s expands: % doubled."""
    return str(text).replace("%", "%%")


def _program_section(run_dir: Path, program: Program) -> str:
    env_file = run_dir / "env" / f"{program.name}.json"
    command = " ".join(json.dumps(str(part)) for part in (sys.executable, LAUNCHER, env_file))
    return (f"[program:{program.name}]\n"
            f"command={_value(command)}\n"
            f"directory={_value(REPO_ROOT)}\n"
            f"priority={program.priority}\n"
            "autostart=true\nautorestart=true\n"
            f"startsecs={START_SECONDS}\nstartretries={START_RETRIES}\n"
            f"stopsignal=TERM\nstopwaitsecs={STOP_WAIT_SECONDS}\n"
            "stopasgroup=true\nkillasgroup=true\n"
            "redirect_stderr=true\n"
            f"stdout_logfile={_value(log_file(run_dir, program.name))}\n"
            "stdout_logfile_maxbytes=0\nstdout_logfile_backups=0\n")


def write_config(run_dir: Path, programs: Iterable[Program]) -> Path:
    """supervisord.conf for these programs, and each one's env file."""
    (run_dir / "env").mkdir(mode=0o700, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    sections = []
    for program in programs:
        env_file = run_dir / "env" / f"{program.name}.json"
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"argv": list(program.argv), "env": dict(program.env),
                       "log": str(log_file(run_dir, program.name)), "mark": START_MARK}, out)
        sections.append(_program_section(run_dir, program))
    sock = socket_path(run_dir)
    config = run_dir / CONFIG
    config.write_text(
        "; Written by deploy/native.py (deploy/runner/processes.py) for this run dir.\n"
        f"[unix_http_server]\nfile={_value(sock)}\nchmod=0700\n\n"
        f"[supervisord]\nlogfile={_value(log_file(run_dir, 'supervisord'))}\n"
        "logfile_maxbytes=10MB\nlogfile_backups=1\n"
        f"pidfile={_value(run_dir / PID_FILE)}\n"
        f"childlogdir={_value(run_dir / 'logs')}\ndirectory={_value(REPO_ROOT)}\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl=unix://{_value(sock)}\n\n"
        + "\n".join(sections))
    return config


def _start_supervisord(run_dir: Path, config: Path, timeout: float = 20.0) -> Any:
    socket_path(run_dir).unlink(missing_ok=True)  # a stale one from a supervisord long gone
    supervisord = Path(sys.executable).with_name("supervisord")
    argv = [str(supervisord)] if supervisord.exists() \
        else [sys.executable, "-m", "supervisor.supervisord"]
    # supervisord daemonizes: this returns once it has forked, errors in its config before.
    done = subprocess.run([*argv, "-c", str(config)], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise StackError(f"supervisord did not start:\n{done.stdout}{done.stderr}")
    deadline = time.monotonic() + timeout
    while (proxy := rpc(run_dir)) is None:
        if time.monotonic() > deadline:
            raise StackError(f"supervisord did not answer on {socket_path(run_dir)} within "
                             f"{timeout:.0f}s; see {log_file(run_dir, 'supervisord')}")
        time.sleep(0.1)
    say(f"supervisord: started (pid {proxy.supervisor.getPID()}), config {config}")
    return proxy


def _settings(env: Mapping[str, str] | None, watched: Collection[str]) -> dict[str, str]:
    """What of ``env`` a program's behaviour depends on: the ``watched`` names (its settings)
    and the OpenTelemetry SDK's own variables, leaving out the rest of the caller's shell
    (PATH, MAKEFLAGS ...), which differs from one ``up`` to the next."""
    return {k: v for k, v in (env or {}).items() if k in watched or k.startswith("OTEL_")}


def _env_file_of(run_dir: Path, name: str) -> dict[str, str] | None:
    try:
        env: dict[str, str] = json.loads((run_dir / "env" / f"{name}.json").read_text())["env"]
    except (OSError, ValueError, KeyError):
        return None
    return env


def _environ_of(pid: int) -> dict[str, str] | None:
    """The environment a running process has (launch.py ``exec``s the program with its env
    file's): what it really runs with, whatever an interrupted ``up`` left in the files."""
    try:
        if LAUNCHER.name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None  # the launcher itself, not exec'd into the program yet: its env file
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def _wait_until_ready(url: str, timeout: float = 60.0) -> None:
    from deploy.runner.health import http_status  # health imports this module

    deadline = time.monotonic() + timeout
    while http_status(url) != 200 and time.monotonic() < deadline:
        time.sleep(0.25)


def apply(run_dir: Path, programs: Sequence[Program]) -> list[str]:
    """Make supervisord keep exactly `programs` and start each one not running.

    A running program whose settings (its ``watched`` names) differ from those it runs with is
    restarted with the new ones, as compose recreates a container whose environment changed:
    every replica of a service runs one configuration, and a later ``up`` without an override
    takes it away again, in both modes. One at a time, each restart waiting until the program
    answers ready, so a service with replicas keeps one answering.

    Starts this run dir's supervisord if none runs. Returns the programs it keeps but that are no
    longer wanted, still running: the caller stops them (:func:`stop`) once nothing sends them
    requests.
    """
    # Where /proc cannot tell (not Linux), what the env files said before they are rewritten.
    in_files = {p.name: _env_file_of(run_dir, p.name) for p in programs}
    config = write_config(run_dir, programs)
    proxy = rpc(run_dir)
    fresh: set[str]  # started by this call: nothing to compare
    if proxy is None:
        proxy = _start_supervisord(run_dir, config)
        surplus: list[str] = []
        fresh = {p.name for p in programs}
    else:
        [[added, changed, removed]] = proxy.supervisor.reloadConfig()
        fresh = {*added, *changed}
        for name in changed:  # its section changed (another run dir layout): restart it
            proxy.supervisor.stopProcessGroup(name)
            proxy.supervisor.removeProcessGroup(name)
            added.append(name)
        for name in added:
            proxy.supervisor.addProcessGroup(name)
        surplus = list(removed)
    for program in programs:
        info = proxy.supervisor.getProcessInfo(program.name)
        differ: list[str] = []
        if info["statename"] in ALIVE and program.watched is not None \
                and program.name not in fresh:
            running = _environ_of(info["pid"]) if info["pid"] else None
            was = _settings(in_files[program.name] if running is None else running,
                            program.watched)
            now = _settings(program.env, program.watched)
            differ = sorted(k for k in {*now, *was} if now.get(k) != was.get(k))
        if differ:
            say(f"{program.name}: settings changed ({', '.join(differ)}): restarting")
            with contextlib.suppress(xmlrpc.client.Fault):  # it stopped by itself meanwhile
                proxy.supervisor.stopProcess(program.name)
            try:
                proxy.supervisor.startProcess(program.name, True)
            except xmlrpc.client.Fault:  # it did not start: the caller's wait_ready says why
                continue
            if program.ready_url:
                _wait_until_ready(program.ready_url)
        elif info["statename"] in {*ALIVE, "BACKOFF", "STOPPING"}:  # kept by supervisord
            say(f"{program.name}: {info['statename'].lower()} (pid {info['pid'] or '-'})")
        else:
            proxy.supervisor.startProcess(program.name, False)
            say(f"{program.name}: starting, log {log_file(run_dir, program.name)}")
    return surplus


def send_signal(run_dir: Path, name: str, signame: str) -> None:
    proxy = rpc(run_dir)
    if proxy is not None:
        proxy.supervisor.signalProcess(name, signame)


def stop(run_dir: Path, names: Iterable[str]) -> None:
    """Stop programs (SIGTERM to the group, SIGKILL after STOP_WAIT_SECONDS) and forget them."""
    proxy = rpc(run_dir)
    if proxy is None:
        return
    for name in names:
        try:
            proxy.supervisor.stopProcessGroup(name)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString and "BAD_NAME" not in fault.faultString:
                raise
        proxy.supervisor.removeProcessGroup(name)
        say(f"{name}: stopped")


def shutdown(run_dir: Path, timeout: float = 30.0) -> bool:
    """Stop every program at once (SIGTERM to each group; supervisord sends SIGKILL after
    STOP_WAIT_SECONDS), then supervisord itself; False when none was running."""
    proxy = rpc(run_dir)
    if proxy is None:
        socket_path(run_dir).unlink(missing_ok=True)
        return False
    pid = proxy.supervisor.getPID()
    running = [info["name"] for info in proxy.supervisor.getAllProcessInfo()
               if info["statename"] in {*ALIVE, "STOPPING"}]
    proxy.supervisor.stopAllProcesses(False)  # all signalled now, not one after the other
    deadline = time.monotonic() + STOP_WAIT_SECONDS + 10
    while any(info["statename"] in {*ALIVE, "STOPPING"}
              for info in proxy.supervisor.getAllProcessInfo()):
        if time.monotonic() > deadline:
            raise StackError(f"programs of {run_dir} did not stop; see {run_dir / 'logs'}")
        time.sleep(0.1)
    for name in running:
        say(f"{name}: stopped")
    proxy.supervisor.shutdown()
    deadline = time.monotonic() + timeout
    while _exists(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    say(f"supervisord: stopped (pid {pid})")
    return True


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
