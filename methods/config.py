"""Load, validate and resolve experiment configs.

This module sits above every registry it checks a config against (methods and their hyper-parameters, certifiers
and their threat models, the published settings a run names), so it is the layer just below the CLI and the
Snakefile; the stages below never read a config, only the resolved spec a rule hands them. One validator serves the
Snakefile and the CLI, so a config that the DAG accepts is exactly a config that `python -m methods train
--configfile ...` accepts. Errors name the offending field (``runs.cohen-0.25.hparams.sigma``)
and are raised before anything runs.

A *run spec* is everything one (run, seed) needs, fully resolved: the run's overrides merged over the top-level
settings, defaults filled in, the method's hyper-parameters checked against its dataclass. Rules pass it to the CLI
as JSON, so a step never re-reads the config and Snakemake reruns a step when its spec changes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import re
import typing
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .certify.registry import CERTIFIERS, DEFAULT_CERTIFIERS, BatchEvaluator
from .core.data import TEST_SIZES
from .core.errors import ConfigError
from .core.interface import HparamError
from .core.io import spec_json
from .core.models import check_width, resolved_arch
from .core.paths import DEFAULT_CONFIG, REPO_ROOT, SCHEMA_PATH
from .registry import get_method
from .report.published import load as load_published
from .report.published import select as select_published
from .train.fast import check as check_fast_train

__all__ = ["ConfigError", "REPO_ROOT", "spec_json", "load", "validate", "resolve_run", "runs_of"]

#: Sections a run may override; everything else is experiment-wide.
RUN_OVERRIDES = ("dataset", "model", "train", "certify", "seeds")
#: Run keys that annotate the report (footnotes, published references) and are never part of a spec.
RUN_ANNOTATIONS = ("note", "published")
#: Top-level keys that describe runs rather than settings; never part of a spec.
RUN_KEYS = ("runs", "grids", "published")


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    """The parsed schema, read once per process (the Snakefile resolves every run × seed through it)."""
    if not SCHEMA_PATH.exists():
        raise ConfigError(f"config schema not found at {SCHEMA_PATH} (install the package editable: pip install -e .)")
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _field(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _check_schema(config: dict, schema: dict) -> None:
    validator_cls = jsonschema.validators.validator_for(schema)
    best = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(config))
    if best is not None:
        raise ConfigError(f"config error at {_field(best.absolute_path)}: {best.message}")


def _fill_defaults(instance: Any, schema: dict, root: dict) -> Any:
    """Fill `default` values of the schema into `instance`, recursively (follows local $refs)."""
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                instance[key] = _fill_defaults(instance[key], sub, root)
    return instance


def deep_merge(base: dict, override: dict) -> dict:
    """`override` merged into a copy of `base`; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expand_grids(grids: dict, runs: dict) -> dict:
    """`runs` plus one run per combination of each grid's list-valued hparams, named by the grid's template."""
    pattern = re.compile(_schema()["$defs"]["run_name"]["pattern"])
    out = copy.deepcopy(runs)
    for grid_name, grid in grids.items():
        where = f"grids.{grid_name}"
        sweeps = {k: v if isinstance(v, list) else [v] for k, v in grid["hparams"].items()}
        for key, values in sweeps.items():
            if not values:
                raise ConfigError(f"config error at {where}.hparams.{key}: an empty list sweeps nothing")
        for combo in itertools.product(*sweeps.values()):
            hparams = dict(zip(sweeps, combo))
            try:
                name = grid["name"].format(**hparams)
            except KeyError as exc:
                raise ConfigError(
                    f"config error at {where}.name: {{{exc.args[0]}}} is not one of the grid's "
                    f"hparams ({', '.join(sweeps)})"
                ) from None
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"config error at {where}.name: {exc}") from None
            if not pattern.fullmatch(name):
                raise ConfigError(
                    f"config error at {where}.name: {name!r} is not a valid run name (letters, digits, . _ + -)"
                )
            if name in out:
                raise ConfigError(
                    f"config error at {where}: run {name!r} is defined twice (names must differ, "
                    f"e.g. include every swept hparam in the name)"
                )
            out[name] = {
                "method": grid["method"],
                "hparams": hparams,
                **{k: copy.deepcopy(grid[k]) for k in (*RUN_OVERRIDES, *RUN_ANNOTATIONS, "resources") if k in grid},
            }
    return out


