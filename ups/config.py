"""Configs: YAML files with `include:`, `--set` overrides, one typed schema, validation before Ray.

A config file only says what differs from the schema's defaults. Every error a user can make in a
file or on the command line becomes a `ConfigError` whose message is one line naming the file and
the key, so entry points can print it and exit 2 before any cluster resource is used.

The schema is assembled here from three parts: the sections in `ups/schema.py`; one
`stages.<name>` section per registered stage (`ups/stages/registry.py`), each of the stage's own
config class; and one `model.<role>` section per role, the union of the config classes of the
role's registered architectures (`ups/models/registry.py`), told apart by `arch`. Registering a
stage or an architecture is all it takes to give it a config section.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union

import yaml
from pydantic import BaseModel, Discriminator, Tag, ValidationError, create_model, model_validator

from ups.eval.metrics import KEYS
from ups.models import factory
from ups.models import registry as models
from ups.schema import (  # noqa: F401  (re-exported: the schema's names are part of ups.config)
    ArchConfig,
    CheckpointConfig,
    ConfigBase,
    ConfigError,
    DataConfig,
    Decay,
    EvalConfig,
    Fraction,
    GateConfig,
    GenerateConfig,
    KeyedError,
    LatentConfig,
    LoggingConfig,
    NonNegFloat,
    NonNegInt,
    OptimizerConfig,
    PosFloat,
    PosInt,
    RayConfig,
    ScalingConfig,
    SchedulerConfig,
    Section,
    StageConfig,
    SweepConfig,
    TrainingConfig,
    WandbConfig,
    at_least,
)
from ups.stages import registry

if TYPE_CHECKING:
    from ups.schema import ModelSection, StagesSection


class _Registered(ConfigBase):
    """The checks of names that registries define: metrics, stages (architectures are checked by
    the `model.<role>` unions themselves)."""

    @model_validator(mode="after")
    def _registered(self) -> _Registered:
        gated = (*KEYS, "wall_clock")  # wall_clock: gating's interleaved timing
        for metric in self.gate.ratios:
            if metric not in gated:
                raise KeyedError("gate.ratios", f"no metric named {metric!r} (metrics: {', '.join(gated)})")
        if self.sweep.scheduler.stage not in registry.names():
            raise KeyedError(
                "sweep.scheduler.stage",
                f"no stage named {self.sweep.scheduler.stage!r} (stages: {', '.join(registry.names())})",
            )
        return self


def _arch_tag(role: str) -> Any:
    """The discriminator of `model.<role>`: the section's `arch`, or the role's default when the
    section names none (so a file that only sets `hidden` keeps the default architecture, and
    `arch` does not count as a key the user set)."""
    default = models.DEFAULT_ARCH[role]

    def tag(value: Any) -> str:
        arch = value.get("arch", default) if isinstance(value, dict) else getattr(value, "arch", default)
        return arch if isinstance(arch, str) else repr(arch)

    return Discriminator(tag)


def _role_section(role: str) -> tuple[Any, ArchConfig]:
    """`model.<role>`: the union of the role's registered config classes, and its default."""
    classes = models.configs(role)
    tagged = tuple(Annotated[cls, Tag(arch)] for arch, cls in classes.items())
    union: Any = Annotated[Union[tagged], _arch_tag(role)]  # noqa: UP007
    default: ArchConfig = classes[models.DEFAULT_ARCH[role]]()  # type: ignore[call-arg]  # arch has its default
    return union, default


def _assemble() -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    roles: dict[str, Any] = {role: _role_section(role) for role in models.ROLES}
    model = create_model("ModelConfig", __base__=Section, **roles)
    model.__doc__ = "`model`: one section per role, of the config class of the architecture its `arch` names."
    fields: dict[str, Any] = {name: (cls.config_cls, cls.config_cls()) for name, cls in registry.stages().items()}
    stages = create_model("StagesConfig", __base__=Section, **fields)
    config = create_model("Config", __base__=_Registered, model=(model, model()), stages=(stages, stages()))
    config.__doc__ = (
        "The whole resolved config of a run (ups/schema.py + one section per registered architecture and stage)."
    )
    return model, stages, config


