"""What supervisord runs for each program: ``launch.py ENV_FILE``.

ENV_FILE (written by processes.write_config) holds the program's argv, its whole environment and
its log file. This points stdout and stderr straight at that file (appending, as supervisord's
own copy of anything said before does): a service's log write never waits on supervisord, and
survives it. Then it marks the start in the log and replaces itself with the program, so the
pid supervisord watches is the program's own.
Standard library only, and no import of the package: it runs as a plain script.
"""

import json
import os
import shlex
import sys
import time
from pathlib import Path

with Path(sys.argv[1]).open(encoding="utf-8") as spec_file:
    spec = json.load(spec_file)
log = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.dup2(log, 1)
os.dup2(log, 2)
os.close(log)
stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
print(f"--- {stamp} {spec['mark']} {shlex.join(spec['argv'])}", flush=True)
os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