def validate(config: dict) -> dict:
    """Validate a raw config against the schema and the cross-field rules; return it with defaults filled and
    its grids expanded into runs.

    Run-level overrides are kept as written (not default-filled), so that they override only what they name.
    """
    if not isinstance(config, dict):
        raise ConfigError("config error at <top level>: expected a mapping")
    if not any(key in config for key in ("runs", "grids")):
        raise ConfigError(
            "config error at <top level>: no runs: give `runs` (named runs) and/or `grids` (families of runs)"
        )
    _check_finite(config, [])
    schema = _schema()
    _check_schema(config, schema)
    runs = expand_grids(config.get("grids", {}), config.get("runs", {}))
    experiment = _fill_defaults({k: copy.deepcopy(v) for k, v in config.items() if k not in RUN_KEYS}, schema, schema)
    experiment["runs"] = runs
    for name in runs:
        resolve_run(experiment, name, seed=None)  # raises on the first bad run
    for name, refs in config.get("published", {}).items():  # a grid's runs, named one by one
        if name not in runs:
            raise ConfigError(f"config error at published.{name}: no run named {name!r}")
        runs[name]["published"] = runs[name].get("published", []) + [
            r for r in refs if r not in runs[name].get("published", [])
        ]
    _check_published(runs)
    return experiment


def _check_published(runs: dict) -> None:
    """Every `published` reference names a setting of workflow/resources/published.csv."""
    refs = [(name, i, ref) for name, run in runs.items() for i, ref in enumerate(run.get("published", []))]
    if not refs:
        return
    table = load_published()
    for name, i, ref in refs:
        try:
            select_published(table, ref["paper"], ref["dataset"], ref["setting"])
        except KeyError as exc:
            raise ConfigError(f"config error at runs.{name}.published.{i}: {exc.args[0]}") from None


