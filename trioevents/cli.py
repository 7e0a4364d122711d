"""The ``trioevents`` command (also ``python -m trioevents``).

::

    trioevents run MODULE[:Class] ... [--config FILE] [--broker URI] [--http ADDRESS]
    trioevents dispatch SERVICE EVENT_TYPE [JSON | -] [--config FILE] [--broker URI]
    trioevents show-config [--config FILE] [--broker URI]
    trioevents asyncapi MODULE[:Class] ... [-o FILE] [--format yaml|json]
    trioevents dlq list QUEUE [--limit N] [--json] [--broker URI]
    trioevents dlq replay QUEUE [--limit N] [--to-handler-queue] [--broker URI]
    trioevents dlq purge QUEUE --yes [--broker URI]

The configuration is the defaults, then ``--config``, then ``TRIOEVENTS_<KEY>``
environment variables, then ``--broker`` and ``--http`` (each over the one before).

``run`` imports the services (a module means every service class it defines or
re-exports), builds one :class:`~trioevents.ServiceHost` and serves until SIGTERM
or Ctrl-C, which stop gracefully; a second one stops at once
(:func:`~trioevents.serve_until_signalled`). ``dispatch`` publishes one event, or
one per line of standard input, to RabbitMQ. ``show-config`` prints the effective
configuration, where each value came from, secrets masked. ``asyncapi`` writes
an AsyncAPI 3.0 document of the services' events
(:func:`~trioevents.asyncapi_document`). ``dlq`` lists, replays or purges a
dead-letter queue on RabbitMQ (:mod:`._dlq` does the work).

Exit status: 0 after a clean stop, 1 with a one-line error (bad config, a module
that cannot be imported, a broker that cannot be reached, ...), 2 for bad usage,
130 when stopped at once by a second signal.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import json
import logging
import logging.config
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Final

import trio

from ._asyncapi import asyncapi_document
from ._config import Config, LoadedConfig
from ._configfile import ENV_PREFIX, Layer, import_yaml
from ._dlq import check_dead_letter_queue_name, open_dead_letter_queue
from ._exceptions import TrioEventsError
from ._extensions import entrypoints_of
from ._groups import leaves
from ._host import ServiceHost
from ._signals import (
    EXIT_OK,
    EXIT_STOPPED_AT_ONCE,
    held_signals,
    serve_held_until_signalled,
    serve_until_signalled,
)
from ._uri import masked_uri, parse_broker_uri
from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import ModuleType

    from ._dlq import DeadLetter, ReplayOutcome

__all__ = ["CommandError", "import_services", "main", "serve_until_signalled"]

logger = logging.getLogger("trioevents.cli")

EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2

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
        "...; ${VAR:default} is read from the environment); TRIOEVENTS_<KEY> "
        "environment variables override it",
    )
    common.add_argument(
        "--broker",
        metavar="URI",
        help="the broker, overriding AMQP_URI and TRIOEVENTS_AMQP_URI: memory:// "
        "(the embedded broker, the default; this process only) or "
        "amqp://user:password@host:port/vhost",
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
        help="a module (every service class it defines or re-exports) or module:Class",
    )
    run.add_argument(
        "--http",
        metavar="ADDRESS",
        help="serve /healthz, /readyz and /metrics on [HOST]:PORT (':9100': every "
        "interface), overriding HTTP_ADDRESS; needs the 'http' extra: pip install "
        "'trioevents[http]'",
    )

    dispatch = commands.add_parser(
        "dispatch",
        parents=[common],
        help="publish an event",
        description="Publish an event to RabbitMQ as SERVICE would dispatch it (to "
        "the exchange SERVICE.events, routing key EVENT_TYPE), with publisher "
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
        help="print the effective configuration, secrets masked",
        description="Print the configuration as the other commands see it, as "
        "YAML, each key with where its value came from: --broker over "
        "TRIOEVENTS_<KEY> environment variables over --config over the defaults.",
    )

    asyncapi = commands.add_parser(
        "asyncapi",
        parents=[common],
        help="write an AsyncAPI 3.0 document of the services' events",
        description="Import the services and write an AsyncAPI 3.0 document of "
        "their events: a channel per exchange and routing key, a send operation "
        "per event type a dispatcher declares (EventDispatcher(events=...)), a "
        "receive operation per event handler with its queue, and the payloads' "
        "JSON Schemas. AMQP_URI (--broker, --config, TRIOEVENTS_AMQP_URI) names "
        "the servers, passwords masked; memory:// names none.",
    )
    asyncapi.add_argument(
        "services",
        nargs="+",
        metavar="MODULE[:Class]",
        help="a module (every service class it defines or re-exports) or module:Class",
    )
    asyncapi.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the document to FILE (default: standard output)",
    )
    asyncapi.add_argument(
        "--format",
        choices=["yaml", "json"],
        help="the document's format (default: json if FILE ends with .json, else yaml)",
    )
    asyncapi.add_argument("--title", help="info.title (default: the services' names)")
    asyncapi.add_argument(
        "--api-version",
        default="1.0.0",
        metavar="VERSION",
        help="info.version, the version of the services' API (default: 1.0.0)",
    )
    _add_dlq_parser(commands, common)
    return parser


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _add_dlq_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="list, replay or purge a dead-letter queue",
        description="Look into a handler's dead-letter queue {queue}.dlq on "
        "RabbitMQ, replay its messages or purge it. A queue whose name does not "
        "end in .dlq is refused unless --force.",
    )
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    queue = argparse.ArgumentParser(add_help=False)
    queue.add_argument("queue", metavar="QUEUE", help="the dead-letter queue")
    queue.add_argument(
        "--force", action="store_true", help="accept a queue not named *.dlq"
    )
    listing = actions.add_parser(
        "list",
        parents=[common, queue],
        help="show the first messages and why they failed",
        description="Print how many messages the queue holds and the first ones "
        "with their failure headers. The messages are read and put back (nacked "
        "with requeue): they stay in the queue, in order, marked redelivered.",
    )
    listing.add_argument(
        "--limit",
        type=_limit,
        default=10,
        metavar="N",
        help="how many messages to show (default: 10)",
    )
    listing.add_argument(
        "--json", action="store_true", help="print JSON, with the whole bodies"
    )
    replay = actions.add_parser(
        "replay",
        parents=[common, queue],
        help="republish the messages where they were first published",
        description="Republish each message to its original exchange and routing "
        "key (every handler bound there gets it again) with its properties and "
        "headers, less the failure headers and x-death; ack it in the dead-letter "
        "queue only once the broker confirmed the copy. A message that cannot be "
        "replayed stays in the queue (exit status 1).",
    )
    replay.add_argument(
        "--limit",
        type=_limit,
        metavar="N",
        help="replay the first N messages only (default: all)",
    )
    replay.add_argument(
        "--to-handler-queue",
        action="store_true",
        help="republish to the handler's queue (QUEUE without .dlq) instead, so "
        "that only the handler that failed gets the events again",
    )
    purge = actions.add_parser(
        "purge",
        parents=[common, queue],
        help="drop every message for good",
        description="Drop the messages of the queue. Without --yes, say how many "
        "it would drop, and drop none.",
    )
    purge.add_argument("--yes", action="store_true", help="really drop them")


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


def _load_config(args: argparse.Namespace, handler: logging.Handler) -> LoadedConfig:
    """Read ``--config``, the environment and ``--broker``; apply ``LOGGING``."""
    given = {"--broker": ("AMQP_URI", args.broker)}
    given["--http"] = ("HTTP_ADDRESS", getattr(args, "http", None))  # run only
    values = {key: value for key, value in given.values() if value is not None}
    flag_of = {key: flag for flag, (key, value) in given.items() if value is not None}
    flags = Layer(", ".join(flag_of.values()) or "--broker", values, flag_of)
    loaded = Config._load(args.config, flags=flags)
    config = loaded.config
    if config.logging_config is not None:
        logging.getLogger().removeHandler(handler)
        try:
            logging.config.dictConfig(dict(config.logging_config))
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise CommandError(f"config key 'LOGGING': {exc}") from exc
    return loaded


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


def _is_service_class(obj: object) -> bool:
    return (
        isinstance(obj, type)
        and isinstance(getattr(obj, "name", None), str)
        and _has_entrypoints(obj)
    )


def _services_of(module: ModuleType) -> list[type]:
    """The service classes *module* defines or re-exports, in its order.

    Defined in it or in its submodules (a package's ``__init__.py`` doing
    ``from .orders import Orders``), or named in its ``__all__``. nameko takes
    every class with entrypoints it finds in the module; a class imported from
    another package for some other use (a base class, a type) is left out here
    unless ``__all__`` names it.
    """
    exported = set(getattr(module, "__all__", ()))
    package = module.__name__ + "."
    found: list[type] = []
    for name, obj in vars(module).items():
        if not _is_service_class(obj) or obj in found:
            continue
        origin = obj.__module__
        if origin == module.__name__ or origin.startswith(package) or name in exported:
            found.append(obj)
    return found


def _file_name_hint(module_name: str) -> str | None:
    """``checkout.py`` -> ``checkout``, ``./myapp/orders.py`` -> ``myapp.orders``."""
    if not module_name.endswith(".py") and "/" not in module_name:
        return None
    path = pathlib.PurePath(module_name)
    parts = [part for part in path.with_suffix("").parts if part not in (".", "/")]
    return ".".join(parts) or None


def import_services(specs: Sequence[str]) -> list[type]:
    """Import ``MODULE`` or ``MODULE:Class`` specs; return the service classes.

    A module stands for every service class it defines or re-exports: a class
    with a ``name`` and at least one entrypoint, defined in the module or in its
    submodules (so a package's ``__init__.py`` may gather them), or named in its
    ``__all__``; in the module's order. ``MODULE:Class`` picks one class
    (``Class`` may be dotted).

    Raises
    ------
    CommandError
        A module cannot be imported (a file name such as ``checkout.py`` gets a
        did-you-mean), has no such class or no service class.
    """
    services: list[type] = []
    for spec in specs:
        module_name, _, class_path = spec.partition(":")
        if not module_name:
            raise CommandError(f"{spec!r} names no module (use MODULE or MODULE:Class)")
        hint = _file_name_hint(module_name)
        if hint is not None:
            raise CommandError(
                f"{module_name!r} is a file name; run takes a module: did you mean "
                f"{hint + (':' + class_path if class_path else '')!r}?"
            )
        module = _import_module(module_name)
        if not class_path:
            found = _services_of(module)
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


def _embedded_broker_banner(loaded: LoadedConfig) -> str:
    """The warning ``run`` starts with on ``memory://``: no other process sees it."""
    banner = (
        f"*** EMBEDDED BROKER *** {masked_uri(loaded.config.amqp_uri)} lives in this "
        "process: no other process (trioevents dispatch included) sees these "
        "events. For RabbitMQ, pass --broker amqp://user:password@host/ or set "
        f"{ENV_PREFIX}AMQP_URI"
    )
    if "AMQP_URI" in os.environ and loaded.sources["AMQP_URI"] == "default":
        banner += (
            f" (AMQP_URI is set in the environment, but trioevents reads "
            f"{ENV_PREFIX}AMQP_URI, or AMQP_URI: ${{AMQP_URI}} in --config)"
        )
    return banner


def _run(args: argparse.Namespace, handler: logging.Handler) -> int:
    # The signal handler first: a SIGTERM while the services import stops cleanly.
    with held_signals() as held:
        loaded = _load_config(args, handler)
        config = loaded.config
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
        if parse_broker_uri(config.amqp_uri).is_memory:
            logger.warning("%s", _embedded_broker_banner(loaded))
        return trio.run(functools.partial(serve_held_until_signalled, host, held=held))


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


def _dispatch(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    host = ServiceHost([], config)
    host.transport  # noqa: B018 - an unsupported AMQP_URI fails here, in one line
    if parse_broker_uri(config.amqp_uri).is_memory:
        raise CommandError(
            f"dispatch cannot reach the embedded broker {masked_uri(config.amqp_uri)}: "
            "it lives inside one process, and no other process would get the event. "
            "Point dispatch at RabbitMQ: --broker amqp://user:password@host/, "
            f"{ENV_PREFIX}AMQP_URI, or AMQP_URI in --config"
        )
    if args.data != "-":
        _parse_json(args.data, "the event data")  # fail before connecting
    return trio.run(_dispatch_events, config, args.service, args.event_type, args.data)


# ------------------------------------------------------------ show-config


def _show_config(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    yaml = import_yaml()
    defaults = "default" in loaded.sources.values()
    if not loaded.layers:
        header = "from the defaults"
    else:
        header = "from " + ", ".join(loaded.layers)
        header += " (other keys: defaults)" if defaults else ""
    _write(f"# effective configuration {header}; secrets masked")
    for key, value in loaded.config.to_mapping(mask_secrets=True).items():
        if key == "AMQP_URI" and ";" in value:
            # The nodes of a cluster, one per line, in the order they are tried.
            value = [address.strip() for address in value.split(";")]
        text = yaml.safe_dump(
            {key: value},
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
            width=1_000_000,
        )
        lines = text.splitlines()
        source = f"# {loaded.sources[key]}"
        if len(lines) == 1 or lines[0].endswith(":"):
            lines[0] += f"  {source}"
        else:  # a value over several lines: say it above
            lines.insert(0, f"# {key}: {loaded.sources[key]}")
        _write("\n".join(lines))
    return EXIT_OK


# --------------------------------------------------------------- asyncapi


def _asyncapi(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    services = import_services(args.services)
    document = asyncapi_document(
        services,
        title=args.title,
        version=args.api_version,
        uri=loaded.config.amqp_uri,
        config=loaded.config,
    )
    output = None if args.output in (None, "-") else pathlib.Path(args.output)
    json_wanted = output is not None and output.suffix.lower() == ".json"
    if args.format == "json" or (args.format is None and json_wanted):
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    else:
        text = import_yaml().safe_dump(document, sort_keys=False, allow_unicode=True)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return EXIT_OK
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {str(output)!r}: {exc.strerror}") from exc
    _write(
        f"wrote {output}: AsyncAPI {document['asyncapi']}, "
        f"{len(document['channels'])} channel(s), "
        f"{len(document['operations'])} operation(s)"
    )
    return EXIT_OK


# ------------------------------------------------------------------- main

# -------------------------------------------------------------------- dlq


def _messages(count: int) -> str:
    return f"{count} message{'' if count == 1 else 's'}"


def _named(letter: DeadLetter) -> str:
    number = f"[{letter.position}]"
    if letter.message_id is None:
        return number
    return f"{number} message id {letter.message_id}"


def _body_preview(letter: DeadLetter, width: int = 200) -> str:
    decoded, value = letter.decoded_body()
    text = json.dumps(value, ensure_ascii=False) if decoded else repr(letter.body)
    if len(text) <= width:
        return text
    return f"{text[:width]}... ({len(letter.body)} bytes)"


def _shown(value: str | int | None, missing: str = "none") -> str:
    if value is None:
        return f"({missing})"
    return str(value) if value != "" else "'' (the default exchange)"


def _letter_lines(letter: DeadLetter) -> list[str]:
    skipped = "none: replay skips it"
    return [
        _named(letter),
        f"    error: {_shown(letter.error)}",
        f"    attempts: {_shown(letter.attempts)}",
        f"    original exchange: {_shown(letter.original_exchange, skipped)}",
        f"    original routing key: {_shown(letter.original_routing_key, skipped)}",
        f"    body: {_body_preview(letter)}",
    ]


async def _dlq_list(config: Config, args: argparse.Namespace) -> int:
    async with open_dead_letter_queue(args.queue, config, force=args.force) as dlq:
        listing = await dlq.peek(args.limit)
    if listing.consumer_count:
        logger.warning(
            "%s has %d consumer(s): they may take messages meanwhile",
            listing.queue,
            listing.consumer_count,
        )
    if args.json:
        _write(json.dumps(listing.as_json(), indent=2, ensure_ascii=False))
        return EXIT_OK
    lines = [f"{listing.queue}: {_messages(listing.message_count)}"]
    if len(listing.letters) < listing.message_count:
        lines.append(
            f"(showing the first {len(listing.letters)}; --limit N shows more)"
        )
    for letter in listing.letters:
        lines.extend(["", *_letter_lines(letter)])
    _write("\n".join(lines))
    return EXIT_OK


def _show_outcome(outcome: ReplayOutcome) -> None:
    named = _named(outcome.letter)
    if outcome.skipped is not None:
        _write(f"skipped {named}: {outcome.skipped}; left in the queue")
    elif outcome.exchange == "":
        _write(f"replayed {named} to queue {outcome.routing_key!r}")
    else:
        _write(
            f"replayed {named} to exchange {outcome.exchange!r}, routing key "
            f"{outcome.routing_key!r}"
        )


async def _dlq_replay(config: Config, args: argparse.Namespace) -> int:
    async with open_dead_letter_queue(args.queue, config, force=args.force) as dlq:
        report = await dlq.replay(
            args.limit,
            to_handler_queue=args.to_handler_queue,
            on_outcome=_show_outcome,
        )
    _write(
        f"replayed {_messages(len(report.replayed))}, skipped "
        f"{len(report.skipped)}; {_messages(report.left)} left in {report.queue}"
    )
    if report.stopped is not None:
        raise CommandError(f"replay stopped early: {report.stopped}")
    if report.skipped:
        raise CommandError(
            f"{_messages(len(report.skipped))} could not be replayed and stay in "
            f"{report.queue}"
        )
    return EXIT_OK


async def _dlq_purge(config: Config, args: argparse.Namespace) -> int:
    async with open_dead_letter_queue(args.queue, config, force=args.force) as dlq:
        if not args.yes:
            count = await dlq.count()
            raise CommandError(
                f"purge would drop {_messages(count)} from {args.queue!r} for good; "
                "pass --yes to drop them"
            )
        dropped = await dlq.purge()
    _write(f"purged {_messages(dropped)} from {args.queue}")
    return EXIT_OK


_DLQ_ACTIONS = {"list": _dlq_list, "replay": _dlq_replay, "purge": _dlq_purge}


def _dlq(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    if parse_broker_uri(config.amqp_uri).is_memory:
        raise CommandError(
            f"dlq cannot reach the embedded broker {masked_uri(config.amqp_uri)}: it "
            "lives inside the process that runs the services, and this command "
            "runs in another. Point it at RabbitMQ: --broker "
            f"amqp://user:password@host/, {ENV_PREFIX}AMQP_URI, or AMQP_URI in "
            "--config (in the services' own process, "
            "trioevents.open_dead_letter_queue works on memory:// too)"
        )
    check_dead_letter_queue_name(args.queue, force=args.force)
    return trio.run(_DLQ_ACTIONS[args.action], config, args)


# ------------------------------------------------------------------- main

_COMMANDS = {
    "dispatch": _dispatch,
    "show-config": _show_config,
    "asyncapi": _asyncapi,
    "dlq": _dlq,
}


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
            if args.command == "run":
                return _run(args, handler)
            return _COMMANDS[args.command](args, _load_config(args, handler))
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
