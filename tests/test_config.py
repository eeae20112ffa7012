"""Config loading and validation: every error names the key path of the bad value."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from recall_engine.config import (
    DEFAULT_TOKEN_ENV,
    ConfigError,
    ServerConfig,
    default_config,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "config.example.toml"


def _service_configs() -> list[Path]:
    """Every service config in the repository: its TOML files but packaging ones."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("build", "demo")]
        found += [Path(folder) / f for f in files if f.endswith(".toml") and f != "pyproject.toml"]
    return sorted(found)


SERVICE_CONFIGS = _service_configs()
CHANNELS = "[channels.popular]\n[channels.cf]\n"


def _load(tmp_path: Path, text: str, **kw):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, **kw)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text, environ={})
    return str(exc.value)


# --------------------------------------------------------------------------- happy paths


def test_example_config_loads_with_channels_in_declaration_order():
    cfg = load_config(EXAMPLE, environ={})
    assert list(cfg.channels) == ["popular", "cf", "content", "llm"]
    assert cfg.source == EXAMPLE
    assert cfg.artifacts_root == EXAMPLE.parent / "artifacts"
    assert cfg.channels["popular"].required and not cfg.channels["cf"].required
    assert cfg.channels["popular"].params == {"half_life_days": 0.0}
    assert cfg.plugins.blocked == ()
    assert cfg.channels["cf"].artifacts == EXAMPLE.parent / "artifacts" / "cf"
    assert cfg.plan.fusion == "rrf"
    assert cfg.plan.fusion_params["rrf_k"] == 60
    assert dict(cfg.plan.channel_k) == {"popular": 200, "cf": 150, "content": 200, "llm": 100}
    assert [e.name for e in cfg.experiments] == ["fusion-weights-2026-11", "weighted-sum-trial"]
    assert cfg.experiments[0].salt == "fw26"
    assert cfg.experiments[1].salt == "weighted-sum-trial"
    assert not cfg.experiments[1].enabled
    trial = cfg.experiments[1].variants[0].plan
    assert (trial.fusion, trial.fusion_params["normalization"]) == ("weighted_sum", "zscore")


def test_service_configs_include_the_example_and_the_benchmark_one():
    found = {p.relative_to(ROOT).as_posix() for p in SERVICE_CONFIGS}
    assert {"deploy/config.example.toml", "bench/load-1m.toml"} <= found


