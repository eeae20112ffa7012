"""End-to-end: a real gRPC server on a free port, real stubs."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from recall_engine._proto import admin_pb2, recall_pb2
from recall_engine.serving.engine import Status
from tests.harness import catalog_of, make_config, serve
from tests.helpers import wait_until

ITEMS = [f"i{n}" for n in range(1, 10)]
CATS = {"i1": ("red",), "i2": ("blue",), "i3": ("red",), "i4": ("blue",), "i5": ("red",)}


def two_channel_config(tmp_path, **extra):
    data = {
        "channels": {
            "a": {"plugin": "fixed", "params": {"items": ["i1", "i2", "i3", "i4"]}},
            "b": {"plugin": "fixed_b", "params": {"items": ["i3", "i5", "i1"]}},
        },
        "plan": {"weights": {"a": 1.0, "b": 1.0}},
        **extra,
    }
    return make_config(data, tmp_path)


@pytest.fixture()
def server(tmp_path):
    with serve(two_channel_config(tmp_path), catalog_of(ITEMS, CATS)) as s:
        yield s


def health_status(s, service=""):
    stub = health_pb2_grpc.HealthStub(s.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service)).status


def test_recall_returns_fused_candidates_with_provenance(server):
    resp = server.stub.Recall(recall_pb2.RecallRequest(user_id="u1", k=10))
    # RRF, k=60: i1 = 1/61 + 1/63, i3 = 1/63 + 1/61 tie -> best rank, then priority a
    assert resp.item_ids[:2] == ["i1", "i3"]
    assert set(resp.item_ids) == {"i1", "i2", "i3", "i4", "i5"}
    assert list(resp.scores) == sorted(resp.scores, reverse=True)
    assert math.isclose(resp.scores[0], 1 / 61 + 1 / 63, rel_tol=1e-6)
    by_name = {c.channel: c for c in resp.channels}
    assert by_name["a"].status == recall_pb2.CHANNEL_STATUS_OK
    a = by_name["a"]
    a_hits = {resp.item_ids[i]: r for i, r in zip(a.candidate_index, a.rank, strict=True)}
    assert a_hits == {"i1": 1, "i2": 2, "i3": 3, "i4": 4}
    assert resp.variant == "default" and resp.fusion == "rrf" and resp.request_id


def test_history_items_are_excluded_unless_asked(server):
    resp = server.stub.Recall(
        recall_pb2.RecallRequest(user_id="u1", k=10, history_item_ids=["i1", "i3"])
    )
    assert "i1" not in resp.item_ids and "i3" not in resp.item_ids
    resp = server.stub.Recall(
        recall_pb2.RecallRequest(user_id="u1", k=10, history_item_ids=["i1"], include_history=True)
    )
    assert "i1" in resp.item_ids


def test_excludes_and_category_filter_are_honoured(server):
    resp = server.stub.Recall(
        recall_pb2.RecallRequest(user_id="u1", k=10, exclude_item_ids=["i5"], categories=["red"])
    )
    assert set(resp.item_ids) == {"i1", "i3"}


def test_k_caps_the_answer(server):
    resp = server.stub.Recall(recall_pb2.RecallRequest(user_id="u1", k=2))
    assert len(resp.item_ids) == 2


def test_batch_recall_answers_each_request_and_isolates_bad_ones(server):
    reqs = [
        recall_pb2.RecallRequest(user_id="u1", k=3),
        recall_pb2.RecallRequest(user_id="u2", k=0),
        recall_pb2.RecallRequest(user_id="u3", k=5, exclude_item_ids=["i1"]),
    ]
    resp = server.stub.BatchRecall(recall_pb2.BatchRecallRequest(requests=reqs))
    assert len(resp.results) == 3
    assert len(resp.results[0].response.item_ids) == 3
    assert resp.results[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "requests[1].k" in resp.results[1].error_message
    assert "i1" not in resp.results[2].response.item_ids
    assert resp.results[2].error_code == 0


def test_list_channels_reports_what_is_loaded(server):
    resp = server.stub.ListChannels(recall_pb2.ListChannelsRequest())
    got = {c.name: (c.plugin, c.version, c.item_count) for c in resp.channels}
    assert got == {"a": ("fixed", "fixed-1", 4), "b": ("fixed_b", "fixed-1", 3)}
    assert resp.config_generation == 1


def test_health_is_serving_after_load_and_reflection_lists_services(server):
    assert health_status(server) == health_pb2.HealthCheckResponse.SERVING
    assert (
        health_status(server, "recall_engine.v1.RecallService")
        == health_pb2.HealthCheckResponse.SERVING
    )
    db = ProtoReflectionDescriptorDatabase(server.channel)
    services = set(db.get_services())
    assert {
        "recall_engine.v1.RecallService",
        "recall_engine.v1.AdminService",
        "grpc.health.v1.Health",
    } <= services
    desc = db.FindFileContainingSymbol("recall_engine.v1.RecallService")
    assert desc.name == "recall_engine/v1/recall.proto"


def test_health_not_serving_before_channels_load(tmp_path):
    with serve(two_channel_config(tmp_path), catalog_of(ITEMS), load=False) as s:
        assert health_status(s) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as e:
            s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_channel_timeout_and_error_return_partial_results(tmp_path):
    config = make_config(
        {
            "channels": {
                "good": {"plugin": "fixed", "params": {"items": ["i1", "i2"]}},
                "slow": {
                    "plugin": "hang",
                    "timeout_ms": 100,
                    "params": {"items": ["i3"], "sleep_s": 3},
                },
                "bad": {"plugin": "boom", "params": {"items": ["i4"]}},
            },
        },
        tmp_path,
    )
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u1", k=10), timeout=5)
        assert list(resp.item_ids) == ["i1", "i2"]
        status = {c.channel: c for c in resp.channels}
        assert status["good"].status == recall_pb2.CHANNEL_STATUS_OK
        assert status["slow"].status == recall_pb2.CHANNEL_STATUS_TIMEOUT
        # reported when its timeout fired, not when its 3 s sleep ended
        assert 90 <= status["slow"].latency_ms < 3000
        assert status["bad"].status == recall_pb2.CHANNEL_STATUS_ERROR
        assert "boom" in status["bad"].error


def test_deadline_exceeded_only_when_no_channel_answers(tmp_path):
    config = make_config(
        {"channels": {"slow": {"plugin": "hang", "timeout_ms": 50, "params": {"sleep_s": 1}}}},
        tmp_path,
    )
    with serve(config, catalog_of(ITEMS)) as s:
        with pytest.raises(grpc.RpcError) as e:
            s.stub.Recall(recall_pb2.RecallRequest(user_id="u1", k=10))
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


BAD_REQUESTS = [
    (dict(user_id="u", k=0), "k"),
    (dict(user_id="u", k=1001), "k"),
    (dict(k=5), "user_id"),
    (dict(user_id="u", k=5, history_item_ids=[f"h{i}" for i in range(11)]), "history_item_ids"),
    (dict(user_id="u", k=5, exclude_item_ids=[f"x{i}" for i in range(21)]), "exclude_item_ids"),
    (
        dict(user_id="u", k=5, history_item_ids=["i1", "i2"], history_events=["click"]),
        "history_events",
    ),
    (
        dict(user_id="u", k=5, history_item_ids=["i1"], history_timestamps=[1, 2]),
        "history_timestamps",
    ),
    (dict(user_id="u", k=5, history_item_ids=["i1", ""]), "history_item_ids"),
    (dict(user_id="u", k=5, weight_override={"nope": 1.0}), "weight_override.nope"),
    (dict(user_id="u", k=5, weight_override={"a": float("nan")}), "weight_override.a"),
    (dict(user_id="u", k=5, weight_override={"a": -1.0}), "weight_override.a"),
    (dict(user_id="u", k=5, weight_override={"a": float("inf")}), "weight_override.a"),
]


@pytest.mark.parametrize(("fields", "field_name"), BAD_REQUESTS)
def test_bad_input_is_invalid_argument_naming_the_field(tmp_path, fields, field_name):
    config = two_channel_config(
        tmp_path, server={"max_history": 10, "max_exclude": 20, "allow_weight_override": True}
    )
    with serve(config, catalog_of(ITEMS)) as s:
        with pytest.raises(grpc.RpcError) as e:
            s.stub.Recall(recall_pb2.RecallRequest(**fields))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith(field_name + ":"), e.value.details()
        assert health_status(s) == health_pb2.HealthCheckResponse.SERVING
        assert s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=3)).item_ids


def test_weight_override_refused_unless_config_allows(server):
    with pytest.raises(grpc.RpcError) as e:
        server.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5, weight_override={"a": 2}))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "weight_override" in e.value.details()


def test_weight_override_changes_fused_order_as_rrf_says(tmp_path):
    config = two_channel_config(tmp_path, server={"allow_weight_override": True})
    with serve(config, catalog_of(ITEMS)) as s:
        base = list(s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10)).item_ids)
        # equal weights: i2 (a rank 2) = 1/62 beats i5 (b rank 2) only by priority
        assert base.index("i2") < base.index("i5")
        boosted = s.stub.Recall(
            recall_pb2.RecallRequest(user_id="u", k=10, weight_override={"b": 3.0})
        )
        # b x3: i3 = 3/61 + 1/63 > i1 = 1/61 + 3/63; i5 = 3/62 > i2 = 1/62
        assert boosted.item_ids[0] == "i3"
        boosted_ids = list(boosted.item_ids)
        assert boosted_ids.index("i5") < boosted_ids.index("i2")
        assert math.isclose(boosted.scores[0], 3 / 61 + 1 / 63, rel_tol=1e-6)
        zero = s.stub.Recall(
            recall_pb2.RecallRequest(user_id="u", k=10, weight_override={"b": 0.0})
        )
        assert "i5" not in zero.item_ids
        assert {c.channel: c.status for c in zero.channels}[
            "b"
        ] == recall_pb2.CHANNEL_STATUS_SKIPPED


def test_experiment_variant_weights_reach_the_response(tmp_path):
    config = two_channel_config(
        tmp_path,
        experiments=[
            {
                "name": "exp",
                "salt": "s1",
                "variants": [
                    {"name": "only_b", "traffic": 1.0, "plan": {"weights": {"a": 0.0, "b": 1.0}}}
                ],
            }
        ],
    )
    with serve(config, catalog_of(ITEMS)) as s:
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="anyone", k=10))
        assert (resp.experiment, resp.variant) == ("exp", "only_b")
        assert list(resp.item_ids) == ["i3", "i5", "i1"]


def test_admin_reload_config_swaps_weights_without_restart(tmp_path):
    current = {"cfg": two_channel_config(tmp_path, admin={"token": "t0k"})}
    with serve(current["cfg"], catalog_of(ITEMS), reload_config=lambda: current["cfg"]) as s:
        meta = (("authorization", "Bearer t0k"),)
        assert s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids == ["i1"]
        current["cfg"] = two_channel_config(
            tmp_path, admin={"token": "t0k"}, plan={"weights": {"a": 0.1, "b": 1.0}}
        )
        resp = s.admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=meta)
        assert resp.config_generation == 2
        assert s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=1)).item_ids == ["i3"]


def test_admin_calls_need_the_token(tmp_path):
    with serve(two_channel_config(tmp_path, admin={"token": "secret"}), catalog_of(ITEMS)) as s:
        with pytest.raises(grpc.RpcError) as e:
            s.admin.ReloadConfig(admin_pb2.ReloadConfigRequest())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            s.admin.ReloadConfig(
                admin_pb2.ReloadConfigRequest(), metadata=(("authorization", "Bearer wrong"),)
            )
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_delete_removes_item_from_every_channel(tmp_path):
    with serve(two_channel_config(tmp_path, admin={"token": "t"}), catalog_of(ITEMS)) as s:
        s.admin.DeleteItems(
            admin_pb2.DeleteItemsRequest(item_ids=["i1"]), metadata=(("authorization", "Bearer t"),)
        )
        resp = s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=10))
        assert "i1" not in resp.item_ids and "i3" in resp.item_ids


def test_graceful_stop_marks_not_serving(server):
    server.call(lambda: server.running.set_serving(False))
    assert health_status(server) == health_pb2.HealthCheckResponse.NOT_SERVING


def test_engine_status_enum_matches_proto():
    for st in Status:
        assert recall_pb2.ChannelStatus.Value(f"CHANNEL_STATUS_{st.name}") == st.value


def test_the_engine_repairs_an_untrusted_channels_answer(tmp_path):
    # duplicates, an excluded id, an unknown id, a wrong category and more than k: the
    # safety net keeps the allowed ids, first occurrence, at most the channel's k
    config = make_config(
        {
            "channels": {
                "sloppy": {
                    "plugin": "careless",
                    "k": 3,
                    "params": {
                        "items": ["i1", "i1", "i2", "ghost", "i3", "i5", "i4"],
                        "scores": [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
                    },
                }
            }
        },
        tmp_path,
    )
    with serve(config, catalog_of(ITEMS, CATS)) as s:
        resp = s.stub.Recall(
            recall_pb2.RecallRequest(user_id="u", k=10, exclude_item_ids=["i2"], categories=["red"])
        )
    assert list(resp.item_ids) == ["i1", "i3", "i5"]
    assert resp.channels[0].returned == 3


def _in_flight(channel: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("recall_channel_in_flight", {"channel": channel}) or 0.0


def test_overload_max_in_flight_sheds_requests_beyond_the_bound_with_a_retry_hint(tmp_path):
    """Three requests at once to a channel that takes 0.25 s, ``[overload]
    max_in_flight = 1`` and a fixed bound: one is admitted and answered, the others are
    refused at once with RESOURCE_EXHAUSTED and a retry hint, never queued."""
    config = make_config(
        {
            "overload": {"max_in_flight": 1, "min_in_flight": 1, "target_loop_lag_ms": 0},
            "channels": {
                "queued": {
                    "plugin": "hang",
                    "timeout_ms": 2000,
                    "params": {"items": ["i1"], "sleep_s": 0.25},
                }
            },
        },
        tmp_path,
    )
    seen: list[float] = []
    with serve(config, catalog_of(ITEMS)) as s:
        futures = [
            s.stub.Recall.future(recall_pb2.RecallRequest(user_id=f"u{n}", k=5), timeout=10)
            for n in range(3)
        ]
        wait_until(
            lambda: seen.append(_in_flight("queued")) or all(f.done() for f in futures),
            15,
            interval=0.005,
            what="three answers",
        )
    ok = [f for f in futures if f.exception() is None]
    shed = [f.exception() for f in futures if f.exception() is not None]
    assert len(ok) >= 1 and all(list(f.result().item_ids) == ["i1"] for f in ok)
    assert shed and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in shed)
    assert all(dict(e.trailing_metadata()).get("retry-after-ms") for e in shed)
    assert max(seen) == 1, seen


def test_a_negative_overload_bound_is_a_config_error_naming_the_key(tmp_path):
    from recall_engine.config import ConfigError

    with pytest.raises(ConfigError, match=r"^overload\.max_in_flight"):
        make_config(
            {
                "overload": {"max_in_flight": -1},
                "channels": {"a": {"plugin": "fixed", "params": {"items": ["i1"]}}},
            },
            tmp_path,
        )


def test_a_second_server_on_a_taken_address_fails_to_bind_instead_of_sharing_it(tmp_path):
    """gRPC binds with SO_REUSEPORT by default, so a second ``serve`` started on the
    address of one already serving would silently take half its calls (found by running
    two by mistake). Outside ``serve --processes N`` the port is not shared."""
    from recall_engine.serving.engine import Engine
    from recall_engine.serving.server import create_server

    with serve(two_channel_config(tmp_path), catalog_of(ITEMS, CATS)) as first:
        addr = f"127.0.0.1:{first.port}"
        second = Engine(two_channel_config(tmp_path), catalog=catalog_of(ITEMS, CATS))

        async def bind_again():
            return await create_server(second, addr)

        with pytest.raises(OSError, match=f"could not bind {addr}"):
            asyncio.run_coroutine_threadsafe(bind_again(), first.loop).result(30)
        resp = first.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=3), timeout=10)
        assert len(resp.item_ids) == 3
