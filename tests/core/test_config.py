import subprocess
import sys

import pytest
import yaml

from core import config
from core.config import SCHEMA, Key, dump, load_config, register_section, resolve
from core.errors import ConfigError
from tests.mpi import ROOT


def _write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_filled_for_every_schema_key(tmp_path):
    cfg = load_config(_write(tmp_path, "model: mlp\noptimizer:\n  lr: 0.1\n"))
    assert cfg["model"] == "mlp"
    assert cfg["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
                                "weight_decay": 5e-4, "eps": 1e-10, "scale_lr": None}
    assert cfg["sync_rule"] == "BSP" and cfg["avg_freq"] == 1
    assert cfg["threads"] is None and cfg["max_steps"] is None
    assert cfg["model_options"] == {}

    def keys(schema):
        return {k: keys(v) if isinstance(v, dict) else None for k, v in schema.items()}

    def shape(cfg_, schema):
        return {k: shape(cfg_[k], v) if isinstance(v, dict) else None for k, v in schema.items()}

    assert list(cfg) == list(SCHEMA)
    assert shape(cfg, SCHEMA) == keys(SCHEMA)


def test_defaults_alone_and_empty_file(tmp_path):
    assert load_config(None) == load_config(_write(tmp_path, ""))
    assert load_config(_write(tmp_path, "optimizer:\ndata:\n"))["data"]["num_classes"] == 10


def test_default_values_pass_their_own_checks():
    for path_value in config._leaf_paths(SCHEMA):
        node = SCHEMA
        for part in path_value.split("."):
            node = node[part]
        assert node.check(node.default)[1] is None, path_value


def test_int_accepted_for_float_and_converted(tmp_path):
    cfg = load_config(_write(tmp_path, "optimizer:\n  lr: 1\n  weight_decay: 5e-4\nepochs: 3\n"))
    assert cfg["optimizer"]["lr"] == 1.0 and isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["optimizer"]["weight_decay"] == 5e-4
    assert cfg["epochs"] == 3 and isinstance(cfg["epochs"], int)


def test_overrides_are_typed(tmp_path):
    path = _write(tmp_path, "optimizer:\n  lr: 0.05\n")
    cfg = load_config(path, overrides=["optimizer.lr=0.1", "optimizer.weight_decay=1e-4",
                                       "optimizer.nesterov=true", "batch_size=32",
                                       "epochs=0.5", "max_steps=null", "threads=2",
                                       "data.num_train=64", "sync_rule=EASGD",
                                       "model_options.width=64", "model_options.a.b=[1, 2]",
                                       "lr_schedule={policy: cosine, warmup_epochs: 1}"])
    assert cfg["optimizer"]["lr"] == 0.1 and isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["optimizer"]["weight_decay"] == 1e-4
    assert cfg["optimizer"]["nesterov"] is True
    assert cfg["batch_size"] == 32 and cfg["epochs"] == 0.5 and cfg["max_steps"] is None
    assert cfg["threads"] == 2
    assert cfg["data"]["num_train"] == 64
    assert cfg["sync_rule"] == "EASGD"
    assert cfg["model_options"] == {"width": 64, "a": {"b": [1, 2]}}
    assert cfg["lr_schedule"]["policy"] == "cosine"
    assert cfg["lr_schedule"]["warmup_epochs"] == 1
    assert cfg["lr_schedule"]["gamma"] == 0.1   # merged into the section, not replaced


def test_overrides_apply_in_order_and_over_the_file(tmp_path):
    path = _write(tmp_path, "seed: 3\noptimizer:\n  lr: 0.05\n  momentum: 0.5\n")
    cfg = load_config(path, ["seed=4", "seed=5", "optimizer={lr: 0.2}"])
    assert cfg["seed"] == 5
    assert cfg["optimizer"]["lr"] == 0.2 and cfg["optimizer"]["momentum"] == 0.5


def test_dump_roundtrip(tmp_path):
    cfg = load_config(None, ["model_options.width=8", "optimizer.weight_decay=1e-10",
                             "lr_schedule.policy=poly"])
    text = dump(cfg)
    assert yaml.safe_load(text) == cfg
    assert list(yaml.safe_load(text)) == list(SCHEMA)
    out = tmp_path / "resolved.yaml"
    dump(cfg, out)
    assert load_config(out) == cfg


def _error(tmp_path, text, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), overrides)
    return str(info.value)


def test_unknown_key_names_path_allowed_keys_and_closest_match(tmp_path):
    msg = _error(tmp_path, "optimizer:\n  lr: 0.1\n  momentm: 0.9\n")
    assert "run.yaml" in msg
    assert "unknown key 'optimizer.momentm'" in msg
    assert "name, lr, momentum, nesterov, weight_decay" in msg
    assert "did you mean 'optimizer.momentum'?" in msg


