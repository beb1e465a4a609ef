"""The run configuration: a YAML file checked against ``SCHEMA``, plus ``--set key=value``.

``SCHEMA`` is a nested dict: a dict value is a section, a ``Key`` is a setting with a type, a
default and optional allowed values / range. ``load_config(path, overrides)`` reads the file,
checks every key, applies the overrides (dotted paths, values parsed as YAML) and returns a plain
nested dict with every default filled in; ``dump(cfg)`` gives back the resolved YAML. Any unknown
or ill-typed key raises ``ConfigError`` before any work is done; its message names the source
(file or ``--set``), the dotted key, what is allowed and, for unknown keys or values, the closest
match.

Typing rules: a bool is never an int or a float (YAML reads ``yes``/``no``/``on``/``off`` as
booleans); an int is accepted where a float is expected (and converted); ``5e-4`` is a float
(YAML 1.1, which PyYAML follows, would read it as a string); a null section is an empty one.

The choices of ``model``, ``optimizer.name``, ``lr_schedule.policy`` and ``sync_rule`` are the
registries of ``core/registry.py``; each sync rule adds its own keys and their cross-key checks
with ``register_section`` (``sync/``), so this module loads no layer and no rule, and a
config that names a rule's keys is checked once the rules are imported (``import sync``).
"""
import copy
import difflib
import math
import os
import re

import yaml

import core.models          # noqa: F401  (each fills its registry: the choices below)
import core.optimizers      # noqa: F401
from core.schedules import DEFAULTS as SCHEDULE
from core.errors import ConfigError
from core.registry import MODELS, OPTIMIZERS, POLICIES, RULES, Registry


class Key:
    """A setting: ``type`` is one of int, float, number (int or float, kept as given), bool,
    str, mapping (free-form dict); ``choices`` lists allowed values; ``low``/``high`` bound
    numbers (inclusive unless ``low_open``/``high_open``); ``nullable`` allows null; ``path``
    marks a file or folder, which a config file gives relative to its own folder."""

    TYPES = ("int", "float", "number", "bool", "str", "mapping")

    def __init__(self, type, default, choices=None, low=None, high=None, low_open=False,
                 high_open=False, nullable=False, path=False):
        if type not in self.TYPES:
            raise ValueError(f"Key type {type!r} is not one of {self.TYPES}")
        self.type = type
        self.default = default
        # a Registry stays live: its entries are read when a value is checked
        self.choices = choices if isinstance(choices, Registry) or choices is None \
            else tuple(choices)
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open
        self.nullable = nullable
        self.path = path

    def describe(self):
        """What is allowed, e.g. 'float in [0, 1)', 'int >= 1 or null', 'one of: cpu, gpu'."""
        if self.choices is not None:
            text = "one of: " + ", ".join(str(c) for c in self.choices)
        else:
            text = {"bool": "bool (true/false)", "mapping": "mapping (key: value, ...)"}.get(
                self.type, self.type)
            if self.low is not None and self.high is not None:
                text += f" in {'(' if self.low_open else '['}{self.low:g}, " \
                        f"{self.high:g}{')' if self.high_open else ']'}"
            elif self.low is not None:
                text += f" {'>' if self.low_open else '>='} {self.low:g}"
            elif self.high is not None:
                text += f" {'<' if self.high_open else '<='} {self.high:g}"
        return text + (" or null" if self.nullable else "")

    def check(self, value):
        """``(converted value, None)`` if ``value`` is allowed, else ``(None, problem)``."""
        if value is None:
            if self.nullable:
                return None, None
            if self.type == "mapping":
                return {}, None
            return None, f"expected {self.describe()}, got null"
        is_bool = isinstance(value, bool)
        ok = {"int": isinstance(value, int) and not is_bool,
              "float": isinstance(value, (int, float)) and not is_bool,
              "number": isinstance(value, (int, float)) and not is_bool,
              "bool": is_bool,
              "str": isinstance(value, str),
              "mapping": isinstance(value, dict)}[self.type]
        if not ok:
            hint = " (YAML reads yes/no/on/off as booleans)" if is_bool else ""
            return None, f"expected {self.describe()}, got {_show(value)}{hint}"
        if self.type == "float":
            value = float(value)
        if self.type in ("float", "number") and not math.isfinite(value):
            return None, f"expected a finite {self.describe()}, got {value}"
        if self.choices is not None and not self.choices:
            return None, (f"no {self.choices.kind} is registered: the modules that register "
                          f"them were not imported (see core/registry.py)")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            return None, (f"{_show(value)} is not allowed; allowed values: {allowed}"
                          f"{_suggest_value(value, self.choices)}")
        if (self.low is not None and (value < self.low or (self.low_open and value == self.low))) \
                or (self.high is not None and
                    (value > self.high or (self.high_open and value == self.high))):
            return None, f"{value!r} is out of range; allowed: {self.describe()}"
        return (copy.deepcopy(value) if self.type == "mapping" else value), None


