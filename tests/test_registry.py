"""Plugin discovery through real entry points, with deliberately broken plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recall_engine.config import ConfigError
from recall_engine.plugins.popular import PopularParams
from recall_engine.serving.engine import Engine
from recall_engine.serving.registry import PluginError, discover, load_factory, prepare, resolve
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


# -- typed plugin params: checked at start-up, before any artifact is read ----------------


def test_typo_in_a_plugin_param_stops_startup_before_any_channel_loads(tmp_path):
    # "faulty" is first and required: had its load run before the params check, start-up
    # would stop on its missing artifacts instead of naming the typo.
    config = make_config(
        {
            "channels": {
                "faulty": {"plugin": "fail_load", "required": True},
                "cf": {"required": False, "params": {"epocs": 3}},
            }
        },
        tmp_path,
    )
    engine = Engine(config, catalog=catalog_of(["a"]))
    with pytest.raises(ConfigError, match=r"^channels\.cf\.params\.epocs: unknown key \(known: "):
        engine.load()
    assert not engine.ready


def test_serve_with_a_plugin_param_typo_exits_naming_the_key_path(tmp_path, fake_plugins):
    # Nothing is built under artifacts/: had the server read an artifact first, it would
    # fail on the required popular channel instead.
    path = tmp_path / "recall.toml"
    path.write_text(
        '[server]\naddr = "127.0.0.1:0"\nmetrics_addr = ""\n'
        "[channels.popular]\nrequired = true\n"
        "[channels.cf]\n[channels.cf.params]\nepocs = 3\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_plugins), os.getcwd()])}
    done = subprocess.run(
        [sys.executable, "-m", "recall_engine", "serve", "--config", str(path), "--log-json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert done.returncode == 2, done.stderr
    [invalid] = [e for e in events if e["event"] == "config_invalid"]
    assert invalid["error"].startswith("channels.cf.params.epocs: unknown key (known: ")
    assert "epochs" in invalid["error"]
    assert not any(e["event"] in ("server_listening", "channel_loaded") for e in events)


def test_channel_gets_its_params_checked_into_the_declared_class(tmp_path):
    config = make_config(
        {"channels": {"pop": {"plugin": "popular", "params": {"half_life_days": 7}}}}, tmp_path
    )
    ready, failed = prepare(config)
    assert failed == {}
    params = ready["pop"].params
    assert isinstance(params, PopularParams) and params.half_life_days == 7.0


def test_bad_param_value_names_the_key_and_the_value(tmp_path):
    config = make_config(
        {"channels": {"pop": {"plugin": "popular", "params": {"half_life_days": "7"}}}}, tmp_path
    )
    with pytest.raises(ConfigError) as e:
        prepare(config)
    assert str(e.value) == "channels.pop.params.half_life_days: must be finite and >= 0, got '7'"


def test_plugin_without_declared_params_gets_them_unchecked(tmp_path):
    config = make_config(
        {"channels": {"good": {"plugin": "fixed", "params": {"items": ["a"], "anything": 1}}}},
        tmp_path,
    )
    ready, _ = prepare(config)
    assert ready["good"].params is None
    engine = Engine(config, catalog=catalog_of(["a"]))
    engine.load()
    try:
        [(cc, _)] = engine.channel_infos()
        assert dict(cc.params) == {"items": ("a",), "anything": 1}
    finally:
        engine.close()


# -- [plugins] blocked --------------------------------------------------------------------


def _with_broken(tmp_path, required: bool, blocked: list[str]):
    return make_config(
        {
            "plugins": {"blocked": blocked},
            "channels": {
                "good": {"plugin": "fixed", "params": {"items": ["a"]}},
                "bad": {"plugin": "broken_import", "required": required},
            },
        },
        tmp_path,
    )


def test_blocked_plugin_is_never_imported_and_its_optional_channel_is_skipped(tmp_path):
    _, failed = prepare(_with_broken(tmp_path, False, []))
    assert "failed to import" in failed["bad"]  # the control: imported, failed, skipped

    config = _with_broken(tmp_path, False, ["broken_import"])
    ready, failed = prepare(config)
    assert list(ready) == ["good"]
    assert failed["bad"].startswith('channel "bad" (plugin "broken_import"): the plugin is ')
    assert "blocked by the config ([plugins] blocked)" in failed["bad"]
    assert "failed to import" not in failed["bad"]
    engine = Engine(config, catalog=catalog_of(["a"]))
    engine.load()
    try:
        assert [cc.name for cc, _ in engine.channel_infos()] == ["good"]
    finally:
        engine.close()


def test_blocked_plugin_of_a_required_channel_stops_startup_naming_the_block(tmp_path):
    engine = Engine(_with_broken(tmp_path, True, ["broken_import"]), catalog=catalog_of(["a"]))
    with pytest.raises(PluginError, match=r'channel "bad" \(plugin "broken_import"\): .*blocked'):
        engine.load()
    assert not engine.ready


def test_blocking_a_duplicated_name_in_the_config_lets_startup_proceed(tmp_path, duplicate_plugin):
    def config(blocked: list[str]):
        return make_config(
            {
                "plugins": {"blocked": blocked},
                "channels": {"b": {"plugin": "fixed_b", "params": {"items": ["a"]}}},
            },
            tmp_path,
        )

    with pytest.raises(PluginError, match=r"block the name in the config: \[plugins\] blocked"):
        Engine(config([]), catalog=catalog_of(["a"])).load()
    engine = Engine(config(["fixed"]), catalog=catalog_of(["a"]))
    engine.load()  # what the error message tells the operator to do, done
    try:
        assert [cc.name for cc, _ in engine.channel_infos()] == ["b"]
    finally:
        engine.close()


def test_resolving_a_blocked_plugin_says_it_is_blocked():
    with pytest.raises(PluginError, match='plugin "popular": blocked by the config'):
        resolve(discover(blocked=["popular"]), "popular")


# -- plugins of other distributions that declare Params ------------------------------------


@pytest.fixture()
def typed_plugins(fake_plugins):
    """A distribution registering plugins that declare their Params."""
    site = fake_plugins.parent / "typed_site"
    info = site / "recall_engine_typed_plugins-0.0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: recall_engine_typed_plugins\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[recall_engine.channels]\n"
        "typed = tests_fake_plugins:TypedChannel\n"
        "uncheckable = tests_fake_plugins:UncheckableParamsChannel\n"
    )
    sys.path.insert(0, str(site))
    yield
    sys.path.remove(str(site))


def test_engine_hands_the_channel_its_checked_params(tmp_path, typed_plugins):
    config = make_config(
        {"channels": {"t": {"plugin": "typed", "params": {"items": ["a"], "boost": 2}}}},
        tmp_path,
    )
    engine = Engine(config, catalog=catalog_of(["a"]))
    engine.load()
    try:
        [(_, info)] = engine.channel_infos()
        assert info.details == {"boost": "2.0", "handed": "TypedParams"}
    finally:
        engine.close()


def test_third_party_param_typo_names_the_key_path(tmp_path, typed_plugins):
    config = make_config({"channels": {"t": {"plugin": "typed", "params": {"bost": 2}}}}, tmp_path)
    with pytest.raises(ConfigError) as e:
        Engine(config, catalog=catalog_of(["a"])).load()
    assert str(e.value) == "channels.t.params.bost: unknown key (known: items, boost)"


def test_params_class_that_cannot_be_checked_is_rejected_at_registration(typed_plugins):
    with pytest.raises(
        PluginError, match=r'plugin "uncheckable" .*Params Opaque cannot be checked'
    ):
        load_factory(discover()["uncheckable"])


def test_build_checks_every_channels_params_before_writing_anything(tmp_path):
    from recall_engine.offline.build import build_all

    config = make_config({"channels": {"cf": {"params": {"epocs": 3}}}}, tmp_path)
    out = tmp_path / "artifacts"
    with pytest.raises(ConfigError, match=r"^channels\.cf\.params\.epocs: unknown key"):
        build_all(None, [], out, config)  # type: ignore[arg-type]
    assert not out.exists()
