"""Plugin discovery through real entry points, with deliberately broken plugins."""

from __future__ import annotations

import pytest

from recall_engine.serving.engine import Engine
from recall_engine.serving.registry import PluginError, discover, load_factory, resolve
from tests.harness import catalog_of, make_config


def test_builtin_channels_are_registered_like_third_party_ones():
    plugins = discover()
    assert {"popular", "cf", "content", "llm"} <= set(plugins)
    assert plugins["popular"].dist == "recall-engine"
    assert plugins["fixed"].dist == "recall_engine_test_plugins"


def test_import_error_names_the_plugin():
    with pytest.raises(PluginError, match='plugin "broken_import".*failed to import'):
        load_factory(discover()["broken_import"])


def test_object_without_the_contract_is_rejected_at_registration():
    with pytest.raises(PluginError, match='plugin "not_a_channel".*missing: recall'):
        load_factory(discover()["not_a_channel"])


def test_duplicate_plugin_names_are_rejected(duplicate_plugin):
    with pytest.raises(PluginError, match='plugin "fixed": registered twice'):
        discover()


def test_blocked_plugin_is_not_discovered(duplicate_plugin):
    assert "fixed" not in discover(blocked=["fixed"])


def test_unknown_plugin_lists_installed_ones():
    with pytest.raises(PluginError, match='plugin "nope": not installed.*popular'):
        resolve(discover(), "nope")


def _engine(tmp_path, required: bool) -> Engine:
    config = make_config(
        {
            "channels": {
                "good": {"plugin": "fixed", "params": {"items": ["a"]}},
                "faulty": {"plugin": "fail_load", "required": required},
            }
        },
        tmp_path,
    )
    return Engine(config, catalog=catalog_of(["a"]))


def test_required_channel_that_fails_to_load_stops_startup(tmp_path):
    engine = _engine(tmp_path, required=True)
    with pytest.raises(PluginError, match='channel "faulty" \\(plugin "fail_load"\\): load failed'):
        engine.load()
    assert not engine.ready


def test_optional_channel_that_fails_to_load_is_skipped(tmp_path):
    engine = _engine(tmp_path, required=False)
    engine.load()
    assert [cc.name for cc, _ in engine.channel_infos()] == ["good"]
    engine.close()
