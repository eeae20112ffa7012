"""balanced_target: one gRPC target that sends each call to the next server address."""

from __future__ import annotations

import pytest

from recall_engine.serving.client_target import ROUND_ROBIN, balanced_target


def test_one_address_is_used_as_is():
    assert balanced_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    assert balanced_target("recall.internal:443") == ("recall.internal:443", [])


def test_several_addresses_become_an_address_list_under_round_robin():
    target, options = balanced_target("127.0.0.1:50061, 127.0.0.1:50062")
    assert target == "ipv4:127.0.0.1:50061,127.0.0.1:50062"
    assert options == [ROUND_ROBIN] == [("grpc.lb_policy_name", "round_robin")]
    assert balanced_target("[::1]:1,[::1]:2")[0] == "ipv6:[::1]:1,[::1]:2"


def test_host_names_are_resolved_preferring_ipv4():
    target, _ = balanced_target("localhost:50061,127.0.0.1:50062")
    assert target == "ipv4:127.0.0.1:50061,127.0.0.1:50062"


@pytest.mark.parametrize(
    ("addrs", "message"),
    [
        ("", "addr: give HOST:PORT"),
        ("127.0.0.1:1,127.0.0.1", "addr: '127.0.0.1' is not HOST:PORT"),
        ("127.0.0.1:1,:5", "addr: ':5' is not HOST:PORT"),
        ("127.0.0.1:1,127.0.0.1:99999", "addr: '127.0.0.1:99999' is not HOST:PORT"),
        ("127.0.0.1:1,[::1]:2", "addr: mixes IPv4 and IPv6"),
        ("127.0.0.1:1,no-such-host.invalid:2", "addr: cannot resolve 'no-such-host.invalid:2'"),
    ],
)
def test_bad_addresses_are_named(addrs, message):
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        balanced_target(addrs)
