"""The core installs and imports without the extras; each feature names its extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: Runs with opentelemetry, prometheus-client, hypercorn and h11 hidden, as in an
#: environment where only the core was installed.
WITHOUT_EXTRAS = textwrap.dedent(
    """
    import importlib.abc
    import sys

    HIDDEN = {"opentelemetry", "prometheus_client", "hypercorn", "h11"}


    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, Hide())

    import trio

    import trioevents
    import trioevents.cli
    import trioevents.testing
    from trioevents import ConfigurationError, ServiceHost, event_handler

    got = []


    class Sink:
        name = "sink"

        @event_handler("src", "ping")
        async def ping(self, payload):
            got.append(payload)


    async def main():
        host = ServiceHost([Sink], {"AMQP_URI": "memory://extras"})
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve)
            async with host.dispatcher() as dispatch:
                await dispatch("src", "ping", {"n": 1})
            while not got:
                await trio.sleep(0.01)
            await host.stop()
        assert got == [{"n": 1}]
        try:
            await ServiceHost([Sink], {"HTTP_ADDRESS": ":9100"}).serve()
        except ConfigurationError as exc:
            print("HTTP:", exc)


    trio.run(main)
    for module in ("trioevents.otel", "trioevents.prometheus"):
        try:
            __import__(module)
        except ImportError as exc:
            print(module + ":", exc)
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in HIDDEN)
    print("loaded:", loaded)
    """
)


def test_the_core_runs_without_any_extra_and_features_name_theirs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines["loaded"] == "[]"
    assert lines["HTTP"].startswith(
        "HTTP_ADDRESS needs the 'http' extra: pip install 'trioevents[http]' "
    )
    assert lines["trioevents.otel"].startswith(
        "trioevents.otel needs the 'otel' extra: pip install 'trioevents[otel]' "
    )
    assert lines["trioevents.prometheus"].startswith(
        "trioevents.prometheus needs the 'prometheus' extra: "
        "pip install 'trioevents[prometheus]' "
    )
