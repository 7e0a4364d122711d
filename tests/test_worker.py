"""The worker context and its headers (``trioevents._worker``).

First without a broker; then over the wire, on both brokers: the context a
handler gets from the headers a message came with, and the headers its
dispatcher sends on.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from trioevents import EventDispatcher, Properties, WorkerContext, event_handler
from trioevents._worker import DEFAULT_PARENT_CALLS_TRACKED

from .support.brokers import dispatch, publish, take_all
from .support.recording import Recorder, WorkerCtx, problems

if TYPE_CHECKING:
    from trioevents.testing import HostFactory


def from_headers(headers: dict[str, object] | None, **kwargs: int) -> WorkerContext:
    return WorkerContext.from_headers("orders", "on_checkout", headers, **kwargs)


def test_call_id_is_service_method_and_a_uuid4() -> None:
    ctx = from_headers(None)
    service, method, unique = ctx.call_id.split(".")
    assert (service, method) == ("orders", "on_checkout")
    assert uuid.UUID(unique).version == 4


def test_each_worker_gets_its_own_call_id() -> None:
    assert from_headers(None).call_id != from_headers(None).call_id


def test_without_headers_the_stack_is_the_own_call_id() -> None:
    ctx = from_headers(None)
    assert ctx.call_id_stack == [ctx.call_id]
    assert ctx.data == {}
    assert ctx.immediate_parent_call_id is None
    assert ctx.origin_call_id is None


def test_the_incoming_stack_is_extended_with_the_own_call_id() -> None:
    ctx = from_headers({"nameko.call_id_stack": ["web.checkout.1", "api.post.2"]})
    assert ctx.call_id_stack == ["web.checkout.1", "api.post.2", ctx.call_id]


def test_parents_are_the_ends_of_the_incoming_stack() -> None:
    ctx = from_headers({"nameko.call_id_stack": ["a.b.1", "c.d.2", "e.f.3"]})
    assert ctx.origin_call_id == "a.b.1"
    assert ctx.immediate_parent_call_id == "e.f.3"


def test_the_stack_keeps_the_last_parent_calls_tracked_plus_one() -> None:
    incoming = [f"svc.m.{i}" for i in range(20)]
    ctx = from_headers({"nameko.call_id_stack": incoming}, parent_calls_tracked=3)
    assert ctx.call_id_stack == ["svc.m.17", "svc.m.18", "svc.m.19", ctx.call_id]


def test_the_default_tracks_ten_parent_calls() -> None:
    assert DEFAULT_PARENT_CALLS_TRACKED == 10
    incoming = [f"svc.m.{i}" for i in range(20)]
    ctx = from_headers({"nameko.call_id_stack": incoming})
    assert len(ctx.call_id_stack) == 11
    assert ctx.call_id_stack[:-1] == incoming[-10:]


def test_tracking_no_parents_keeps_only_the_own_call_id() -> None:
    ctx = from_headers({"nameko.call_id_stack": ["a.b.1"]}, parent_calls_tracked=0)
    assert ctx.call_id_stack == [ctx.call_id]
    assert ctx.immediate_parent_call_id == "a.b.1"


def test_the_stack_returned_is_a_copy() -> None:
    ctx = from_headers(None)
    ctx.call_id_stack.append("tampered")
    assert ctx.call_id_stack == [ctx.call_id]


def test_nameko_headers_become_data_with_the_prefix_stripped() -> None:
    ctx = from_headers(
        {
            "nameko.language": "en-gb",
            "nameko.user_id": "u42",
            "nameko.auth_token": "t0k3n",
            "nameko.tenant": {"id": 7},
            "nameko.call_id_stack": ["a.b.1"],
        }
    )
    assert ctx.data == {
        "language": "en-gb",
        "user_id": "u42",
        "auth_token": "t0k3n",
        "tenant": {"id": 7},
    }


def test_other_headers_are_kept_but_not_context_data() -> None:
    ctx = from_headers({"x-trace": "abc", "nameko.language": "fr"})
    assert ctx.data == {"language": "fr"}
    assert ctx.headers == {"x-trace": "abc", "nameko.language": "fr"}
    assert "nameko.x-trace" not in ctx.dispatch_headers()


def test_context_data_adds_the_call_id_stack() -> None:
    ctx = from_headers({"nameko.language": "fr"})
    assert ctx.context_data == {"language": "fr", "call_id_stack": [ctx.call_id]}


def test_dispatch_headers_carry_the_context_on() -> None:
    ctx = from_headers(
        {"nameko.language": "en-gb", "nameko.call_id_stack": ["web.checkout.1"]}
    )
    assert ctx.dispatch_headers() == {
        "nameko.language": "en-gb",
        "nameko.call_id_stack": ["web.checkout.1", ctx.call_id],
    }


def test_dispatch_headers_include_data_added_by_dependencies() -> None:
    ctx = from_headers(None)
    ctx.data["user_id"] = "u1"
    assert ctx.dispatch_headers()["nameko.user_id"] == "u1"


def test_context_flows_through_a_chain_of_workers() -> None:
    first = from_headers({"nameko.user_id": "u42"})
    second = WorkerContext.from_headers("billing", "charge", first.dispatch_headers())
    assert second.call_id_stack == [first.call_id, second.call_id]
    assert second.immediate_parent_call_id == first.call_id
    assert second.data == {"user_id": "u42"}


def test_none_values_are_not_sent_and_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = from_headers({"nameko.user_id": None, "nameko.language": "fr"})
    with caplog.at_level(logging.WARNING, logger="trioevents.worker"):
        headers = ctx.dispatch_headers()
    assert "nameko.user_id" not in headers
    assert headers["nameko.language"] == "fr"
    assert "'user_id' is None" in caplog.text


def test_values_no_header_can_hold_are_not_sent_and_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = from_headers(None)
    ctx.data["session"] = object()
    ctx.data["big"] = 2**70  # an int, but wider than AMQP's 64 bits
    ctx.data["deep"] = {"x": [2**64]}
    ctx.data["nested"] = {"ok": [1, "two", {"three": 3.0}]}
    with caplog.at_level(logging.WARNING, logger="trioevents.worker"):
        headers = ctx.dispatch_headers()
    assert "nameko.session" not in headers
    assert "nameko.big" not in headers
    assert "nameko.deep" not in headers
    assert headers["nameko.nested"] == {"ok": [1, "two", {"three": 3.0}]}
    assert "context data 'session': object cannot be sent" in caplog.text
    assert "context data 'big': integer 1180591620717411303424 does not fit" in (
        caplog.text
    )
    assert "context data 'deep'['x'][0]: integer" in caplog.text


@pytest.mark.parametrize(
    "stack", ["a.b.1", 42, {"a": 1}, None], ids=["str", "int", "dict", "None"]
)
def test_a_call_id_stack_that_is_not_a_list_is_ignored_with_a_warning(
    stack: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="trioevents.worker"):
        ctx = from_headers({"nameko.call_id_stack": stack, "nameko.language": "fr"})
    assert ctx.call_id_stack == [ctx.call_id]
    assert ctx.data == {"language": "fr"}
    assert "ignoring the nameko.call_id_stack header" in caplog.text


def test_stack_entries_that_are_not_strings_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    incoming = ["a.b.1", 7, None, ["x"], b"c.d.2", b"\xff"]
    with caplog.at_level(logging.WARNING, logger="trioevents.worker"):
        ctx = from_headers({"nameko.call_id_stack": incoming})
    assert ctx.call_id_stack == ["a.b.1", "c.d.2", ctx.call_id]
    # one line for the header, not one per entry (a list may be huge)
    (record,) = caplog.records
    assert "ignoring 4 non-string entries" in record.getMessage()


def test_header_names_that_are_not_strings_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="trioevents.worker"):
        ctx = WorkerContext.from_headers(
            "orders", "on_checkout", {1: "x", "nameko.language": "fr"}
        )
    assert ctx.data == {"language": "fr"}
    assert "name is not a string" in caplog.text


def test_a_context_can_be_built_directly() -> None:
    ctx = WorkerContext(
        service_name="orders",
        method_name="on_checkout",
        data={"language": "fr"},
        parent_call_id_stack=["a.b.1"],
        call_id="orders.on_checkout.fixed",
    )
    assert ctx.call_id_stack == ["a.b.1", "orders.on_checkout.fixed"]


def test_a_negative_parent_calls_tracked_is_refused() -> None:
    with pytest.raises(ValueError, match="parent_calls_tracked"):
        from_headers(None, parent_calls_tracked=-1)


def test_contexts_compare_by_identity_and_can_key_a_dict() -> None:
    one, other = from_headers(None), from_headers(None)
    assert one != other
    assert {one: 1, other: 2}[one] == 1


def test_repr_names_the_entrypoint_and_call_id() -> None:
    ctx = from_headers(None)
    assert repr(ctx) == (
        f"<WorkerContext [orders.on_checkout] call_id={ctx.call_id!r}>"
    )


# ------------------------------------------------------------------ over the wire

recorder = Recorder()


@pytest.fixture(autouse=True)
def fresh_recorder() -> None:
    global recorder
    recorder = Recorder()


class First:
    name = "first"
    dispatch = EventDispatcher()
    ctx = WorkerCtx()

    @event_handler("src", "start")
    async def handle(self, payload: Any) -> None:
        recorder.record("first", self.ctx)
        await self.dispatch("next", payload)


class Second:
    name = "second"
    ctx = WorkerCtx()

    @event_handler("first", "next")
    async def handle(self, payload: Any) -> None:
        recorder.record("second", self.ctx)


async def test_context_headers_propagate_through_a_chain(
    broker_uri: str, host_factory: HostFactory
) -> None:
    await host_factory([First, Second])
    await dispatch(
        broker_uri,
        "src",
        "start",
        {"x": 1},
        headers={
            "nameko.language": "en-gb",
            "nameko.call_id_stack": ["outside.call.1"],
        },
    )
    (_, first), (_, second) = await recorder.wait_for(2)
    assert isinstance(first, WorkerContext)
    assert isinstance(second, WorkerContext)
    assert first.call_id.startswith("first.handle.")
    assert first.call_id_stack == ["outside.call.1", first.call_id]
    assert second.call_id_stack == ["outside.call.1", first.call_id, second.call_id]
    assert first.data["language"] == "en-gb"
    assert second.data["language"] == "en-gb"


class Sink:
    name = "sink"
    ctx = WorkerCtx()

    @event_handler("src", "ping")
    async def handle(self, payload: Any) -> None:
        recorder.record("sink", (payload, self.ctx))


async def publish_with_headers(uri: str, body: bytes, headers: dict[str, Any]) -> None:
    """Publish *body* with *headers* to the handler, bypassing the dispatcher."""
    properties = Properties(content_type="application/json", headers=headers)
    await publish(uri, "src.events", "ping", body, properties)


@pytest.mark.parametrize(
    ("stack", "kept", "warned"),
    [
        pytest.param(42, [], True, id="an-int"),
        pytest.param("web.checkout.1", [], True, id="a-string"),
        pytest.param(
            [1, 2.5, True, None, {"a": 1}, ["x"], "web.checkout.1"],
            ["web.checkout.1"],
            True,
            id="non-strings",
        ),
        pytest.param(
            [f"caller.fire.{n}" for n in range(2000)],
            [f"caller.fire.{n}" for n in range(1990, 2000)],
            False,  # only capped, as nameko does
            id="huge",
        ),
        pytest.param(list(range(2000)), [], True, id="huge-non-strings"),
    ],
)
async def test_a_call_id_stack_of_the_wrong_shape_is_dropped_with_a_warning(
    stack: Any,
    kept: list[str],
    warned: bool,
    broker_uri: str,
    host_factory: HostFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What an AMQP header can carry reaches the worker; one warning at most."""
    await host_factory(Sink, {"max_workers": 1})
    headers = {"nameko.call_id_stack": stack, "nameko.user_id": "u42"}
    await publish_with_headers(broker_uri, b'{"n": 2}', headers)
    ((_, (payload, ctx)),) = await recorder.wait_for(1)
    assert payload == {"n": 2}
    assert isinstance(ctx, WorkerContext)
    assert ctx.data == {"user_id": "u42"}
    assert list(ctx.parent_call_id_stack)[-10:] == kept
    assert len(ctx.call_id_stack) == min(len(kept), 10) + 1
    assert ctx.call_id_stack[-1] == ctx.call_id
    warnings = problems(caplog, "nameko.call_id_stack")
    if not warned:
        assert warnings == []
    else:
        (line,) = warnings  # one line, however many entries were wrong
        assert "sink.handle" in line
        assert len(line) < 500
    await dispatch(broker_uri, "src", "ping", {"n": 1})
    await recorder.wait_for(2)  # still serving; nothing was dead-lettered
    assert await take_all(broker_uri, "evt-src-ping--sink.handle.dlq") == []


async def test_context_headers_of_other_types_reach_the_worker_as_they_came(
    broker_uri: str, host_factory: HostFactory
) -> None:
    """``nameko.language`` as bytes (an AMQP byte array) is passed on untouched."""
    await host_factory(Sink)
    headers = {"nameko.language": b"en-gb", "nameko.auth_token": 7}
    await publish_with_headers(broker_uri, b'{"n": 1}', headers)
    ((_, (_, ctx)),) = await recorder.wait_for(1)
    assert ctx.data == {"language": b"en-gb", "auth_token": 7}
