"""`make demo` (deploy/demo.py) against the test stack: four orders, four outcomes, each
timeline streamed and each with its trace and logs links."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.e2e.conftest import REPO
from tests.stacks import Stack


def test_the_demo_shows_each_outcome_live_with_its_links(stack: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run([sys.executable, "-m", "deploy.demo", "--gateway", stack.base_url],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
                          check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "4 of 4 orders ended as expected" in out
    outcomes = re.findall(r"outcome (\w+): (\w+)", out)
    assert outcomes == [("finished", "finished"), ("declined", "cancelled"),
                        ("refunded", "refunded"), ("cancelled", "refunded")], out
    assert "card_declined" in out and "out of stock" in out and "by the customer" in out
    # Each status as it streamed in, in saga order, for the happy path.
    first = out.split("2/4")[0]
    assert re.findall(r"s  (\w+)", first) == [
        "pending_payment", "paid", "received", "in_production", "finished"], first
    assert len(re.findall(r"trace   \S+/trace/[0-9a-f]{32}", out)) == 4
    assert len(re.findall(r"logs    \S+", out)) == 4
