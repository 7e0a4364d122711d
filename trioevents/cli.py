"""The ``trioevents`` command (also ``python -m trioevents``).

::

    trioevents run MODULE[:Class] ... [--config FILE] [--broker URI]
    trioevents dispatch SERVICE EVENT_TYPE [JSON | -] [--config FILE] [--broker URI]
    trioevents show-config [--config FILE] [--broker URI]

``run`` imports the services (a module means every service class defined in it),
builds one :class:`~trioevents.ServiceHost` and serves until SIGTERM or Ctrl-C,
which stop gracefully; a second one stops at once. ``dispatch`` publishes one
event, or one per line of standard input. ``show-config`` prints the effective
configuration with the password masked.

Exit status: 0 after a clean stop, 1 with a one-line error (bad config, a module
that cannot be imported, a broker that cannot be reached, ...), 2 for bad usage,
130 when stopped at once by a second signal.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import logging
import logging.config
import os
import pathlib
import signal
import sys
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ._config import Config
from ._configfile import import_yaml as _import_yaml
from ._exceptions import TrioEventsError
from ._extensions import entrypoints_of
from ._groups import leaves
from ._host import ServiceHost
from ._uri import masked_uri, parse_broker_uri
from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import ModuleType

__all__ = ["CommandError", "import_services", "main", "serve_until_signalled"]

logger = logging.getLogger("trioevents.cli")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_STOPPED_AT_ONCE: Final = 130

LOG_FORMAT: Final = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
LOG_DATE_FORMAT: Final = "%H:%M:%S"


class CommandError(Exception):
    """An error the command reports in one line (exit status 1)."""


# ------------------------------------------------------------------ arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioevents",
        description="Run nameko-style event services on trio.",
    )
    parser.add_argument(
        "--version", action="version", version=f"trioevents {__version__}"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML config file (nameko's format: AMQP_URI, max_workers, LOGGING, "
        "...; ${VAR:default} is read from the environment)",
    )
    common.add_argument(
        "--broker",
        metavar="URI",
        help="the broker, overriding AMQP_URI: memory:// (the embedded broker, "
        "the default) or amqp://user:password@host:port/vhost",
    )
    common.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="the log level when the config has no LOGGING (default: INFO for "
        "run, WARNING otherwise)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[common],
        help="serve services until SIGTERM or Ctrl-C",
        description="Import the services and serve them in one host. SIGTERM or "
        "Ctrl-C stops gracefully (consumers first, then in-flight handlers finish "
        "within SHUTDOWN_GRACE); a second Ctrl-C stops at once.",
    )
    run.add_argument(
        "services",
        nargs="+",
        metavar="MODULE[:Class]",
        help="a module (every service class defined in it) or module:Class",
    )

    dispatch = commands.add_parser(
        "dispatch",
        parents=[common],
        help="publish an event",
        description="Publish an event as SERVICE would dispatch it (to the "
        "exchange SERVICE.events, routing key EVENT_TYPE), with publisher "
        "confirms, and print what was sent.",
    )
    dispatch.add_argument("service", metavar="SERVICE", help="the source service")
    dispatch.add_argument("event_type", metavar="EVENT_TYPE", help="the event type")
    dispatch.add_argument(
        "data",
        nargs="?",
        default="{}",
        metavar="JSON | -",
        help="the event data as JSON (default: {}); '-' reads one event per line "
        "from standard input",
    )

    commands.add_parser(
        "show-config",
        parents=[common],
        help="print the effective configuration, password masked",
        description="Print the configuration as the other commands see it: "
        "defaults, the config file and --broker, as YAML.",
    )
    return parser


# -------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _logging(level: str) -> Iterator[logging.Handler]:
    """Log to standard error at *level* for the duration of the command."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _load_config(args: argparse.Namespace, handler: logging.Handler) -> Config:
    """Read ``--config`` and ``--broker``; apply the config's ``LOGGING``."""
    config = Config()
    if args.config is not None:
        config = Config.from_yaml(pathlib.Path(args.config))
    if args.broker is not None:
        config = attrs.evolve(config, amqp_uri=args.broker)
    if config.logging_config is not None:
        logging.getLogger().removeHandler(handler)
        try:
            logging.config.dictConfig(dict(config.logging_config))
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise CommandError(f"config key 'LOGGING': {exc}") from exc
    return config


