"""What supervisord runs for each program: ``launch.py ENV_FILE``.

ENV_FILE (written by processes.write_config) holds the program's argv, its whole environment and
its log file. This points stdout and stderr straight at that file (appending, as supervisord's
own copy of anything said before does): a service's log write never waits on supervisord, and
survives it. Then it marks the start in the log and replaces itself with the program, so the
pid supervisord watches is the program's own.

If supervisord itself dies (SIGKILL, out of memory), its programs are told to stop (SIGTERM,
as ``down`` sends them: the services stop gracefully, nginx at once) instead of running on
unwatched, holding their ports, so ``make up`` afterwards starts a whole stack again. Linux's
parent-death signal does it (``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``); supervisord has
no such option, and a container runtime gives its containers the same end. It reaches the
program itself, not children it starts: a ``SAGA_SERVICE_CMD_<SERVICE>`` wrapper should
``exec`` it. A launcher whose supervisord died before the signal was set exits at once.
Standard library only, and no import of the package: it runs as a plain script.
"""

import ctypes
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# supervisord's pid file in the run dir (processes.write_config), ENV_FILE being run_dir/env/x
PID_FILE = Path(sys.argv[1]).resolve().parents[1] / "supervisord.pid"

if sys.platform.startswith("linux"):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:  # e.g. refused by seccomp
        print(f"launch.py: prctl(PR_SET_PDEATHSIG) failed ({os.strerror(ctypes.get_errno())}): "
              "this program outlives a killed supervisord", file=sys.stderr)
    else:
        # Did supervisord die before the signal was set (since the fork)? Then this process
        # has another parent already (init) than the pid supervisord wrote before starting
        # any program, and the signal will never come.
        supervisord: int | None
        try:
            supervisord = int(PID_FILE.read_text())
        except (OSError, ValueError):
            supervisord = None  # cannot tell: go on
        if supervisord is not None and os.getppid() != supervisord:
            sys.exit(f"launch.py: supervisord (pid {supervisord}) is gone; not starting")

with Path(sys.argv[1]).open(encoding="utf-8") as spec_file:
    spec = json.load(spec_file)
log = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.dup2(log, 1)
os.dup2(log, 2)
os.close(log)
stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
print(f"--- {stamp} {spec['mark']} {shlex.join(spec['argv'])}", flush=True)
os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