if TYPE_CHECKING:
    ModelConfig = ModelSection
    StagesConfig = StagesSection

    class Config(_Registered):
        model: ModelConfig
        stages: StagesConfig

else:
    ModelConfig, StagesConfig, Config = _assemble()


def rebuild_schema() -> None:
    """Re-derive `ModelConfig`, `StagesConfig` and `Config` after a registry changed (a test's toy
    stage or architecture)."""
    global ModelConfig, StagesConfig, Config
    if not TYPE_CHECKING:  # type checkers know the stand-ins above, which a rebuild keeps
        ModelConfig, StagesConfig, Config = _assemble()


registry.on_change(rebuild_schema)  # a stage registered from now on gets its `stages.<name>` section
models.on_change(rebuild_schema)  # an architecture registered from now on joins its role's `model.<role>`


def to_wire(cfg: Config) -> dict[str, Any]:
    """The config as it crosses a process boundary (a TrainJob, a Ray task): only the keys that were
    set, so the receiving side's `from_dict` knows, as the driver did, which keys the user left at
    their defaults. A stage that fills unset keys from the data (the FNO baseline's protocol) depends
    on it: a full dump marks every key as set, and the worker would train with the recipe's keys."""
    return cfg.model_dump(mode="json", exclude_unset=True)


def from_dict(tree: dict[str, Any]) -> Config:
    """A config that crossed a process boundary as a dict (`to_wire`; it was validated once already)."""
    return Config.model_validate(tree)


def stage_config(cfg: Config, name: str, dims: int | None = None) -> StageConfig:
    """The `stages.<name>` section of a config; given the data's dimension, as the stage resolves it."""
    section: StageConfig = getattr(cfg.stages, name)
    return section if dims is None else section.resolved(dims)


def batch_size(cfg: Config, name: str, dims: int | None = None) -> tuple[int, str]:
    """Stage `name`'s global batch and the key that set it (its own, or training.batch_size)."""
    own = stage_config(cfg, name, dims).batch_size
    return (own, f"stages.{name}.batch_size") if own is not None else (cfg.training.batch_size, "training.batch_size")


# ----------------------------------------------------------------------------------------------
# Loading: YAML + includes + overrides, remembering which file set each key.


# Bounds on what one config may make the loader build. A config is a few hundred values a few levels
# deep; anything far beyond that is a mistake or an attack (aliases that expand to a billion keys,
# a 5000-deep flow list, an include chain or fan-out that re-reads files without end), refused in
# one line before the tree is expanded, merged or validated.
MAX_BYTES = 1 << 20  # of one config file (a device or a pipe is read no further)
MAX_DEPTH = 32  # nesting of mappings and lists, aliases expanded
MAX_NODES = 10_000  # values of one document or --set value, aliases expanded
MAX_INCLUDE_DEPTH = 16  # a file that includes a file that includes ...
MAX_FILES = 64  # files read for one config, includes of includes counted each time


class YamlTooLarge(yaml.MarkedYAMLError):
    """A document beyond MAX_DEPTH or MAX_NODES (aliases expanded), or with a recursive alias."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 insists on `1.0e-3`), and refuses a
    document nested deeper than MAX_DEPTH or larger than MAX_NODES once its aliases are expanded:
    the checks run on the composed node graph, where an alias is one shared node, so a
    billion-laughs document costs its own size to refuse, not its expansion."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:  # before the composer recurses any further
                raise YamlTooLarge(
                    problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded(node)
        return super().construct_document(node)


def _check_expanded(root: yaml.Node) -> None:
    """Size and depth of the tree `root` stands for, every alias expanded: counted once per distinct
    node (iteratively, memoised), so the cost is the document's, not the expansion's."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    active: set[int] = set()  # the nodes on the current path: meeting one again is a recursive alias
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            active.discard(key)
            if size[key] > MAX_NODES:
                raise YamlTooLarge(
                    problem=f"more than {MAX_NODES} values once its aliases are expanded",
                    problem_mark=node.start_mark,
                )
            if height[key] > MAX_DEPTH:
                raise YamlTooLarge(
                    problem=f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded",
                    problem_mark=node.start_mark,
                )
            continue
        if key in size:
            continue
        if key in active:
            raise YamlTooLarge(problem="an alias refers to a node that contains it", problem_mark=node.start_mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in children(node) if id(k) not in size)


