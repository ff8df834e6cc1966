"""The public facade: what ``pulsar_arbiter`` exports is deliberate."""

import pulsar_arbiter

EXPECTED = {
    "AbstractClient",
    "AbstractEvent",
    "AbstractUdpClient",
    "CommandError",
    "Connection",
    "DatagramProtocol",
    "DatagramServer",
    "Event",
    "EventHandler",
    "FlowControl",
    "OneTime",
    "Pool",
    "PoolConnection",
    "Producer",
    "Protocol",
    "ProtocolConsumer",
    "PulsarProtocol",
    "TcpServer",
    "Timeout",
    "command",
    "get_actor",
    "send",
}


def test_all_is_the_public_api() -> None:
    assert set(pulsar_arbiter.__all__) == EXPECTED
    for name in pulsar_arbiter.__all__:
        assert getattr(pulsar_arbiter, name) is not None, name


def test_all_has_no_private_names() -> None:
    assert not [name for name in pulsar_arbiter.__all__ if name.startswith("_")]