def _show(value):
    """'str 'abc'', 'bool True', 'list [1, 2]' for messages."""
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


def _suggest_value(value, choices):
    if not isinstance(value, str):
        return ""
    names = [c for c in choices if isinstance(c, str)]
    same = [c for c in names if c.lower() == value.lower()]
    close = same or difflib.get_close_matches(value, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- the schema -----------------------------------------------------------------------------
SYNTHETIC_CLASSES = 10
SCHEMA = {
    "model": Key("str", "inception_small", choices=MODELS),
    "model_options": Key("mapping", {}),   # free-form; the model factory validates it
    "dtype": Key("str", "float32", choices=("float32", "float64")),
    "seed": Key("int", 0, low=0),
    "device": Key("str", "cpu", choices=("cpu", "gpu")),   # gpu: CuPy, one GPU per worker
    "tf32": Key("bool", False),        # gpu: float32 matrix products in TF32
    "threads": Key("int", None, low=1, high=1024, nullable=True),   # null: all cores
    "keep_freed_memory": Key("bool", True),   # cpu: freed memory reused, not mapped afresh
    "batch_size": Key("int", 128, low=1, high=65536),                     # per worker
    "accumulate": Key("int", 1, low=1, high=4096),   # micro-batches of batch_size per step
    "epochs": Key("number", 10, low=0, low_open=True, high=1e6),
    "max_steps": Key("int", None, low=1, nullable=True),
    "optimizer": {
        "name": Key("str", "sgd", choices=OPTIMIZERS),
        "lr": Key("float", 0.05, low=0, low_open=True),
        "momentum": Key("float", 0.9, low=0, high=1, high_open=True),
        "nesterov": Key("bool", False),
        "weight_decay": Key("float", 5e-4, low=0),
        "eps": Key("float", 1e-10, low=0, low_open=True),        # for 'adagrad'
        "scale_lr": Key("str", None, choices=("linear",), nullable=True),   # with the total batch
    },
    "lr_schedule": {                        # defaults: core.schedules.Schedule's, the one owner
        "policy": Key("str", "constant", choices=POLICIES),
        "step_size": Key("number", SCHEDULE["step_size"], low=0, low_open=True, high=1e6),   # epochs, 'step'
        "gamma": Key("float", SCHEDULE["gamma"], low=0, low_open=True),        # for 'step'
        "power": Key("float", SCHEDULE["power"], low=0, low_open=True),        # for 'poly'
        "final_lr": Key("float", SCHEDULE["final_lr"], low=0),                 # for 'cosine'
        "warmup_epochs": Key("number", SCHEDULE["warmup_epochs"], low=0, high=1e6),
        "warmup_start": Key("float", SCHEDULE["warmup_start"], low=0),   # fraction of optimizer.lr
    },
    "data": {
        "dataset": Key("str", None, choices=("synthetic", "prepared"),   # null: prepared when
                       nullable=True),                                # path is set, else synthetic
        "path": Key("str", None, nullable=True, path=True),   # a prepared dataset folder
        "train_folder": Key("str", None, nullable=True),      # Theano-MPI tree: which train_hkl*/
        "num_classes": Key("int", None, low=2, high=100_000,  # null: the dataset's (synthetic: 10)
                           nullable=True),
        "crop": Key("int", None, low=1, high=4096, nullable=True),       # square crop; null: whole image
        "pad": Key("int", 0, low=0, high=4096),                          # zero padding before a train crop
        "mirror": Key("bool", False),                         # random horizontal flips
        "scale": Key("float", None, low=0, low_open=True, high=1e6,   # x = (image - mean) * scale;
                     nullable=True),                      # null: 1 / the pixels' std
        "prefetch": Key("int", 2, low=0, high=64),                     # batches prepared ahead
        "verify": Key("bool", True),                          # check each file's crc32
        "num_train": Key("int", 1024, low=1, high=10_000_000),                 # synthetic only, from here on
        "num_val": Key("int", 256, low=1, high=10_000_000),
        "image_size": Key("int", 32, low=1, high=4096),
        "channels": Key("int", 3, low=1, high=64),
        "noise": Key("float", 0.5, low=0, high=1e6),
    },
    "log": {
        "dir": Key("str", None, nullable=True, path=True),  # null: runs/<date>-<time>-<rule>
        "every": Key("int", 10, low=1),           # steps between lines of log.rank<r>.jsonl
        "bar": Key("bool", None, nullable=True),  # progress bar; null: when on a terminal
        "export": Key("bool", True),              # write weights.hkl at the end
    },
    "timeline": Key("bool", False),               # Chrome trace per rank in the run folder
    "checkpoint": {
        "every_epochs": Key("int", 1, low=0),     # 0: not by epochs
        "every_minutes": Key("float", None, low=0, low_open=True, high=1e7, nullable=True),
        "keep": Key("int", 3, low=1),
    },
    "resume": Key("str", None, nullable=True),    # auto (newest in log.dir) or a folder
    "on_nonfinite": Key("str", "stop", choices=("stop", "skip")),
    "print_every": Key("int", 10, low=1),         # steps
    "eval_every": Key("float", 1, low=0, low_open=True, high=1e6),   # epochs (0.25: 4 a epoch)
    "slowdown": {                                 # simulate one slower host (bench/race.py)
        "rank": Key("int", None, low=0, nullable=True),   # this rank runs 1/factor as fast
        "factor": Key("float", 2.0, low=1, high=1e3),      # (it sleeps (factor-1) x its step)
    },
    "sync_rule": Key("str", "BSP", choices=RULES),   # each rule registers its own keys
    "watchdog": Key("float", 600, low=0, low_open=True, high=1e7, nullable=True),   # s in an exchange
    "stall_abort": Key("float", 3600, low=0, low_open=True, high=1e7,   # s in one exchange:
                       nullable=True),                                 # then end the job
    "cluster": {                                  # for the run/ launchers: mpiexec's options
        "hostfile": Key("str", None, nullable=True, path=True),   # null: this machine only
        "interface": Key("str", None, nullable=True),   # MPI's network: eth1 or 10.0.0.0/24
        "agent": Key("str", "ssh"),               # starts ranks on other hosts (plm_ssh_agent)
        "requeue": Key("bool", False),            # Slurm: requeue the job on its warning signal
    },
}


def _derive(cfg):
    """Defaults that follow other keys: the dataset from data.path, synthetic data's classes."""
    data = cfg["data"]
    if data["dataset"] is None:
        data["dataset"] = "prepared" if data["path"] else "synthetic"
    if data["dataset"] == "synthetic" and data["num_classes"] is None:
        data["num_classes"] = SYNTHETIC_CLASSES
    return cfg


def _prepared_data_needs_a_path(cfg):
    if cfg["data"]["dataset"] == "prepared" and not cfg["data"]["path"]:
        yield "data.path", "dataset 'prepared' needs the folder of a prepared dataset " \
                           "(python -m data.prepare ...)"


def _synthetic_data_has_no_path(cfg):
    data = cfg["data"]
    if data["dataset"] == "synthetic" and data["path"]:
        yield "data.path", (f"{data['path']} is set, but data.dataset is 'synthetic', which "
                            f"generates its images and would not read it; remove data.dataset "
                            f"(or set it to prepared) to train on that folder, or remove "
                            f"data.path")


def _auto_resume_needs_a_run_folder(cfg):
    if cfg["resume"] == "auto" and not cfg["log"]["dir"]:
        yield "resume", ("auto continues the run in log.dir, which is null (every run gets a "
                         "new folder); set log.dir, or give resume the folder to continue")


def _synthetic_data_fits_in_memory(cfg):
    data = cfg["data"]
    if data["dataset"] == "synthetic":
        size = (data["num_train"] + data["num_val"]) * data["channels"] * data["image_size"] ** 2
        if size > 2 ** 31:
            yield "data", (f"synthetic data of {data['num_train'] + data['num_val']} images of "
                           f"{data['channels']}x{data['image_size']}x{data['image_size']} would "
                           f"take {size / 2 ** 30:.0f} GiB; at most 2 GiB is generated in memory")


def _nesterov_needs_sgd_momentum(cfg):
    opt = cfg["optimizer"]
    if opt["nesterov"] and (opt["name"] != "sgd" or opt["momentum"] == 0):
        yield "optimizer.nesterov", (f"true needs optimizer.name sgd and optimizer.momentum > 0, "
                                     f"got name {opt['name']!r}, momentum {opt['momentum']}")


# Cross-key checks: callables cfg -> iterable of (dotted key, problem), run on the resolved config.
CHECKS = [_nesterov_needs_sgd_momentum, _prepared_data_needs_a_path, _synthetic_data_has_no_path,
          _auto_resume_needs_a_run_folder, _synthetic_data_fits_in_memory]


def register_section(name, keys, checks=()):
    """Add a top-level key or section ``name`` (a ``Key``, or a dict of ``Key`` or nested
    sections) to ``SCHEMA``, with its cross-key ``checks`` (callables as in ``CHECKS``): how a
    sync rule brings its own settings."""
    if name in SCHEMA:
        raise ValueError(f"config key or section {name!r} already exists")
    SCHEMA[name] = keys
    CHECKS.extend(checks)


# -- YAML -----------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def parse_value(text):
    """A ``--set`` value as YAML: '0.1' -> 0.1, 'true' -> True, 'null' -> None, '[1, 2]'."""
    return yaml.load(text, Loader=_Loader)


def dump(cfg, path=None):
    """The resolved config as YAML text (keys in schema order); also written to ``path``."""
    text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
    if path is not None:
        with open(path, "w") as f:
            f.write(text)
    return text


# -- validation -----------------------------------------------------------------------------
def _join(prefix, key):
    return f"{prefix}.{key}" if prefix else str(key)


def _leaf_paths(schema, prefix=""):
    for key, node in schema.items():
        path = _join(prefix, key)
        if isinstance(node, dict):
            yield from _leaf_paths(node, path)
        else:
            yield path


def _unknown(key, section, prefix, root):
    """'unknown key ...; allowed keys ...; did you mean ...?' for ``key`` in ``section``."""
    where = f"in '{prefix}'" if prefix else "at the top level"
    message = f"unknown key '{_join(prefix, key)}'; allowed keys {where}: {', '.join(section)}"
    name = str(key)
    close = difflib.get_close_matches(name, list(section), n=1)
    if close:
        return f"{message}; did you mean '{_join(prefix, close[0])}'?"
    paths = list(_leaf_paths(root))
    leaves = {}
    for path in paths:
        leaves.setdefault(path.rsplit(".", 1)[-1], path)
    close = difflib.get_close_matches(name, list(leaves), n=1)
    if close:
        return f"{message}; did you mean '{leaves[close[0]]}'?"
    return message


def _check_section(raw, section, prefix, source, errors, root):
    """The user's values for ``section`` (no defaults), checked; problems go to ``errors``."""
    out = {}
    for key, value in raw.items():
        path = _join(prefix, key)
        node = section.get(key) if isinstance(key, str) else None
        if node is None:
            errors.append(f"{source}: {_unknown(key, section, prefix, root)}")
        elif isinstance(node, dict):
            if value is None:
                value = {}
            if isinstance(value, dict):
                out[key] = _check_section(value, node, path, source, errors, root)
            else:
                errors.append(f"{source}: {path}: expected a section with keys "
                              f"{', '.join(node)}, got {_show(value)}")
        else:
            checked, problem = node.check(value)
            if problem:
                errors.append(f"{source}: {path}: {problem}")
            else:
                out[key] = checked
    return out


def _merge(dst, src, section):
    for key, value in src.items():
        if isinstance(section[key], dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, section[key])
        else:
            dst[key] = value


def _apply_override(values, text, errors, root):
    """Apply one ``dotted.key=value`` to the checked values; problems go to ``errors``."""
    source = f"--set {text}"
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not all(parts):
        errors.append(f"{source}: expected KEY=VALUE with a dotted KEY, e.g. optimizer.lr=0.1")
        return
    try:
        value = parse_value(raw)
    except yaml.YAMLError as e:
        errors.append(f"{source}: cannot parse {raw!r} as a YAML value: "
                      f"{getattr(e, 'problem', None) or e}")
        return
    section, target = root, values
    for i, part in enumerate(parts):
        prefix, path, last = ".".join(parts[:i]), ".".join(parts[:i + 1]), i == len(parts) - 1
        node = section.get(part)
        if node is None:
            errors.append(f"{source}: {_unknown(part, section, prefix, root)}")
            return
        if isinstance(node, dict):
            if not last:
                section, target = node, target.setdefault(part, {})
                continue
            if value is None:
                value = {}
            if not isinstance(value, dict):
                errors.append(f"{source}: {path}: expected a section with keys "
                              f"{', '.join(node)}, got {_show(value)}")
                return
            checked = _check_section(value, node, path, source, errors, root)
            _merge(target.setdefault(part, {}), checked, node)
            return
        if last:
            checked, problem = node.check(value)
            if problem:
                errors.append(f"{source}: {path}: {problem}")
            else:
                target[part] = checked
            return
        if node.type != "mapping":
            errors.append(f"{source}: '{path}' is a setting ({node.describe()}), not a section, "
                          f"so '{key}' does not exist")
            return
        mapping = target.get(part)
        if mapping is None:
            mapping = target[part] = copy.deepcopy(node.default)
        for sub in parts[i + 1:-1]:
            if not isinstance(mapping.get(sub), dict):
                mapping[sub] = {}
            mapping = mapping[sub]
        mapping[parts[-1]] = value
        return


def _fill(values, section):
    out = {}
    for key, node in section.items():
        if isinstance(node, dict):
            out[key] = _fill(values.get(key, {}), node)
        else:
            out[key] = values[key] if key in values else copy.deepcopy(node.default)
    return out


def _absolute_paths(values, section, base):
    """Path settings in ``values`` made absolute against the folder ``base``."""
    for key, value in values.items():
        node = section[key]
        if isinstance(node, dict):
            _absolute_paths(value, node, base)
        elif node.path and isinstance(value, str) and not os.path.isabs(value):
            values[key] = os.path.normpath(os.path.join(base, value))


def resolve(raw, overrides=(), source="<config>", base=None):
    """Check a loaded config dict (``None`` = empty), apply ``--set`` overrides and fill the
    defaults; raises ``ConfigError`` listing every problem, each prefixed with ``source``.
    Relative paths in ``raw`` are taken from the folder ``base`` (those of ``--set`` from the
    current folder)."""
    root = SCHEMA
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level "
                          f"(allowed: {', '.join(root)}), got {_show(raw)}")
    errors = []
    values = _check_section(raw, root, "", source, errors, root)
    if base is not None:
        _absolute_paths(values, root, base)
    for text in overrides or ():
        _apply_override(values, text, errors, root)
    if errors:
        raise ConfigError(errors)
    cfg = _derive(_fill(values, root))
    errors = [f"{source}: {path}: {problem}" for check in CHECKS for path, problem in check(cfg)]
    if errors:
        raise ConfigError(errors)
    return cfg


def load_config(path=None, overrides=()):
    """The resolved config dict from the YAML file at ``path`` (``None``: defaults only) and
    ``--set`` overrides such as ``['optimizer.lr=0.1', 'data.num_train=512']``."""
    if path is None:
        return resolve({}, overrides, source="<defaults>")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file: {e}") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = ": ".join(str(p) for p in (getattr(e, "context", None),
                                           getattr(e, "problem", None)) if p) or str(e)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    return resolve(raw, overrides, source=str(path),
                   base=os.path.dirname(os.path.abspath(path)))


def add_arguments(parser, default="config.yaml"):
    """Add the positional config path and ``--set KEY=VALUE`` (repeatable) to ``parser``."""
    parser.add_argument("config", nargs="?", default=default,
                        help=f"YAML run config (default: {default})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key by dotted path, e.g. --set optimizer.lr=0.1")
    return parser
