"""Run one scenario once, in this process, and print its result as one JSON line.

``python benchmarks/_child.py SCENARIO '{"uri": ..., ...}'``

:mod:`run` starts one of these per scenario run, so that every run starts from a
fresh interpreter and ``peak_rss_mib`` (``ru_maxrss``) is that run's own peak.
A ``uri`` of ``"memory"`` means a fresh embedded broker. ``baseline_rss_mib``
is the RSS after the imports, before the scenario started.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final

import _end_to_end
import _latency
import _soak
import _transport_rates
import trio
from _common import current_rss_mib, memory_uri, peak_rss_mib

Scenario = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

SCENARIOS: Final[dict[str, Scenario]] = {
    "publish": _transport_rates.publish,
    "publish_no_confirm": _transport_rates.publish_no_confirm,
    "consume_ack": _transport_rates.consume_ack,
    "end_to_end": _end_to_end.run,
    "latency": _latency.run,
    "soak": _soak.run,
}

#: What marks the result line on stdout.
RESULT_PREFIX: Final = "RESULT "


def run_scenario(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run scenario *name* with *params*; add this process's peak RSS."""
    if params.get("uri") == "memory":
        params = {**params, "uri": memory_uri()}
    baseline = current_rss_mib()
    result = trio.run(SCENARIOS[name], params)
    result.setdefault("peak_rss_mib", peak_rss_mib())
    result["baseline_rss_mib"] = baseline
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in SCENARIOS:
        print(
            f"usage: _child.py {{{','.join(SCENARIOS)}}} JSON-PARAMS", file=sys.stderr
        )
        return 2
    result = run_scenario(argv[0], json.loads(argv[1]))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
