"""AdminService hardening: authentication before any parsing, an audit line per call,
AdminService on its own address, and gRPC connection limits."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recall_engine._proto import admin_pb2, admin_pb2_grpc, recall_pb2
from tests.harness import catalog_of, make_config, serve

ITEMS = ["i1", "i2", "i3"]
TOKEN = "s3cret-token"
UPSERT = "/recall_engine.v1.AdminService/UpsertItems"


def config(tmp_path, **server):
    return make_config(
        {
            "server": server,
            "admin": {"token": TOKEN},
            "channels": {"a": {"plugin": "fixed", "params": {"items": ITEMS}}},
        },
        tmp_path,
    )


def raw_call(channel: grpc.Channel, method: str, payload: bytes, metadata=()):
    """Send ``payload`` as the request bytes, unparsed, as a hostile client could."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return call(payload, metadata=metadata, timeout=10)


def test_unauthenticated_admin_calls_are_refused_before_the_request_is_parsed(tmp_path):
    """4 MB of bytes that are not a valid UpsertItemsRequest: without a token the answer
    is UNAUTHENTICATED, not a parse failure, because the body is never decoded."""
    garbage = b"\xff" * (4 * 1024 * 1024 - 1024)
    with serve(config(tmp_path), catalog_of(ITEMS)) as s:
        with pytest.raises(grpc.RpcError) as e:
            raw_call(s.channel, UPSERT, garbage)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            raw_call(s.channel, UPSERT, garbage, metadata=(("authorization", "Bearer nope"),))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # with the token the same bytes are parsed, and refused as malformed
        with pytest.raises(grpc.RpcError) as e:
            raw_call(s.channel, UPSERT, garbage, metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert e.value.code() != grpc.StatusCode.UNAUTHENTICATED


def test_every_admin_call_and_failed_authentication_is_audited_without_the_token(tmp_path, capsys):
    with serve(config(tmp_path), catalog_of(ITEMS)) as s:
        with pytest.raises(grpc.RpcError):
            s.admin.ReloadConfig(
                admin_pb2.ReloadConfigRequest(), metadata=(("authorization", "Bearer wrong"),)
            )
        s.admin.DeleteItems(
            admin_pb2.DeleteItemsRequest(item_ids=["i3"]),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
            timeout=10,
        )
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if "admin_audit" in ln]
    assert len(lines) == 2, lines
    refused, ok = lines
    assert "ReloadConfig" in refused and "refused" in refused and "PERMISSION_DENIED" in refused
    assert "DeleteItems" in ok and "ok" in ok and "ipv4:127.0.0.1" in ok
    assert TOKEN not in out.out + out.err and "wrong" not in refused.split("reason")[0]


def test_admin_addr_serves_admin_alone_and_the_public_port_has_no_admin(tmp_path):
    cfg = config(tmp_path, admin_addr="127.0.0.1:0")
    with serve(cfg, catalog_of(ITEMS)) as s:
        assert s.running.admin_port and s.running.admin_port != s.port
        meta = (("authorization", f"Bearer {TOKEN}"),)
        with pytest.raises(grpc.RpcError) as e:
            s.admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=meta, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids == ["i1"]
        with grpc.insecure_channel(f"127.0.0.1:{s.running.admin_port}") as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            assert admin.ReloadConfig(
                admin_pb2.ReloadConfigRequest(), metadata=meta, timeout=10
            ).config_generation
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_idle_connections_are_closed_by_the_server(tmp_path):
    with serve(config(tmp_path, max_connection_idle_s=0.3), catalog_of(ITEMS)) as s:
        states: list[grpc.ChannelConnectivity] = []
        idle = threading.Event()

        def watch(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
                idle.set()

        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            ch.subscribe(watch)
            assert idle.wait(10), states  # the server sent GOAWAY on the idle connection
            ch.unsubscribe(watch)


def test_reload_config_with_a_bad_file_is_invalid_argument_naming_the_key(tmp_path):
    from recall_engine.config.schema import ConfigError, parse_config

    def read_bad():
        return parse_config({"channels": {"a": {"plugin": "fixed", "timeout_ms": -5}}}, tmp_path)

    with pytest.raises(ConfigError):
        read_bad()
    with serve(config(tmp_path), catalog_of(ITEMS), reload_config=read_bad) as s:
        with pytest.raises(grpc.RpcError) as e:
            s.admin.ReloadConfig(
                admin_pb2.ReloadConfigRequest(),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=10,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "channels.a.timeout_ms" in e.value.details()
        assert s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids == ["i1"]


def test_reload_config_whose_required_channel_fails_to_load_is_failed_precondition(tmp_path):
    """A new config that parses but cannot be applied (a required channel fails to load)
    is FAILED_PRECONDITION, and the old config keeps serving."""

    def read_unloadable():
        return make_config(
            {
                "admin": {"token": TOKEN},
                "channels": {
                    "a": {"plugin": "fixed", "params": {"items": ITEMS}},
                    "broken": {"plugin": "fail_load", "required": True},
                },
            },
            tmp_path,
        )

    with serve(config(tmp_path), catalog_of(ITEMS), reload_config=read_unloadable) as s:
        with pytest.raises(grpc.RpcError) as e:
            s.admin.ReloadConfig(
                admin_pb2.ReloadConfigRequest(),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=30,
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "broken" in e.value.details()
        assert s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids == ["i1"]
