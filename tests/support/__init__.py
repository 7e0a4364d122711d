"""Support code of the tests: helpers, fault doubles, nothing collected as a test.

=================  ==============================================================
module             what it holds
=================  ==============================================================
``brokers``        reach a broker from a test, whichever it is (``memory://`` or
                   RabbitMQ): queue depths, taking messages, raw publishes,
                   standalone dispatches; hosts, one through ``FlakyTransport``
``recording``      what handlers saw (:class:`~.recording.Recorder`), a gate
                   that holds them, the worker context as a dependency, the log
                   lines a test looks for
``counting``       numbered events through faults: what was sent, confirmed,
                   handled, duplicated, lost (the fault and cluster tests)
``fake_nodes``     stand-ins for the nodes of a cluster, dialed instead of
                   RabbitMQ (failover without a broker)
``rabbit_cluster`` a throwaway 3-node RabbitMQ cluster beside the default broker
``detonator``      payloads that would run code if anything ever loaded them
``shop``           the little shop the testing kit's tests run (orders, billing)
``tcpproxy``       a TCP proxy that cuts, stalls, slows or orphans the link to
                   RabbitMQ, and can read its AMQP frames and close a channel as
                   the broker would (tested beside it, in ``test_tcpproxy.py``)
=================  ==============================================================

What users of trioevents would reuse lives in :mod:`trioevents.testing` instead
(``FlakyTransport``, ``HostFactory``, ``entrypoint_waiter``, ...).
"""