YamlLoader = _Loader  # for other readers of project YAML (a run's stored config)

_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


class DuplicateKey(yaml.MarkedYAMLError):
    """Two equal keys in one mapping: YAML keeps the last silently, which hides a typo'd override."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise DuplicateKey(problem=f"a key must be a plain value, not {type(key).__name__}",
                               problem_mark=key_node.start_mark) from None  # fmt: skip
        if key in seen:
            raise DuplicateKey(problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def parse_yaml_value(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: Path, shown: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)  # bounded: `--config /dev/zero` is refused, not read forever
        if len(raw) > MAX_BYTES:
            raise ConfigError(f"{shown}: larger than {MAX_BYTES >> 20} MiB, not a config file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{shown}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read config file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{shown}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        what = "" if isinstance(e, (DuplicateKey, YamlTooLarge)) else "YAML syntax error: "
        raise ConfigError(f"{shown}{line}: {what}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{shown}: YAML error: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any], at: tuple[str, ...] = ()) -> dict[str, Any]:
    """Mappings merge; lists and scalars replace. A `model.<role>` section that names another
    architecture than the one it overrides keeps only the keys that architecture has."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            if at == ("model",) and "arch" in v:
                old = _for_arch(k, old, v["arch"])
            out[k] = _deep_merge(old, v, (*at, k))
        else:
            out[k] = v
    return out


def _for_arch(role: str, section: dict[str, Any], arch: Any) -> dict[str, Any]:
    """`section`, a `model.<role>` section set for one architecture, as a base for `arch`: the keys
    `arch` does not have are dropped (a 2D recipe that includes a 1D one and switches the encoder
    from conv to fourier does not inherit the conv encoder's `hidden`). Keys the overriding file or
    flag sets itself are never dropped, so a key that does not fit its own `arch` is still an error."""
    cls = models.configs(role).get(arch) if isinstance(arch, str) and role in models.ROLES else None
    if cls is None or section.get("arch", models.DEFAULT_ARCH[role]) == arch:
        return section  # the same architecture, or an unknown one that validation will name
    return {k: v for k, v in section.items() if k in cls.model_fields}


def _leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        keys.append(key)
        if isinstance(v, dict):
            keys += _leaves(v, key + ".")
    return keys


def _load_file(path: Path, stack: tuple[Path, ...], sources: dict[str, str], read: list[Path]) -> dict[str, Any]:
    """`path` with its includes merged under it; `stack`: the files including it, `read`: every file
    read so far for this config (bounded, so an include fan-out cannot re-read files without end)."""
    shown = _show(path)
    if path in stack:
        cycle = " -> ".join(_show(p) for p in (*stack[stack.index(path) :], path))
        raise ConfigError(f"{shown}: include cycle: {cycle}")
    if len(stack) >= MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{shown}: included {len(stack)} levels deep (at most {MAX_INCLUDE_DEPTH})")
    read.append(path)
    if len(read) > MAX_FILES:
        raise ConfigError(f"{shown}: the config reads more than {MAX_FILES} files through its includes")
    raw = _read_yaml(path, shown)
    includes = raw.pop("include", None)
    if includes is None:
        includes = []
    elif isinstance(includes, str):
        includes = [includes]
    elif not (isinstance(includes, list) and all(isinstance(i, str) for i in includes)):
        raise ConfigError(f"{shown}: include: must be a path or a list of paths")
    merged: dict[str, Any] = {}
    for inc in includes:
        try:
            inc_path = (path.parent / inc).resolve()
            found = inc_path.exists()
        except (OSError, ValueError) as e:  # a NUL byte, a name longer than the system allows
            why = getattr(e, "strerror", None) or str(e)
            raise ConfigError(f"{shown}: include: cannot be a file name: {_cut(inc)} ({why})") from None
        if not found:
            raise ConfigError(f"{shown}: include: file not found: {inc} (looked for {_show(inc_path)})")
        merged = _deep_merge(merged, _load_file(inc_path, (*stack, path), sources, read))
    for key in _leaves(raw):
        sources[key] = shown
    return _deep_merge(merged, raw)


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except (OSError, ValueError):
        text = str(path)
        return text if len(text) <= 200 else text[:190] + "..."  # one readable line, whatever the name