def _import_module(name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        # Like nameko: modules are found from the current directory.
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except Exception as exc:
        logger.debug("importing %r failed", name, exc_info=True)
        if isinstance(exc, ImportError):
            detail = str(exc)
        else:
            detail = f"{exc!r} (--log-level DEBUG shows the traceback)"
        raise CommandError(f"cannot import {name!r}: {detail}") from exc


def _has_entrypoints(cls: type) -> bool:
    return any(
        entrypoints_of(inspect.getattr_static(cls, attr, None)) for attr in dir(cls)
    )


def _is_service(obj: object, module: ModuleType) -> bool:
    return (
        isinstance(obj, type)
        and obj.__module__ == module.__name__
        and isinstance(getattr(obj, "name", None), str)
        and _has_entrypoints(obj)
    )


def import_services(specs: Sequence[str]) -> list[type]:
    """Import ``MODULE`` or ``MODULE:Class`` specs; return the service classes.

    A module stands for every service class defined in it: a class with a
    ``name`` and at least one entrypoint, in definition order. ``MODULE:Class``
    picks one class (``Class`` may be dotted).

    Raises
    ------
    CommandError
        A module cannot be imported, has no such class or no service class.
    """
    services: list[type] = []
    for spec in specs:
        module_name, _, class_path = spec.partition(":")
        if not module_name:
            raise CommandError(f"{spec!r} names no module (use MODULE or MODULE:Class)")
        module = _import_module(module_name)
        if not class_path:
            found = [obj for obj in vars(module).values() if _is_service(obj, module)]
            if not found:
                raise CommandError(
                    f"module {module_name!r} defines no service class (a class "
                    "with a name and an entrypoint such as @event_handler)"
                )
        else:
            obj: object = module
            for part in class_path.split("."):
                if not hasattr(obj, part):
                    raise CommandError(f"module {module_name!r} has no {class_path!r}")
                obj = getattr(obj, part)
            if not isinstance(obj, type):
                raise CommandError(f"{spec!r} is not a class")
            if not isinstance(getattr(obj, "name", None), str):
                raise CommandError(
                    f"{spec!r} is not a service class: it has no name (a class "
                    'attribute such as name = "orders")'
                )
            found = [obj]
        services.extend(cls for cls in found if cls not in services)
    return services


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -------------------------------------------------------------------- run


def _signal_name(signum: int) -> str:
    if signum == signal.SIGINT:
        return "Ctrl-C (SIGINT)"
    return signal.Signals(signum).name


async def serve_until_signalled(host: ServiceHost) -> int:
    """Serve *host* until SIGTERM or SIGINT; return the exit status.

    The first signal stops gracefully (:meth:`ServiceHost.stop`); a second one, or
    a signal before the host is serving, stops at once.
    """
    stopped_at_once = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            serving = False

            async def serve(*, task_status: trio.TaskStatus[None]) -> None:
                await host.serve(task_status=task_status)
                nursery.cancel_scope.cancel()

            async def watch_signals() -> None:
                nonlocal stopped_at_once
                stopping = False
                async for signum in signals:
                    name = _signal_name(signum)
                    if serving and not stopping:
                        stopping = True
                        logger.info(
                            "%s: stopping gracefully (Ctrl-C again stops at once)",
                            name,
                        )
                        nursery.start_soon(host.stop)
                        continue
                    logger.warning(
                        "%s: stopping at once; unfinished handlers are cancelled "
                        "and their messages return to the queue",
                        name,
                    )
                    stopped_at_once = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            await nursery.start(serve)
            serving = True
            logger.info("press Ctrl-C to stop")
    return EXIT_STOPPED_AT_ONCE if stopped_at_once else EXIT_OK


def _run(args: argparse.Namespace, config: Config) -> int:
    services = import_services(args.services)
    host = ServiceHost(services, config)
    host.transport  # noqa: B018 - an unsupported AMQP_URI fails here, in one line
    names = ", ".join(getattr(cls, "name", cls.__qualname__) for cls in services)
    logger.info(
        "trioevents %s: running %s on %s",
        __version__,
        names,
        masked_uri(config.amqp_uri),
    )
    return trio.run(serve_until_signalled, host)


# --------------------------------------------------------------- dispatch


def _parse_json(text: str, where: str, sent: int = 0) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        done = f"; {sent} event(s) were dispatched before it" if sent else ""
        raise CommandError(f"{where} is not valid JSON: {exc}{done}") from exc


async def _dispatch_events(
    config: Config, service: str, event_type: str, data: str
) -> int:
    sent = 0
    async with ServiceHost([], config).dispatcher() as dispatch:

        async def send(event_data: object) -> None:
            nonlocal sent
            await dispatch(service, event_type, event_data)
            sent += 1
            shown = json.dumps(event_data, separators=(", ", ": "))
            _write(f"dispatched {service} {event_type} {shown}")

        if data != "-":
            await send(_parse_json(data, "the event data"))
            return EXIT_OK
        stdin = trio.wrap_file(sys.stdin)
        number = 0
        async for line in stdin:
            number += 1
            if line.strip():
                where = f"line {number} of standard input"
                await send(_parse_json(line, where, sent))
    return EXIT_OK


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.data != "-":
        _parse_json(args.data, "the event data")  # fail before connecting
    host = ServiceHost([], config)
    host.transport  # noqa: B018 - an unsupported AMQP_URI fails here, in one line
    if parse_broker_uri(config.amqp_uri).is_memory:
        logger.warning(
            "%s is this process's embedded broker: no other process receives "
            "the event (use --broker amqp://...)",
            config.amqp_uri,
        )
    return trio.run(_dispatch_events, config, args.service, args.event_type, args.data)


# ------------------------------------------------------------ show-config


def _show_config(args: argparse.Namespace, config: Config) -> int:
    yaml = _import_yaml()
    text = yaml.safe_dump(
        config.to_mapping(mask_secrets=True),
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )
    source = args.config if args.config is not None else "defaults"
    _write(f"# effective configuration ({source}; password masked)")
    sys.stdout.write(text)
    sys.stdout.flush()
    return EXIT_OK


# ------------------------------------------------------------------- main

_COMMANDS = {"run": _run, "dispatch": _dispatch, "show-config": _show_config}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trioevents`` command; return its exit status.

    Parameters
    ----------
    argv
        The arguments, without the program name (default: ``sys.argv[1:]``).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    level = args.log_level or ("INFO" if args.command == "run" else "WARNING")
    with _logging(level) as handler:
        try:
            config = _load_config(args, handler)
            return _COMMANDS[args.command](args, config)
        except KeyboardInterrupt:
            logger.warning("interrupted")
            return EXIT_STOPPED_AT_ONCE
        except (TrioEventsError, CommandError) as exc:
            return _fail(exc)
        except BaseExceptionGroup as group:
            errors = leaves(group)
            if errors and all(
                isinstance(leaf, TrioEventsError | CommandError) for leaf in errors
            ):
                return _fail(errors[0])
            raise


def _fail(exc: BaseException) -> int:
    sys.stderr.write(f"trioevents: error: {_one_line(exc)}\n")
    sys.stderr.flush()
    return EXIT_ERROR