def test_unknown_top_level_key_suggests_sibling_or_key_elsewhere(tmp_path):
    msg = _error(tmp_path, "sync_rul: BSP\n")
    assert "unknown key 'sync_rul'" in msg and "at the top level" in msg
    assert "avg_freq" in msg and "did you mean 'sync_rule'?" in msg
    assert "did you mean 'optimizer.lr'?" in _error(tmp_path, "lr: 0.1\n")
    msg = _error(tmp_path, "zzzz: 1\n")
    assert "unknown key 'zzzz'" in msg and "did you mean" not in msg


def test_unknown_key_in_override(tmp_path):
    msg = _error(tmp_path, "", ["optimizer.learning_rat=0.1"])
    assert "--set optimizer.learning_rat=0.1" in msg
    assert "unknown key 'optimizer.learning_rat'" in msg
    assert "allowed keys in 'optimizer'" in msg
    msg = _error(tmp_path, "", ["optimzer.lr=0.1"])
    assert "did you mean 'optimizer'?" in msg
    assert "not a section" in _error(tmp_path, "", ["seed.x=1"])
    assert "KEY=VALUE" in _error(tmp_path, "", ["seed"])
    assert "KEY=VALUE" in _error(tmp_path, "", ["optimizer..lr=1"])


@pytest.mark.parametrize("text,key,allowed", [
    ("optimizer:\n  lr: fast\n", "optimizer.lr", "float > 0"),
    ("batch_size: 32.0\n", "batch_size", "int in [1, 65536]"),
    ("seed: '3'\n", "seed", "int >= 0"),
    ("optimizer:\n  nesterov: 1\n", "optimizer.nesterov", "bool"),
    ("model: 3\n", "model", "one of: mlp, inception_small, googlenet"),
    ("model_options: [1, 2]\n", "model_options", "mapping"),
    ("max_steps: 1.5\n", "max_steps", "int >= 1 or null"),
    ("epochs: null\n", "epochs", "number in (0, 1e+06]"),
    ("optimizer: sgd\n", "optimizer", "section with keys name, lr"),
])
def test_wrong_type(tmp_path, text, key, allowed):
    msg = _error(tmp_path, text)
    assert f"run.yaml: {key}: " in msg
    assert allowed in msg


@pytest.mark.parametrize("text,key,allowed", [
    ("optimizer:\n  lr: 0\n", "optimizer.lr", "float > 0"),
    ("optimizer:\n  momentum: 1.0\n", "optimizer.momentum", "float in [0, 1)"),
    ("optimizer:\n  momentum: -0.1\n", "optimizer.momentum", "float in [0, 1)"),
    ("batch_size: 0\n", "batch_size", "int in [1, 65536]"),
    ("seed: -1\n", "seed", "int >= 0"),
    ("data:\n  num_classes: 1\n", "data.num_classes", "int in [2, 100000]"),
    ("threads: 0\n", "threads", "int in [1, 1024] or null"),
    ("epochs: 0\n", "epochs", "number in (0, 1e+06]"),
    ("avg_freq: 0\n", "avg_freq", "int >= 1"),
    ("lr_schedule:\n  warmup_epochs: -1\n", "lr_schedule.warmup_epochs", "number in [0, 1e+06]"),
    ("data:\n  noise: .nan\n", "data.noise", "float in [0, 1e+06]"),
    ("eval_every: 0\n", "eval_every", "float in (0, 1e+06]"),
    ("slowdown:\n  factor: 0.5\n", "slowdown.factor", "float in [1, 1000]"),
])
def test_out_of_range(tmp_path, text, key, allowed):
    msg = _error(tmp_path, text)
    assert f"run.yaml: {key}: " in msg
    assert allowed in msg


@pytest.mark.parametrize("text,key,suggestion", [
    ("sync_rule: bsp\n", "sync_rule", "'BSP'"),
    ("model: googlenett\n", "model", "'googlenet'"),
    ("optimizer:\n  name: adagard\n", "optimizer.name", "'adagrad'"),
    ("lr_schedule:\n  policy: cosin\n", "lr_schedule.policy", "'cosine'"),
    ("device: cuda\n", "device", None),
])
def test_bad_enum(tmp_path, text, key, suggestion):
    msg = _error(tmp_path, text)
    assert f"run.yaml: {key}: " in msg
    assert "allowed values: " in msg
    if suggestion:
        assert f"did you mean {suggestion}?" in msg
    else:
        assert "did you mean" not in msg


@pytest.mark.parametrize("text", ["batch_size: yes\n", "seed: true\n", "avg_freq: on\n",
                                  "optimizer:\n  lr: yes\n"])
def test_bool_is_not_an_int_or_float(tmp_path, text):
    msg = _error(tmp_path, text)
    assert "got bool True" in msg and "booleans" in msg
    assert "got bool True" in _error(tmp_path, "", ["batch_size=yes"])


def test_all_problems_reported_together(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "batch_size: 0\nfoo: 1\n"), ["seed=-2"])
    assert len(info.value.errors) == 3
    assert "3 problems" in str(info.value)
    assert any(e.startswith("--set seed=-2: seed:") for e in info.value.errors)


def test_cross_key_check(tmp_path):
    msg = _error(tmp_path, "optimizer:\n  name: adagrad\n  nesterov: true\n")
    assert "optimizer.nesterov" in msg
    assert "optimizer.nesterov" in _error(tmp_path, "optimizer:\n  momentum: 0\n  nesterov: true\n")


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(missing)


