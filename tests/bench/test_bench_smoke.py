"""The benchmark tool, run small against the e2e stack, so it never rots.

A few seconds of load: every field of the report is there, every order ends in the status its
kind must reach, nothing failed, and the efficiency against the raw ceiling is computed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.__main__ import arguments, run
from bench.report import write
from deploy.native import amqp_vhost
from tests.conftest import Infra
from tests.e2e.conftest import RUN_DIR
from tests.stacks import Stack

pytestmark = pytest.mark.e2e

FIELDS = {"started_at", "parameters", "machine", "orders", "accepted_per_s", "completed_per_s",
          "http_latency_ms", "saga", "errors", "error_count", "cpu", "ceiling", "efficiency",
          "seconds"}


def test_a_small_run_reports_every_figure(stack: Stack, infra: Infra, tmp_path: Path) -> None:
    # The ceiling's own vhost, named after the stack's so side-by-side sessions never share it,
    # made fresh where the broker is (this machine's rabbitmqctl, or inside the testcontainer).
    ceiling_url = infra.fresh_vhost(f"{amqp_vhost(stack.rabbitmq_url)}_raw")
    args: argparse.Namespace = arguments([
        "--url", stack.base_url, "--run-dir", str(RUN_DIR),
        "--orders", "30", "--concurrency", "4", "--duration", "10", "--drain-timeout", "30",
        "--mix", "approve=3,decline=1,out_of_stock=1", "--ceiling-sagas", "100",
        "--ceiling-faststream",
        "--ceiling-vhost", "",
        "--out", str(tmp_path), "--quiet",
    ])
    report = run(args, rabbitmq_url=ceiling_url)

    assert report.keys() >= FIELDS
    assert report["error_count"] == 0, report["errors"]
    assert report["orders"]["placed"] == 30
    assert report["orders"]["refused"] == 0  # far below capacity: admission control admits all
    assert report["orders"]["terminal"] == 30
    assert set(report["saga"]["outcomes"]) <= {"finished", "cancelled", "refunded"}
    for key in ("p50", "p95", "p99"):
        assert report["saga"]["latency_ms"][key] is not None
    assert report["http_latency_ms"]["place"]["p99"] is not None
    assert report["ceiling"]["sagas_per_s"] > 0
    assert report["ceiling"]["faststream"]["sagas_per_s"] > 0
    assert report["ceiling"]["faststream"]["relays"] == "faststream"
    assert report["ceiling"]["faststream_ratio"] > 0
    assert report["efficiency"] is not None and report["efficiency"] > 0
    assert {"order", "gateway"} <= report["cpu"]["cpu_seconds"].keys()
    per_saga = report["cpu"]["ms_per_saga"]
    assert per_saga["order"] > 0
    assert per_saga["total"] == pytest.approx(
        sum(v for k, v in per_saga.items() if k != "total"), abs=0.05)
    raw = report["ceiling"]["cpu_ms_per_saga"]
    assert {"order", "payment", "production"} <= raw.keys() and raw["total"] > 0
    assert report["cpu"]["vs_ceiling"] == pytest.approx(per_saga["total"] / raw["total"],
                                                        abs=0.01)

    json_path, _ = write(report, tmp_path)
    assert json.loads(json_path.read_text())["efficiency"] == report["efficiency"]