@pytest.mark.parametrize("path", SERVICE_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_service_config_loads_and_its_plugin_params_fit_the_plugins(path):
    from recall_engine.serving.registry import prepare

    cfg = load_config(path, environ={})
    ready, failed = prepare(cfg)  # imports the plugins and checks params, reads no artifact
    assert failed == {}
    assert list(ready) == list(cfg.enabled_channels())
    for name, prepared in ready.items():
        assert prepared.params is not None, f"{name}: a built-in plugin declares its Params"


def test_example_variant_plans_inherit_omitted_keys_from_default_plan():
    cfg = load_config(EXAMPLE, environ={})
    control, llm_heavy = cfg.experiments[0].variants
    assert (control.name, control.traffic) == ("control", 0.45)
    assert dict(control.plan.weights) == {"popular": 0.2, "cf": 1.0, "content": 0.0, "llm": 0.0}
    assert control.plan.channel_k == cfg.plan.channel_k
    assert control.plan.fusion == "rrf"
    assert control.plan.fusion_params == cfg.plan.fusion_params
    assert llm_heavy.plan.channel_k["llm"] == 300
    assert llm_heavy.plan.channel_k["cf"] == 200  # table replaced whole: channel k again
    assert llm_heavy.plan.active_channels() == ("popular", "cf", "llm")


def test_minimal_config_gets_documented_defaults(tmp_path):
    cfg = _load(tmp_path, CHANNELS, environ={})
    assert cfg.server == ServerConfig()
    assert cfg.server.metrics_addr == "127.0.0.1:9464"
    assert cfg.admin.token is None and cfg.admin.token_env == DEFAULT_TOKEN_ENV
    assert not cfg.tls.enabled and cfg.tls.client_ca is None
    cf = cfg.channels["cf"]
    assert (cf.plugin, cf.enabled, cf.required, cf.timeout_ms, cf.k) == (
        "cf",
        True,
        False,
        100,
        200,
    )
    assert cf.version is None and dict(cf.params) == {}
    assert dict(cfg.plan.weights) == {"popular": 1.0, "cf": 1.0}
    assert dict(cfg.plan.channel_k) == {"popular": 200, "cf": 200}
    assert cfg.plan.fusion == "rrf"
    assert cfg.experiments == ()


def test_empty_metrics_addr_disables_metrics(tmp_path):
    cfg = _load(tmp_path, '[server]\nmetrics_addr = ""\n' + CHANNELS)
    assert cfg.server.metrics_addr is None


def test_plan_weights_cover_every_enabled_channel_in_priority_order(tmp_path):
    text = (
        "[channels.a]\n[channels.b]\n[channels.c]\n[channels.off]\nenabled = false\n"
        "[plan]\nweights = { c = 2.0, a = 0.5 }\nchannel_k = { b = 7 }\n"
    )
    plan = _load(tmp_path, text).plan
    assert list(plan.weights.items()) == [("a", 0.5), ("b", 0.0), ("c", 2.0)]
    assert dict(plan.channel_k) == {"a": 200, "b": 7, "c": 200}
    assert plan.active_channels() == ("a", "c")


def test_variant_changing_fusion_drops_inherited_fusion_params(tmp_path):
    text = CHANNELS + (
        "[plan]\nfusion_params = { rrf_k = 10 }\n"
        '[[experiments]]\nname = "e"\n'
        '[[experiments.variants]]\nname = "same"\ntraffic = 0.3\n'
        '[[experiments.variants]]\nname = "explicit"\ntraffic = 0.3\n'
        '[experiments.variants.plan]\nfusion = "rrf"\n'
        '[[experiments.variants]]\nname = "other"\ntraffic = 0.3\n'
        '[experiments.variants.plan]\nfusion = "weighted_sum"\n'
    )
    cfg = _load(tmp_path, text)
    same, explicit, other = cfg.experiments[0].variants
    assert same.plan.fusion_params["rrf_k"] == 10
    assert explicit.plan.fusion_params["rrf_k"] == 10  # same strategy as the default
    assert other.plan.fusion == "weighted_sum"
    assert dict(other.plan.fusion_params) == {"normalization": "minmax"}  # its defaults


def test_a_variant_that_writes_its_own_cold_quota_serves_it_without_the_learned_gate(tmp_path):
    text = CHANNELS + (
        "[plan]\ncold_quota = 0.05\n"
        '[[experiments]]\nname = "e"\n'
        '[[experiments.variants]]\nname = "inherits"\ntraffic = 0.3\n'
        '[[experiments.variants]]\nname = "own"\ntraffic = 0.3\n'
        "[experiments.variants.plan]\ncold_quota = 0.1\n"
        '[[experiments.variants]]\nname = "own_gated"\ntraffic = 0.3\n'
        "[experiments.variants.plan]\ncold_quota = 0.1\nlearned_cold = true\n"
    )
    cfg = _load(tmp_path, text)
    assert cfg.plan.learned_cold and cfg.plan.cold_quota == 0.05
    inherits, own, own_gated = cfg.experiments[0].variants
    assert inherits.plan.learned_cold and inherits.plan.cold_quota == 0.05
    assert not own.plan.learned_cold and own.plan.cold_quota == 0.1  # as an A/B test set it
    assert own_gated.plan.learned_cold and own_gated.plan.cold_quota == 0.1
    off = _load(tmp_path, CHANNELS + "[plan]\nlearned_cold = false\n")
    assert not off.plan.learned_cold


def test_relative_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    conf_dir = tmp_path / "conf"
    (conf_dir / "tls").mkdir(parents=True)
    for name in ("s.crt", "s.key", "ca.crt"):
        (conf_dir / "tls" / name).write_text("x")
    monkeypatch.chdir(tmp_path)  # the working folder must not matter
    text = (
        '[tls]\ncert = "tls/s.crt"\nkey = "tls/s.key"\nclient_ca = "tls/ca.crt"\n'
        '[artifacts]\nroot = "arts"\n'
        '[channels.popular]\n[channels.cf]\nartifacts = "elsewhere/cf"\nversion = "v3"\n'
    )
    cfg = _load(conf_dir, text)
    assert cfg.tls.enabled
    assert cfg.tls.cert == conf_dir / "tls" / "s.crt"
    assert cfg.tls.key == conf_dir / "tls" / "s.key"
    assert cfg.tls.client_ca == conf_dir / "tls" / "ca.crt"
    assert cfg.artifacts_root == conf_dir / "arts"
    assert cfg.channels["popular"].artifacts == conf_dir / "arts" / "popular"
    assert cfg.channels["cf"].artifacts == conf_dir / "elsewhere" / "cf"
    assert cfg.channels["cf"].version == "v3"


def test_absolute_artifacts_root_is_kept(tmp_path):
    root = tmp_path / "abs"
    cfg = _load(tmp_path, f'[artifacts]\nroot = "{root.as_posix()}"\n' + CHANNELS)
    assert cfg.artifacts_root == root


def test_admin_token_read_from_default_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(DEFAULT_TOKEN_ENV, "s3cret")
    assert _load(tmp_path, CHANNELS).admin.token == "s3cret"


def test_admin_token_read_from_named_env_var(tmp_path):
    text = '[admin]\ntoken_env = "MY_TOKEN"\n' + CHANNELS
    assert _load(tmp_path, text, environ={"MY_TOKEN": "abc"}).admin.token == "abc"
    assert _load(tmp_path, text, environ={}).admin.token is None


def test_admin_token_in_file_wins_over_env_and_is_not_in_repr(tmp_path):
    text = '[admin]\ntoken = "from-file"\n' + CHANNELS
    cfg = _load(tmp_path, text, environ={DEFAULT_TOKEN_ENV: "from-env"})
    assert cfg.admin.token == "from-file"
    assert "from-file" not in repr(cfg)


def test_config_values_are_read_only(tmp_path):
    cfg = _load(tmp_path, "[channels.popular]\n[channels.popular.params]\nx = [1, 2]\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.max_batch = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.plan.weights["popular"] = 3.0  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.channels["popular"].params["x"] = 1  # type: ignore[index]
    assert cfg.channels["popular"].params["x"] == (1, 2)


def test_default_config_has_builtin_channels_and_rrf(tmp_path):
    cfg = default_config(tmp_path / "arts")
    assert list(cfg.channels) == ["popular", "cf", "content", "llm"]
    assert [c.required for c in cfg.channels.values()] == [True, False, False, False]
    assert all(c.enabled for c in cfg.channels.values())
    assert cfg.channels["llm"].artifacts == tmp_path / "arts" / "llm"
    assert cfg.plan.fusion == "rrf"
    assert dict(cfg.plan.weights) == {"popular": 0.1, "cf": 1.0, "content": 0.25, "llm": 0.25}
    assert cfg.experiments == () and cfg.source is None


def test_parse_config_accepts_a_dict(tmp_path):
    cfg = parse_config({"channels": {"x": {"k": 5}}}, tmp_path)
    assert cfg.plan.channel_k["x"] == 5 and cfg.artifacts_root == tmp_path / "artifacts"


# --------------------------------------------------------------------------- errors

EXP = '[[experiments]]\nname = "e"\n'
VAR = '[[experiments.variants]]\nname = "{}"\ntraffic = {}\n'

ERRORS = [
    # unknown keys, at every level
    ("[sever]\n" + CHANNELS, "sever: unknown key"),
    ("[server]\nworker = 2\n" + CHANNELS, "server.worker: unknown key"),
    (
        "[server]\nworker_port_base = 70000\n" + CHANNELS,
        "server.worker_port_base: must be a port number 0-65535, got 70000",
    ),
    (
        "[server]\nworker_port_base = -1\n" + CHANNELS,
        "server.worker_port_base: must be a port number 0-65535, got -1",
    ),
    ("[admin]\ntokn = 'x'\n" + CHANNELS, "admin.tokn: unknown key"),
    ("[tls]\ncrt = ''\n" + CHANNELS, "tls.crt: unknown key"),
    ("[artifacts]\nrot = 'a'\n" + CHANNELS, "artifacts.rot: unknown key"),
    (CHANNELS + "timout_ms = 5\n", "channels.cf.timout_ms: unknown key"),
    (CHANNELS + "[plan]\nweight = {}\n", "plan.weight: unknown key"),
    (CHANNELS + EXP + "salty = 'x'\n", "experiments[0].salty: unknown key"),
    (CHANNELS + EXP + VAR.format("a", 0.5) + "trafic = 1\n", "experiments[0].variants[0].trafic"),
    (
        CHANNELS + EXP + VAR.format("a", 0.5) + "[experiments.variants.plan]\nfuson = 'rrf'\n",
        "experiments[0].variants[0].plan.fuson: unknown key",
    ),
    # types and ranges
    (CHANNELS + "timeout_ms = -1\n", "channels.cf.timeout_ms: must be a positive integer, got -1"),
    (CHANNELS + "k = 0\n", "channels.cf.k: must be a positive integer, got 0"),
    (CHANNELS + "k = 1.5\n", "channels.cf.k: must be a positive integer, got 1.5"),
    (CHANNELS + "enabled = 'yes'\n", "channels.cf.enabled: must be true or false, got 'yes'"),
    (CHANNELS + "params = 3\n", "channels.cf.params: must be a table, got 3"),
    (CHANNELS + "plugin = ''\n", "channels.cf.plugin: must be a non-empty string, got ''"),
    (CHANNELS + "version = '../x'\n", "channels.cf.version: must be a plain folder name"),
    (
        "[server]\nmax_batch = '8'\n" + CHANNELS,
        "server.max_batch: must be a positive integer, got '8'",
    ),
    (
        "[server]\nmax_batch = true\n" + CHANNELS,
        "server.max_batch: must be a positive integer, got true",
    ),
    ("[server]\nmax_history = -1\n" + CHANNELS, "server.max_history: must be an integer >= 0"),
    ("[server]\ngrace_s = -1.0\n" + CHANNELS, "server.grace_s: must be finite and >= 0, got -1"),
    ("[server]\nrequest_timeout_ms = 0\n" + CHANNELS, "server.request_timeout_ms: must be a"),
    ("[server]\nlog_level = 'LOUD'\n" + CHANNELS, "server.log_level: must be one of"),
    ("[server]\naddr = 'localhost'\n" + CHANNELS, "server.addr: must be HOST:PORT"),
    ("[server]\naddr = 'h:70000'\n" + CHANNELS, "server.addr: must be HOST:PORT"),
    ("[server]\nmetrics_addr = ':9'\n" + CHANNELS, "server.metrics_addr: must be HOST:PORT"),
    ("[server]\nallow_weight_override = 1\n" + CHANNELS, "server.allow_weight_override:"),
    ("server = 3\n" + CHANNELS, "server: must be a table, got 3"),
    # channels
    ("", "channels: at least one channel must be enabled"),
    ("[channels.a]\nenabled = false\n", "channels: at least one channel must be enabled"),
    ('[channels."a b"]\n', "channels.a b: channel name must be"),
    # plans: weights
    (
        CHANNELS + "[plan]\nweights = { foo = 1.0 }\n",
        "plan.weights.foo: unknown channel 'foo' (channels: cf, popular)",
    ),
    (
        CHANNELS + "[channels.off]\nenabled = false\n[plan]\nweights = { off = 1.0 }\n",
        "plan.weights.off: channel 'off' is disabled",
    ),
    (
        CHANNELS + "[plan]\nweights = { cf = -0.5 }\n",
        "plan.weights.cf: must be finite and >= 0, got -0.5",
    ),
    (
        CHANNELS + "[plan]\nweights = { cf = inf }\n",
        "plan.weights.cf: must be finite and >= 0, got inf",
    ),
    (CHANNELS + "[plan]\nweights = { cf = 'high' }\n", "plan.weights.cf: must be finite and >= 0"),
    (
        CHANNELS + "[plan]\nweights = { cf = 0.0 }\n",
        "plan.weights: no enabled channel has a weight > 0",
    ),
    (CHANNELS + "[plan]\nweights = {}\n", "plan.weights: no enabled channel has a weight > 0"),
    (CHANNELS + "[plan]\nweights = 1\n", "plan.weights: must be a table, got 1"),
    # plans: channel_k and fusion
    (
        CHANNELS + "[plan]\nchannel_k = { nope = 5 }\n",
        "plan.channel_k.nope: unknown channel 'nope'",
    ),
    (
        CHANNELS + "[plan]\nchannel_k = { cf = 0 }\n",
        "plan.channel_k.cf: must be a positive integer",
    ),
    (
        CHANNELS + "[plan]\nfusion = 'borda'\n",
        "plan.fusion: must be one of 'quota', 'rrf', 'weighted_sum', got 'borda'",
    ),
    (CHANNELS + "[plan]\nfusion_params = { rrf_k = -1 }\n", "plan.fusion_params.rrf_k"),
    (CHANNELS + "[plan]\nfusion_params = 5\n", "plan.fusion_params: must be a table"),
    (CHANNELS + "[plan]\nfusion_params = { rrfk = 6 }\n", "plan.fusion_params.rrfk: unknown"),
    # experiments
    (
        CHANNELS + "[experiments]\nname = 'e'\n",
        "experiments: must be an array of tables, got a table",
    ),
    (CHANNELS + "[[experiments]]\nsalt = 's'\n", "experiments[0].name: required"),
    (CHANNELS + EXP, "experiments[0].variants: an experiment needs at least one variant"),
    (
        CHANNELS + EXP + VAR.format("a", 0.7) + VAR.format("b", 0.5),
        "experiments[0].variants: traffic shares sum to 1.2 > 1",
    ),
    (
        CHANNELS + EXP + VAR.format("a", 1.5),
        "experiments[0].variants[0].traffic: must be between 0 and 1, got 1.5",
    ),
    (
        CHANNELS + EXP + VAR.format("a", -0.1),
        "experiments[0].variants[0].traffic: must be between 0 and 1, got -0.1",
    ),
    (
        CHANNELS + EXP + "[[experiments.variants]]\nname = 'a'\n",
        "experiments[0].variants[0].traffic: required",
    ),
    (
        CHANNELS + EXP + "[[experiments.variants]]\ntraffic = 0.1\n",
        "experiments[0].variants[0].name: required",
    ),
    (
        CHANNELS + EXP + VAR.format("a", 0.1) + VAR.format("a", 0.1),
        "experiments[0].variants[1].name: duplicate variant name 'a'",
    ),
    (
        CHANNELS + EXP + VAR.format("a", 0.1) + EXP + VAR.format("b", 0.1),
        "experiments[1].name: duplicate experiment name 'e'",
    ),
    (
        CHANNELS
        + EXP
        + VAR.format("a", 0.1)
        + VAR.format("b", 0.1)
        + "[experiments.variants.plan]\nweights = { cf = nan }\n",
        "experiments[0].variants[1].plan.weights.cf: must be finite and >= 0, got nan",
    ),
    (
        CHANNELS
        + EXP
        + VAR.format("a", 0.1)
        + "[experiments.variants.plan]\nweights = { popular = 0 }\n",
        "experiments[0].variants[0].plan.weights: no enabled channel has a weight > 0",
    ),
    (
        CHANNELS + EXP + VAR.format("a", 0.1) + "[experiments.variants.plan]\nfusion = 'x'\n",
        "experiments[0].variants[0].plan.fusion: must be one of 'quota', 'rrf', 'weighted_sum', "
        "got 'x'",
    ),
    (
        CHANNELS
        + EXP
        + VAR.format("a", 0.1)
        + "[experiments.variants.plan]\nfusion_params = { rrf_k = -1 }\n",
        "experiments[0].variants[0].plan.fusion_params.rrf_k",
    ),
    # tls
    (CHANNELS + "[tls]\ncert = 'missing.crt'\n", "tls.cert: file not found:"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS, ids=[e[1][:60] for e in ERRORS])
def test_invalid_config_error_starts_with_key_path(tmp_path, text, expected):
    assert _error(tmp_path, text).startswith(expected)


def test_every_problem_in_the_file_is_reported_at_once(tmp_path):
    text = "[server]\nmax_batch = 0\ngrace_s = 'x'\nworkrs = 3\n" + CHANNELS
    msg = _error(tmp_path, text)
    assert msg.startswith("server.max_batch: must be a positive integer, got 0; ")
    assert "server.grace_s: must be finite and >= 0, got 'x'" in msg
    assert "server.workrs: unknown key (known: addr, metrics_addr, worker_port_base, " in msg


def test_fusion_params_check_is_not_fooled_by_equal_values_of_another_type():
    from recall_engine.serving.fusion import validate_params

    assert validate_params("rrf", {"rrf_k": 1}) == {"rrf_k": 1.0}
    with pytest.raises(ValueError, match=r"^fusion_params\.rrf_k: must be a positive number"):
        validate_params("rrf", {"rrf_k": True})  # True == 1, but not an rrf_k


def test_params_table_accepts_any_keys(tmp_path):
    cfg = _load(tmp_path, CHANNELS + "[channels.cf.params]\nanything = { nested = 1 }\n")
    assert cfg.channels["cf"].params["anything"]["nested"] == 1


def test_tls_cert_without_key_is_an_error(tmp_path):
    (tmp_path / "s.crt").write_text("x")
    assert _error(tmp_path, "[tls]\ncert = 's.crt'\n" + CHANNELS).startswith("tls.key:")


def test_tls_client_ca_without_server_cert_is_an_error(tmp_path):
    (tmp_path / "ca.crt").write_text("x")
    msg = _error(tmp_path, "[tls]\nclient_ca = 'ca.crt'\n" + CHANNELS)
    assert msg.startswith("tls.client_ca:")


def test_toml_syntax_error_names_file_and_tomllib_message(tmp_path):
    msg = _error(tmp_path, "[server\n")
    assert str(tmp_path / "config.toml") in msg
    assert "invalid TOML" in msg and "line 1" in msg


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config(missing)


def test_worker_port_base_is_read(tmp_path):
    cfg = _load(tmp_path, "[server]\nworker_port_base = 50061\n" + CHANNELS, environ={})
    assert cfg.server.worker_port_base == 50061
    assert ServerConfig().worker_port_base == 0