def load(path: str | Path | None = None) -> dict:
    """Read and validate a YAML config file (the default smoke config when `path` is None)."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"config file {path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
        ) from None
    return validate(raw)


def resolve_run(config: dict, name: str, seed: int | None) -> dict:
    """The fully resolved spec of run `name` at `seed` (a validated config is expected)."""
    if name not in config["runs"]:
        raise ConfigError(f"config error at runs: no run named {name!r} (known: {', '.join(config['runs'])})")
    run = config["runs"][name]
    schema = _schema()
    experiment = {k: v for k, v in config.items() if k not in RUN_KEYS}
    spec = deep_merge(experiment, {k: run[k] for k in RUN_OVERRIDES if k in run})
    spec = _fill_defaults(spec, schema, schema)
    where = f"runs.{name}"

    method = get_method(run["method"])
    _check_hparam_types(method.Hparams, run.get("hparams", {}), f"{where}.hparams")
    try:
        hparams = method.Hparams(**run.get("hparams", {}))
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(method.Hparams))
        raise ConfigError(f"config error at {where}.hparams: {exc} (fields of {run['method']}: {known})") from None
    except HparamError as exc:  # its message starts with the field's name
        raise ConfigError(f"config error at {where}.hparams.{exc}") from None

    if hasattr(method, "ARCH"):  # its own architecture: model.arch and model.width do not apply
        spec["model"]["width"] = None
    else:
        try:
            check_width(resolved_arch(spec["model"]["arch"], spec["dataset"]), spec["model"]["width"])
        except ValueError as exc:
            raise ConfigError(f"config error at {where}.model.width: {exc}") from None

    cert = spec["certify"]
    if cert["certifiers"] is None:
        cert["certifiers"] = list(DEFAULT_CERTIFIERS[method.THREAT_MODEL])
    _check_certifiers(cert, method.THREAT_MODEL, run["method"], f"{where}.certify")
    _check_subset(cert, spec["dataset"], f"{where}.certify")
    cert["attack_eps"] = _attack_eps(cert, hparams, f"{where}.certify.attack_eps")
    if cert["n0"] > cert["n"]:
        raise ConfigError(f"config error at {where}.certify.n0: n0 = {cert['n0']} exceeds n = {cert['n']}")
    if cert["sigma"] is None:
        cert["sigma"] = getattr(hparams, "sigma", None)
    if cert["adaptive"]["radii"] is None:  # the adaptive certifier decides the radii the tables ask about
        cert["adaptive"]["radii"] = list(spec["report"]["radii"])
    if cert["sequential"]["radii"] is None:  # so does the sequential certifier
        cert["sequential"]["radii"] = list(spec["report"]["radii"])
    if abs(sum(cert["t_certify_split"]) - 1) > 1e-9:
        raise ConfigError(
            f"config error at {where}.certify.t_certify_split: the fractions of alpha must sum to 1, "
            f"got {cert['t_certify_split']}"
        )
    train = spec["train"]
    check_fast_train(train, f"{where}.train")
    fractions = train.get("milestone_fractions")
    if train["schedule"] == "multistep" and not train["milestones"] and not fractions:
        raise ConfigError(f"config error at {where}.train.milestones: the multistep schedule needs milestones")
    if fractions and train["milestones"]:
        raise ConfigError(f"config error at {where}.train.milestone_fractions: give milestones or milestone_fractions, "
                          f"not both")  # fmt: skip
    for key in ("milestones", "milestone_fractions"):
        if (train.get(key) or []) != sorted(train.get(key) or []):
            raise ConfigError(f"config error at {where}.train.{key}: must be increasing, got {train[key]}")

    for key in ("resources", "report", "seeds", "bench"):  # none changes what this (run, seed) computes
        spec.pop(key, None)
    spec.update(
        run=name, method=run["method"], hparams=dataclasses.asdict(hparams), seed=seed, threat_model=method.THREAT_MODEL
    )
    return spec


def _check_finite(node, path: list) -> None:
    """No inf or NaN anywhere (YAML's .inf and .nan pass the schema's `number` and fail only inside a job)."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config error at {_field(path)}: must be a finite number, got {node}")
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, [*path, key])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, [*path, i])


#: What a hyper-parameter annotated with this type accepts (bool is an int in Python, never one here).
_ACCEPTS = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _check_hparam_types(hparams_cls, given: dict, where: str) -> None:
    """A float where an integer is needed (`k: 16.5`) fails here naming the field, not at the first training step
    with a torch error that names none."""
    hints = typing.get_type_hints(hparams_cls)
    for name, value in given.items():
        wanted = hints.get(name)
        if wanted not in _ACCEPTS:
            continue
        if not isinstance(value, _ACCEPTS[wanted]) or (wanted is not bool and isinstance(value, bool)):
            raise ConfigError(f"config error at {where}.{name}: must be {wanted.__name__}, got {value!r}")


def _check_subset(cert: dict, dataset: str, where: str) -> None:
    """The certified subset lies inside the test set, whose size is known before any job runs."""
    size = TEST_SIZES.get(dataset)
    if size is None:
        return
    if cert["start"] >= size:
        raise ConfigError(f"config error at {where}.start: {cert['start']} is past the end of the {dataset} test "
                          f"set ({size} images)")  # fmt: skip
    if cert["count"] is not None:
        last = cert["start"] + (cert["count"] - 1) * cert["skip"]
        if last >= size:
            raise ConfigError(f"config error at {where}.count: {cert['count']} images from start {cert['start']} "
                              f"every {cert['skip']} reach index {last}, past the {dataset} test set ({size} "
                              f"images)")  # fmt: skip


