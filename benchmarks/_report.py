"""Turn the suite's results into the printed table and the JSON file.

``python benchmarks/_report.py [--rst] RESULTS.json`` prints a saved run again:
the table, or with ``--rst`` the list-table of ``docs/performance.rst``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from typing import TYPE_CHECKING, Any

from _plan import FIGURES, TARGETS, TRANSPORT_LABELS, TRANSPORTS, Figure, Transport

if TYPE_CHECKING:
    from pathlib import Path

NOT_MEASURED = "n/a"
FAILED = "failed"


def fmt(value: float, unit: str) -> str:
    """Format *value*: rates as whole numbers, milliseconds and MiB with decimals."""
    if math.isnan(value):
        return "?"
    if unit in ("msg/s", "events/s"):
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:.1f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def fmt_summary(summary: dict[str, float], unit: str) -> str:
    """``min / median / max``."""
    return " / ".join(fmt(summary[k], unit) for k in ("min", "median", "max"))


def _cell(
    results: dict[str, Any],
    figure: Figure,
    transport: Transport,
    metric: str,
    unit: str,
) -> str:
    entry = results["figures"].get(figure.key, {}).get(transport)
    if entry is None:
        return NOT_MEASURED
    if entry.get("error"):
        return FAILED
    if metric not in entry["summary"]:
        return NOT_MEASURED
    text = fmt_summary(entry["summary"][metric], unit)
    if figure.scenario == "latency" and not all(r["kept_up"] for r in entry["runs"]):
        text += " *"
    return text


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _transports(results: dict[str, Any]) -> list[Transport]:
    return [t for t in TRANSPORTS if t in results["transports"]]


def render(results: dict[str, Any]) -> str:
    """Return the whole report as text: machine, table, peak RSS, soak, notes."""
    machine = results["machine"]
    lines: list[str] = []
    rabbit = machine.get("rabbitmq")
    versions = (
        f", RabbitMQ {rabbit['rabbitmq']} (Erlang {rabbit['erlang']})" if rabbit else ""
    )
    lines.append(
        f"trioevents {machine['trioevents']} benchmarks, {results['started']}, "
        f"{results['mode']} mode, {results['duration_s']:.0f} s"
    )
    lines.append(
        f"machine: {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['cpu']}, {machine['platform']}"
    )
    lines.append(
        f"software: {machine['python']}, trio {machine['trio']}, pamqp "
        f"{machine['pamqp']}, cattrs {machine['cattrs']}{versions}"
    )
    start_load = " ".join(f"{x:.2f}" for x in machine["load_average"])
    end_load = " ".join(f"{x:.2f}" for x in results["load_average_end"])
    lines.append(f"load average: {start_load} at start, {end_load} at the end")
    for transport, reason in results["skipped"].items():
        lines.append(f"{TRANSPORT_LABELS[transport]} skipped: {reason}")
    lines.append(
        f"each figure: min / median / max over {results['runs']} runs, "
        "each run in a fresh process"
    )
    lines.append("")

    transports = _transports(results)
    figures = [f for f in FIGURES if f.key in results["figures"]]
    header = ["figure", *(TRANSPORT_LABELS[t] for t in transports)]
    rows = [header]
    for figure in figures:
        for index, (metric, template, unit) in enumerate(figure.metrics):
            cells = [_cell(results, figure, t, metric, unit) for t in transports]
            if index and all(c == NOT_MEASURED for c in cells):
                continue  # e.g. the broker's CPU when RabbitMQ was skipped
            label = template.format(figure=figure.label)
            rows.append([f"{label} ({unit})", *cells])
    lines.extend(_table(rows))
    lines.append("")

    rows = [
        ["peak RSS (MiB): median (max)", *(TRANSPORT_LABELS[t] for t in transports)]
    ]
    for figure in figures:
        row = [figure.label]
        for t in transports:
            entry = results["figures"].get(figure.key, {}).get(t)
            if entry is None or entry.get("error"):
                row.append(NOT_MEASURED if entry is None else FAILED)
                continue
            rss = entry["summary"]["peak_rss_mib"]
            row.append(f"{fmt(rss['median'], 'MiB')} ({fmt(rss['max'], 'MiB')})")
        rows.append(row)
    lines.extend(_table(rows))
    baselines = [
        r["baseline_rss_mib"]
        for per in results["figures"].values()
        for entry in per.values()
        for r in entry["runs"]
    ]
    if baselines:
        lines.append(
            "(a fresh process with trioevents imported, before the scenario: "
            f"{statistics.median(baselines):.1f} MiB)"
        )
    lines.append("")

    lines.extend(_overhead(results, figures, transports))

    for t in transports:
        entry = results["figures"].get("end_to_end_10", {}).get(t)
        if entry is None or entry.get("error"):
            continue
        median = entry["summary"]["rate"]["median"]
        verdict = "met" if median >= TARGETS[t] else "NOT met"
        lines.append(
            f"target {TRANSPORT_LABELS[t]} end-to-end >= {TARGETS[t]:,.0f} events/s: "
            f"{verdict} (median {median:,.0f} with 10 dispatchers)"
        )

    soak = results.get("soak")
    if soak is not None:
        lines.append("")
        if soak.get("error"):
            lines.append(f"soak: failed: {soak['error']}")
        else:
            lines.append(
                f"soak: {soak['events']:,} events through a ServiceHost on memory:// "
                f"in {soak['seconds']:.1f} s, {soak['rate']:,.0f} events/s "
                f"(per {soak['sample_every']:,}: {soak['segment_rate_min']:,.0f} / "
                f"{soak['segment_rate_median']:,.0f} / "
                f"{soak['segment_rate_max']:,.0f})"
            )
            samples = ", ".join(f"{s['rss_mib']:.1f}" for s in soak["samples"])
            lines.append(
                f"  RSS every {soak['sample_every']:,} events (MiB): {samples}"
            )
            lines.append(
                f"  after warm-up {soak['rss_first_mib']:.1f} MiB, last "
                f"{soak['rss_last_mib']:.1f}, max {soak['rss_max_mib']:.1f}: growth "
                f"{soak['rss_growth_mib']:+.1f} MiB (flat: <= "
                f"{soak['flat_threshold_mib']:g} MiB and GC-tracked objects "
                f"{soak['gc_objects_growth']:+.2%}, <= +1%): "
                + ("memory stays flat" if soak["flat"] else "memory GROWS")
            )

    notes = []
    for figure in figures:
        if figure.scenario != "latency":
            continue
        for t in transports:
            entry = results["figures"].get(figure.key, {}).get(t)
            if entry is None or entry.get("error"):
                continue
            behind = [r for r in entry["runs"] if not r["kept_up"]]
            lag = max(r["pacer_lag_max"] for r in entry["runs"])
            achieved = min(r["achieved_rate"] for r in entry["runs"])
            note = (
                f"{figure.label} on {TRANSPORT_LABELS[t]}: pacer achieved >= "
                f"{achieved:,.0f}/s, started dispatches at most {lag:.1f} ms late"
            )
            if behind:
                note = "* " + note + f"; could NOT keep up in {len(behind)} run(s)"
            notes.append(note)
    for t in transports:
        entry = results["figures"].get("end_to_end_10", {}).get(t)
        if entry is not None and not entry.get("error"):
            backlog = max(r["max_backlog"] for r in entry["runs"])
            notes.append(
                f"end-to-end, 10 dispatchers on {TRANSPORT_LABELS[t]}: up to "
                f"{backlog:,} events were queued ahead of the handler"
            )
    failures = [
        f"{figure_key} on {t}: {entry['error']}"
        for figure_key, per in results["figures"].items()
        for t, entry in per.items()
        if entry.get("error")
    ]
    notes.extend(
        f"{figure_key} on {t}: one run failed and was retried: {error}"
        for figure_key, per in results["figures"].items()
        for t, entry in per.items()
        for error in entry.get("retried_after", [])
    )
    if notes:
        lines.append("")
        lines.extend(notes)
    if failures:
        lines.append("")
        lines.append("FAILED:")
        lines.extend(f"  {f}" for f in failures)
    return "\n".join(lines)


def paired_ratios(
    results: dict[str, Any], figure: Figure, transport: Transport, metric: str
) -> list[float]:
    """*metric* of each run of *figure* over its baseline's run of the same round.

    Runs go round-robin, so run *i* of both ran minutes apart at most: a ratio
    per round cancels most of the machine's drift.
    """
    if figure.baseline is None:
        return []
    per = results["figures"]
    entry = per.get(figure.key, {}).get(transport)
    base = per.get(figure.baseline, {}).get(transport)
    if not entry or not base or entry.get("error") or base.get("error"):
        return []
    return [
        run[metric] / other[metric]
        for run, other in zip(entry["runs"], base["runs"], strict=False)
        if run.get(metric) and other.get(metric)
    ]


def _overhead(
    results: dict[str, Any], figures: list[Figure], transports: list[Transport]
) -> list[str]:
    """The overhead table: each figure against its baseline, run for run."""
    compared = [f for f in figures if f.baseline in results["figures"]]
    if not compared:
        return []
    rows = [
        [
            "overhead: median (min-max) of paired ratios",
            *(TRANSPORT_LABELS[t] for t in transports),
        ]
    ]
    for figure in compared:
        for metric, what in (("rate", "events/s"), ("cpu_us", "CPU per event")):
            cells = []
            for t in transports:
                ratios = paired_ratios(results, figure, t, metric)
                cells.append(
                    f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
                    if ratios
                    else NOT_MEASURED
                )
            rows.append([f"{figure.label}, {what}", *cells])
    return ["", *_table(rows), "(against the figure with no observer at all)", ""]


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write *results* to *path* as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def _median(
    results: dict[str, Any], key: str, transport: Transport, metric: str
) -> float | None:
    entry = results["figures"].get(key, {}).get(transport)
    if entry is None or entry.get("error") or metric not in entry["summary"]:
        return None
    value: float = entry["summary"][metric]["median"]
    return value


def render_rst(results: dict[str, Any]) -> str:
    """Return the results as the reST list-table of ``docs/performance.rst``.

    Rates are min / median / max; the CPU rows and the latency rows give medians.
    """
    transports = _transports(results)
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 50" + " 25" * len(transports),
        "",
        "   * - figure",
        *(
            f"     - {'``memory://``' if t == 'memory' else TRANSPORT_LABELS[t]}"
            for t in transports
        ),
    ]
    for figure in FIGURES:
        if figure.key not in results["figures"]:
            continue
        if figure.scenario == "latency":
            keys = [m for m, _, _ in figure.metrics]
            lines.append(f"   * - {figure.label}, {' / '.join(keys)} (ms)")
            for t in transports:
                values = [_median(results, figure.key, t, k) for k in keys]
                lines.append(
                    "     - "
                    + (
                        NOT_MEASURED
                        if None in values
                        else " / ".join(fmt(v, "ms") for v in values if v is not None)
                    )
                )
            continue
        metric, _, unit = figure.metrics[0]
        lines.append(f"   * - {figure.label} ({unit})")
        lines.extend(
            f"     - {_cell(results, figure, t, metric, unit)}" for t in transports
        )
        if len(figure.metrics) > 1:
            lines.append("   * - … CPU per event, client / broker (µs)")
            for t in transports:
                client = _median(results, figure.key, t, "cpu_us")
                broker = _median(results, figure.key, t, "broker_cpu_us")
                lines.append(
                    "     - "
                    + " / ".join(
                        "—" if v is None else f"{v:.0f}" for v in (client, broker)
                    )
                )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python benchmarks/_report.py [--rst] RESULTS.json``: print a saved run."""
    rst = "--rst" in argv
    paths = [a for a in argv if a != "--rst"]
    if len(paths) != 1:
        print("usage: _report.py [--rst] RESULTS.json", file=sys.stderr)
        return 2
    with open(paths[0], encoding="utf-8") as file:
        results = json.load(file)
    print(render_rst(results) if rst else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
