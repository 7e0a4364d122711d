"""The trioevents benchmark suite: one command, every figure, both transports.

Usage::

    python benchmarks/run.py [--quick] [--runs N] [--json PATH] [--no-rabbitmq]
                             [--soak-events N] [--only KEY[,KEY...]]

Measures, on the embedded broker (``memory://``) and, if it is reachable, the
local RabbitMQ (a fresh vhost, deleted afterwards): publish rates without and
with confirms, consume + ack, end-to-end events/s of a ServiceHost with 1 and 10
concurrent dispatchers, handler latency at a paced 200 and 2,000 events/s, and
the peak RSS of each; then a soak of 1,000,000 events on the embedded broker
that samples memory. Each figure is min / median / max over ``--runs`` runs
(default 3), each run in a fresh process. Prints a table (stdout; progress goes
to stderr) and writes every raw figure to a JSON file (default
``benchmarks/results.json``). ``--quick`` shrinks every size (a smoke test).

The RabbitMQ used: ``$TRIOEVENTS_AMQP_URI`` (default
``amqp://guest:guest@127.0.0.1:5672/``), with its management API at
``$TRIOEVENTS_RABBIT_API_URI`` (default ``http://guest:guest@127.0.0.1:15672/api/``).
Exit status: 0, or 1 if a scenario failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results.json"
CHILD = HERE / "_child.py"
TIMEOUT = 900.0


class ScenarioFailed(Exception):
    """A scenario process exited with an error or printed no result."""


def run_child(scenario: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run *scenario* once in a fresh interpreter; return its result."""
    from _child import RESULT_PREFIX

    try:
        proc = subprocess.run(
            [sys.executable, str(CHILD), scenario, json.dumps(params)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ScenarioFailed(f"timed out after {timeout:.0f} s") from exc
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX) and proc.returncode == 0:
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise ScenarioFailed(f"exit status {proc.returncode}: {tail}")


def _summarize(metrics: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    from _common import summarize

    summary: dict[str, Any] = {}
    for key in metrics:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            summary[key] = summarize(values)
    return summary


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from _plan import FIGURES

    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Run the trioevents benchmark suite and print a table.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke test, not figures"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per figure (default 3, at least 1)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the results (default {DEFAULT_JSON.relative_to(HERE.parent)})",
    )
    parser.add_argument(
        "--no-rabbitmq", action="store_true", help="measure the embedded broker only"
    )
    parser.add_argument(
        "--soak-events",
        type=int,
        default=None,
        help="events in the soak (default 1,000,000; 50,000 with --quick; 0 skips it)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated figure keys to run: "
        + ", ".join(f.key for f in FIGURES)
        + " (the soak runs unless --soak-events 0)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.soak_events is not None and args.soak_events < 0:
        parser.error("--soak-events must not be negative")
    known = {f.key for f in FIGURES}
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    if only - known:
        parser.error(f"unknown figure(s): {', '.join(sorted(only - known))}")
    args.only = only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("trioevents") is None:
        print("install trioevents first: python -m pip install -e .", file=sys.stderr)
        return 2

    from _common import machine_info
    from _plan import FIGURES, SOAK_EVENTS, SOAK_EVENTS_QUICK, Transport
    from _report import render, write_json

    started = time.perf_counter()
    machine = machine_info()
    machine["rabbitmq"] = None
    transports: list[Transport] = ["memory"]
    skipped: dict[str, str] = {}
    rabbit = None
    if args.no_rabbitmq:
        skipped["rabbitmq"] = "--no-rabbitmq"
    else:
        from _rabbit import DEFAULT_AMQP_URI, DEFAULT_API_URI, RabbitMQ

        rabbit = RabbitMQ(DEFAULT_AMQP_URI, DEFAULT_API_URI)
        problem = rabbit.problem()
        if problem is None:
            machine["rabbitmq"] = rabbit.versions()
            transports.append("rabbitmq")
        else:
            skipped["rabbitmq"] = problem
            rabbit = None
            _progress(f"RabbitMQ skipped: {problem}")

    figures = [f for f in FIGURES if not args.only or f.key in args.only]
    results: dict[str, Any] = {
        "suite": "trioevents benchmarks",
        "format": 1,
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "runs": args.runs,
        "machine": machine,
        "transports": transports,
        "skipped": skipped,
        "figures": {},
        "soak": None,
    }
    failed = False
    with contextlib.ExitStack() as stack:
        uris: dict[str, str] = {"memory": "memory"}
        if rabbit is not None:
            uris["rabbitmq"] = stack.enter_context(rabbit.vhost())
        raw: dict[tuple[str, str], list[dict[str, Any]]] = {}
        errors: dict[tuple[str, str], str] = {}
        retried: dict[tuple[str, str], list[str]] = {}
        # Round-robin: run 1 of every figure, then run 2, ... so that a noisy
        # minute spreads over figures instead of spoiling one.
        for run in range(1, args.runs + 1):
            for figure in figures:
                for transport in transports:
                    params = figure.params(transport, args.quick)
                    key = (figure.key, transport)
                    if params is None or key in errors:
                        continue
                    params = {"uri": uris[transport], **params}
                    t0 = time.perf_counter()
                    try:
                        result = run_child(figure.scenario, params, TIMEOUT)
                    except ScenarioFailed as first:
                        # Once more: a shared broker may have had a hiccup. The
                        # first failure stays on record in the JSON file.
                        _progress(
                            f"[run {run}/{args.runs}] {figure.label} on {transport}: "
                            f"failed ({first}); retrying once"
                        )
                        retried.setdefault(key, []).append(str(first))
                        try:
                            result = run_child(figure.scenario, params, TIMEOUT)
                        except ScenarioFailed as exc:
                            errors[key] = str(exc)
                            failed = True
                            _progress(
                                f"[run {run}/{args.runs}] {figure.label} on "
                                f"{transport}: FAILED {exc}"
                            )
                            continue
                    raw.setdefault(key, []).append(result)
                    metric, _, unit = figure.metrics[0]
                    _progress(
                        f"[run {run}/{args.runs}] {figure.label} on {transport}: "
                        f"{metric} {result[metric]:,.2f} {unit}, peak RSS "
                        f"{result['peak_rss_mib']:.1f} MiB "
                        f"({time.perf_counter() - t0:.1f} s)"
                    )
        for figure in figures:
            per: dict[str, Any] = {}
            for transport in transports:
                params = figure.params(transport, args.quick)
                if params is None:
                    continue
                key = (figure.key, transport)
                runs = raw.get(key, [])
                entry: dict[str, Any] = {
                    "label": figure.label,
                    "scenario": figure.scenario,
                    "params": params,
                    "units": {m: u for m, _, u in figure.metrics},
                    "runs": runs,
                }
                if key in retried:
                    entry["retried_after"] = retried[key]
                if key in errors:
                    entry["error"] = errors[key]
                else:
                    entry["summary"] = _summarize(
                        [m for m, _, _ in figure.metrics] + ["peak_rss_mib"], runs
                    )
                per[transport] = entry
            results["figures"][figure.key] = per

    soak_events = args.soak_events
    if soak_events is None:
        soak_events = SOAK_EVENTS_QUICK if args.quick else SOAK_EVENTS
    if soak_events:
        sample_every = max(1, soak_events // 10)
        _progress(f"soak: {soak_events:,} events on memory:// ...")
        t0 = time.perf_counter()
        try:
            soak = run_child(
                "soak",
                {"uri": "memory", "events": soak_events, "sample_every": sample_every},
                TIMEOUT * 2,
            )
        except ScenarioFailed as exc:
            results["soak"] = {"error": str(exc)}
            failed = True
            _progress(f"soak: FAILED {exc}")
        else:
            soak["sample_every"] = sample_every
            results["soak"] = soak
            _progress(
                f"soak: {soak['rate']:,.0f} events/s, RSS growth "
                f"{soak['rss_growth_mib']:+.1f} MiB ({time.perf_counter() - t0:.1f} s)"
            )

    results["load_average_end"] = list(os.getloadavg())
    results["duration_s"] = time.perf_counter() - started
    write_json(results, args.json)
    print(render(results))
    print(f"\nresults written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
