"""Artifact reloads over the admin API: swap atomically, keep the old version when the
new one is broken, no failed request during the swap."""

from __future__ import annotations

import threading

import grpc
import pytest

from recall_engine._proto import admin_pb2, recall_pb2
from recall_engine.runtime.catalog import Catalog
from tests.harness import serve, two_popular_versions

TOKEN = (("authorization", "Bearer s3cret"),)


@pytest.fixture()
def built(tmp_path, demo_small):
    config, first, second = two_popular_versions(tmp_path, demo_small, admin={"token": "s3cret"})
    return config, tmp_path, first, second


def top(s, k=5):
    return list(s.stub.Recall(recall_pb2.RecallRequest(user_id="u", k=k)).item_ids)


def test_reload_swaps_to_new_version_without_failed_requests(built):
    config, root, first, second = built
    with serve(config, Catalog.load(root / "catalog")) as s:
        before = top(s)
        failures: list[Exception] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    top(s)
                except grpc.RpcError as e:
                    failures.append(e)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        resp = s.admin.Reload(
            admin_pb2.ReloadRequest(channels=["popular"], version=second), metadata=TOKEN
        )
        stop.set()
        for t in threads:
            t.join()
        assert resp.versions["popular"] == second
        assert not failures
        listed = s.stub.ListChannels(recall_pb2.ListChannelsRequest()).channels
        assert listed[0].version == second
        assert top(s) != before


def test_failed_reload_keeps_the_old_version_serving(built):
    config, root, first, second = built
    (root / "popular" / second / "popular.npz").write_bytes(b"truncated")
    with serve(config, Catalog.load(root / "catalog")) as s:
        before = top(s)
        with pytest.raises(grpc.RpcError) as e:
            s.admin.Reload(
                admin_pb2.ReloadRequest(channels=["popular"], version=second), metadata=TOKEN
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "popular.npz" in e.value.details() and "truncated" in e.value.details()
        assert top(s) == before
        listed = s.stub.ListChannels(recall_pb2.ListChannelsRequest()).channels
        assert listed[0].version == first


def test_reload_of_unknown_channel_is_invalid_argument(built):
    config, root, *_ = built
    with serve(config, Catalog.load(root / "catalog")) as s:
        with pytest.raises(grpc.RpcError) as e:
            s.admin.Reload(admin_pb2.ReloadRequest(channels=["nope"]), metadata=TOKEN)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith("channels:")


def test_reload_needs_the_admin_token(built):
    config, root, *_ = built
    with serve(config, Catalog.load(root / "catalog")) as s:
        with pytest.raises(grpc.RpcError) as e:
            s.admin.Reload(admin_pb2.ReloadRequest(), metadata=(("authorization", "Bearer x"),))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