def _cut(text: str, limit: int = 120) -> str:
    """`text` quoted, and cut short so an absurdly long value still fits one line."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 5] + "...'"


def apply_override(tree: dict[str, Any], item: str, sources: dict[str, str]) -> dict[str, Any]:
    """Apply one `dotted.key=yaml_value` override."""
    key, sep, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set {_cut(item)}: expected dotted.key=value")
    if len(parts) > MAX_DEPTH:
        raise ConfigError(f"--set {_cut(key)}: more than {MAX_DEPTH} dotted parts")
    try:
        value = parse_yaml_value(text) if text.strip() else None
    except YamlTooLarge as e:
        raise ConfigError(f"--set {key}: value {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
        node = nxt
    if len(parts) == 3 and parts[0] == "model" and parts[2] == "arch":
        tree["model"][parts[1]] = node = _for_arch(parts[1], node, value)  # the section, now for that arch
    node[parts[-1]] = value
    for k in [key] + ([f"{key}.{leaf}" for leaf in _leaves(value)] if isinstance(value, dict) else []):
        sources.pop(k, None)  # re-insert so the newest setting comes last
        sources[k] = "--set"
    return tree


class LoadedConfig:
    """A validated config plus where it came from."""

    def __init__(self, cfg: Config, path: Path, sources: dict[str, str]) -> None:
        self.cfg, self.path, self.sources = cfg, path, sources

    @property
    def name(self) -> str:
        return self.path.stem


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedConfig:
    path = Path(path)
    sources: dict[str, str] = {}
    try:
        resolved = path.resolve()
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {_cut(str(path))}: cannot be a file name ({e})") from None
    tree = _load_file(resolved, (), sources, [])
    for item in overrides:
        tree = apply_override(tree, item, sources)
    cfg = validate(tree, sources, default_source=_show(path))
    return LoadedConfig(cfg, path, sources)


def validate(
    tree: dict[str, Any], sources: dict[str, str] | None = None, default_source: str = "config", *, stored: bool = False
) -> Config:
    """The config a tree of keys describes, or one ConfigError line naming the file and the key.
    `stored`: the tree is a resolved config a run, a champion or a bundle saved earlier, which may
    hold keys an older schema gave every architecture of a role (`_SHARED_BEFORE_ARCH_CONFIGS`)."""
    sources = sources or {}
    if stored:
        tree = _without_keys_of_other_archs(tree)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_explain(e, tree, sources, default_source)) from None


# Until each architecture owned its config class, every architecture of a role shared one section
# with these keys, so a saved config names (and its digest covers) keys its network never read.
_SHARED_BEFORE_ARCH_CONFIGS = frozenset(
    {"hidden", "depth", "heads", "mlp_ratio", "modes", "patch_size", "frequencies", "steps"}
)


def _without_keys_of_other_archs(tree: dict[str, Any]) -> dict[str, Any]:
    """A saved config's tree without the shared keys its architectures do not have: the network
    never read them, so dropping them changes nothing the run computes. A saved run then resumes
    (run.py compares the stored config validated this way with the new one)."""
    model = tree.get("model")
    if not isinstance(model, dict):
        return tree
    sections = dict(model)
    for role, section in model.items():
        if not isinstance(section, dict) or role not in models.ROLES:
            continue
        cls = models.configs(role).get(section.get("arch", models.DEFAULT_ARCH[role]))
        if cls is not None:
            sections[role] = {
                k: v for k, v in section.items() if k in cls.model_fields or k not in _SHARED_BEFORE_ARCH_CONFIGS
            }
    return {**tree, "model": sections}


def source_of(key: str, sources: dict[str, str], default: str) -> str:
    """The file that last set `key`, one of its sections, or something inside it."""
    inside = [src for k, src in sources.items() if k.startswith(key + ".")]
    if key in sources or inside:
        return sources.get(key) or inside[-1]
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in sources:
            return sources[".".join(parts[:n])]
    return default


def _explain(e: ValidationError, tree: dict[str, Any], sources: dict[str, str], default: str) -> str:
    err = e.errors()[0]
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, KeyedError):
        # Blame the key set last (an override on top of a file's setting is the likelier culprit).
        order = list(sources)
        keys = [ctx_err.key, *ctx_err.also]
        last = max(
            keys, key=lambda k: max((i for i, s in enumerate(order) if s == k or s.startswith(k + ".")), default=-1)
        )
        return f"{source_of(last, sources, default)}: {ctx_err.key}: {ctx_err.msg}"
    loc, section = _walk(err["loc"])
    key = ".".join(loc)
    where = source_of(key, sources, default)
    if err["type"] == "union_tag_invalid" and len(loc) == 2 and loc[0] == "model":
        arch, registered = (err.get("ctx") or {}).get("tag"), ", ".join(factory.archs(loc[1]))
        where = source_of(key + ".arch", sources, default)
        return f"{where}: {key}.arch: unknown architecture {arch!r} (registered: {registered})"
    if err["type"] == "extra_forbidden":
        raw = str(err["loc"][-1])
        if "." in raw:  # `training.lr: 1` at some level of a YAML file
            nested = raw.split(".")
            shown = ": {".join(nested) + ": ..." + "}" * (len(nested) - 1)
            return f"{where}: key '{key}': dotted keys work with --set only; in YAML nest them ({shown})"
        leaf = loc[-1]
        known = list(section.model_fields) if section is not None else []
        hint = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        if not hint and section is not None and issubclass(section, ArchConfig):  # a key of another architecture
            arch = section.model_fields["arch"].default
            suggestion = f" (arch {arch} takes: {', '.join(k for k in known if k != 'arch') or 'no other keys'})"
        return f"{where}: unknown key '{key}'{suggestion}"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, (str, list)):
        from ups.storage import redact_all

        value = redact_all(value)  # a URI's credentials never reach the console
    got = "" if "got" in msg or isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: {key}: {msg}{got}"


def _walk(raw: tuple[int | str, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """An error's location as the user's dotted key, and the section that holds its last key.

    Pydantic puts the member of a union it tried into the location: a `model.<role>` section's
    architecture tag, or a type such as 'int' or 'tuple[int,int]'; walking the schema tells field
    names from those."""
    model: type[BaseModel] | None = Config
    parts: list[str] = []
    holder: type[BaseModel] | None = None
    for p in (str(p) for p in raw if isinstance(p, str)):
        if model is not None:  # inside a section: p is one of its keys, or one it does not have
            parts.append(p)
            holder, field = model, model.model_fields.get(p)
            model = _section_class(field.annotation) if field is not None else None
        elif len(parts) == 2 and parts[0] == "model" and p in models.configs(parts[1]):
            model = models.configs(parts[1])[p]  # the architecture tag: go on inside its class
        elif not re.search(r"[\[\],]|^(int|str|float|list|tuple|none)$", p):
            parts.append(p)  # a key inside a free-form mapping
    return parts, holder


def _section_class(annotation: Any) -> type[BaseModel] | None:
    """The section class a field holds (through Optional); None for a value or a union of sections."""
    args = getattr(annotation, "__args__", (annotation,))
    members = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return members[0] if len(members) == 1 else None


# ----------------------------------------------------------------------------------------------
# The resolved config, as saved with every run.

# Keys that change how a run is watched or checked, not what it computes: they do not enter the digest.
_NOT_DIGESTED = ("logging", "sweep", "gate", "scaling.allow_large", "ray.dashboard")


def to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def digest(cfg: Config) -> str:
    d = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_DIGESTED}
    for section in {key.partition(".")[0] for key in _NOT_DIGESTED if "." in key}:
        d[section] = {k: v for k, v in d[section].items() if f"{section}.{k}" not in _NOT_DIGESTED}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ: what a user is told when a resumed run's config changed."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k) and not k.startswith(_NOT_DIGESTED))
