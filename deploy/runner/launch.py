"""What supervisord runs for each program: ``launch.py ENV_FILE``.

ENV_FILE (written by processes.write_config) holds the program's argv and its whole environment;
this marks the start in the log (stdout, which supervisord appends to the program's log file)
and replaces itself with the program, so the pid supervisord watches is the program's own.
Standard library only, and no import of the package: it runs as a plain script.
"""

import json
import os
import shlex
import sys
import time

with open(sys.argv[1], encoding="utf-8") as spec_file:
    spec = json.load(spec_file)
stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
print(f"--- {stamp} {spec['mark']} {shlex.join(spec['argv'])}", flush=True)
os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