def _check_certifiers(cert: dict, threat_model: str, method: str, where: str) -> None:
    """Every configured certifier is registered and can evaluate the run's method (an ℓ∞ certifier on an ℓ2 run
    fails here, before any job runs, and not after training)."""
    for i, name in enumerate(cert["certifiers"]):
        if name not in CERTIFIERS:
            raise ConfigError(f"config error at {where}.certifiers.{i}: unknown certifier {name!r} "
                              f"(known: {', '.join(CERTIFIERS)})")  # fmt: skip
        if threat_model not in CERTIFIERS[name].threat_models:
            served = " or ".join(CERTIFIERS[name].threat_models)
            raise ConfigError(f"config error at {where}.certifiers.{i}: {name} evaluates {served} models; {method} is "
                              f"{threat_model}")  # fmt: skip


def _fraction(value, where: str) -> float:
    """A radius as written in a config: a number or "k/255" (exact in the config, a float in the spec)."""
    if isinstance(value, str):
        numerator, denominator = (int(part) for part in value.split("/"))
        if denominator == 0:
            raise ConfigError(f"config error at {where}: division by zero in {value!r}")
        value = numerator / denominator
    if not value > 0:
        raise ConfigError(f"config error at {where}: must be > 0, got {value!r}")
    return float(value)


def _attack_eps(cert: dict, hparams, where: str) -> dict[str, float]:
    """{evaluator: ε} for the run's single-ε evaluators: as configured, else the run's own test radius."""
    single = [c for c in cert["certifiers"] if isinstance(CERTIFIERS[c], BatchEvaluator) and CERTIFIERS[c].single_eps]
    given = cert.get("attack_eps")
    if isinstance(given, dict):
        unknown = [name for name in given if name not in single]
        if unknown:
            raise ConfigError(f"config error at {where}.{unknown[0]}: not one of this run's *-at-eps evaluators "
                              f"({', '.join(single) or 'none'})")  # fmt: skip
    own = getattr(hparams, "eps_test", None) or getattr(hparams, "epsilon", None)
    out = {}
    for name in single:
        value = given.get(name) if isinstance(given, dict) else given
        if value is None:
            if own is None:
                raise ConfigError(f"config error at {where}: {name} needs a radius and the method has no eps_test or "
                                  f"epsilon hyper-parameter to default to")  # fmt: skip
            value = own
        out[name] = _fraction(value, f"{where}.{name}" if isinstance(given, dict) else where)
    return out


def notes_of(config: dict) -> dict[str, str]:
    """Each run's caveat (`note`), for the report's footnotes; notes are not part of a spec, so editing one
    re-renders the tables without retraining."""
    return {name: run["note"] for name, run in config["runs"].items() if run.get("note")}


def published_of(config: dict) -> dict[str, list[dict]]:
    """Each run's published references (`published`), for summary.csv; like notes, never part of a spec."""
    return {name: run["published"] for name, run in config["runs"].items() if run.get("published")}


def run_resource(config: dict, run: str | None, step: str, key: str):
    """A job's request: the run's own `resources.<step>.<key>` if it sets one, else the experiment's (None where
    neither sets an optional key such as `partition`)."""
    override = (config["runs"][run].get("resources", {}) if run else {}).get(step, {})
    return override.get(key, config["resources"][step].get(key))


#: Optional per-step SLURM placement keys of the config → the executor plugin's resource names.
SLURM_KEYS = {"partition": "slurm_partition", "account": "slurm_account", "gpu_model": "gpu_model"}


def slurm_keys_used(config: dict, step: str) -> list[str]:
    """The SLURM placement keys the config or any run sets for `step`: only these become rule resources, so that
    an unset key leaves the profile's default-resources in force."""
    used = set(config["resources"][step]) | {
        k for run in config["runs"].values() for k in run.get("resources", {}).get(step, {})
    }
    return [key for key in SLURM_KEYS if key in used]


def runs_of(config: dict) -> list[tuple[str, str, int]]:
    """Every (dataset, run, seed) the config asks for."""
    out = []
    for name, run in config["runs"].items():
        dataset = run.get("dataset", config["dataset"])
        for seed in run.get("seeds", config["seeds"]):
            out.append((dataset, name, seed))
    return out