@pytest.mark.parametrize("text,where", [
    ("optimizer:\n  lr: [0.1\nmodel: mlp\n", "line 3"),
    ("model: mlp\n  seed: 3\n", "line 2"),
    ("optimizer:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr'"),
])
def test_malformed_yaml_names_the_file(tmp_path, text, where):
    msg = _error(tmp_path, text)
    assert msg.startswith(str(tmp_path / "run.yaml"))
    assert "malformed YAML" in msg and where in msg


def test_top_level_must_be_a_mapping(tmp_path):
    msg = _error(tmp_path, "- model\n- mlp\n")
    assert "run.yaml" in msg and "mapping" in msg and "sync_rule" in msg


def test_bad_override_value_yaml():
    with pytest.raises(ConfigError, match=r"--set optimizer.lr=\[0.1: cannot parse"):
        load_config(None, ["optimizer.lr=[0.1"])


def test_register_section_extends_the_schema(monkeypatch):
    monkeypatch.setattr(config, "SCHEMA", dict(SCHEMA))
    register_section("plot", {"dir": Key("str", "plots"), "every": Key("int", 10, low=1)})
    assert resolve({"plot": {"every": 5}})["plot"] == {"dir": "plots", "every": 5}
    with pytest.raises(ConfigError, match="did you mean 'plot.every'"):
        resolve({"plot": {"evry": 5}})
    with pytest.raises(ValueError, match="already exists"):
        register_section("plot", {})
    assert "plot" not in SCHEMA


def test_the_choices_are_the_registries(monkeypatch):
    from core.registry import MODELS, RULES
    assert {"mlp", "inception_small", "googlenet", "alexnet", "resnet50"} <= \
        set(SCHEMA["model"].choices)
    assert set(RULES) == {"BSP", "EASGD", "DOWNPOUR", "GOSSIP", "LOCAL"}
    monkeypatch.setitem(MODELS, "tiny", "nowhere:tiny")    # one registration, nothing else
    assert load_config(None, ["model=tiny"])["model"] == "tiny"
    with pytest.raises(ConfigError, match="model: str 'tinny' is not allowed; allowed values: "
                                          ".*tiny.*did you mean 'tiny'"):
        load_config(None, ["model=tinny"])


def test_each_rule_brings_its_own_settings_and_checks():
    cfg = load_config(None, [])
    assert cfg["easgd"] == {"tau": 10, "alpha": 0.5} and cfg["worker_timeout"] == 300
    assert cfg["exchange"]["method"] == "auto" and cfg["avg_freq"] == 1
    with pytest.raises(ConfigError, match="exchange.wire: float16 travels on the ring only"):
        load_config(None, ["exchange.wire=float16", "exchange.method=shared"])


def test_the_configuration_loads_no_layer_and_no_rule():
    code = ("import sys; import core.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('layers', 'sync', 'engine', 'data')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = eval(done.stdout)
    assert not [m for m in loaded if m.split(".")[0] in ("sync", "engine", "data")], loaded
    assert set(loaded) <= {"layers", "layers.backend", "layers.cuda", "layers.parallel"}, loaded


def test_the_schedule_defaults_are_the_schedule_s_own():
    import inspect

    from core.schedules import Schedule
    section = load_config(None, [])["lr_schedule"]
    for name, parameter in inspect.signature(Schedule).parameters.items():
        if parameter.kind is parameter.KEYWORD_ONLY:
            assert section[name] == parameter.default, name


def test_a_data_path_means_that_folder(tmp_path):
    cfg = load_config(None, [f"data.path={tmp_path}"])
    assert cfg["data"]["dataset"] == "prepared" and cfg["data"]["num_classes"] is None
    cfg = load_config(None, [])
    assert cfg["data"]["dataset"] == "synthetic" and cfg["data"]["num_classes"] == 10
    with pytest.raises(ConfigError, match=r"data.path: .* is set, but data.dataset is "
                                          r"'synthetic', which generates its images"):
        load_config(None, ["data.dataset=synthetic", f"data.path={tmp_path}"])


@pytest.mark.parametrize("rule, instead", [
    ("EASGD", r"EASGD's exchanges are set by easgd.tau \(Theano-MPI's EASGD avg_freq 8 is "
              r"easgd.tau: 8 here\)"),
    ("DOWNPOUR", "downpour.n_push and downpour.n_fetch"),
    ("GOSSIP", "gossip.p"),
    ("LOCAL", "averaging$")])
def test_avg_freq_outside_bsp_is_refused_naming_the_rule_s_own_key(rule, instead):
    with pytest.raises(ConfigError, match=rf"avg_freq: 8 has no effect under sync_rule {rule}: "
                                          rf"avg_freq is BSP's period.*{instead}"):
        load_config(None, [f"sync_rule={rule}", "avg_freq=8"])
    assert load_config(None, [f"sync_rule={rule}", "avg_freq=1"])["avg_freq"] == 1
