"""Reading recipes: YAML files (bundled or the user's) -> validated, frozen dataclasses.

Shared by the classification recipe (`TrainRecipe`) and the dense one (`DenseRecipe`), so that every recipe
gets the same `--set key=value` syntax, the same `base:` inheritance and the same one-line errors for an
unknown key or a value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["RECIPE_ROOT", "parse_overrides", "read_recipe", "read_yaml", "build_recipe", "check_fields",
           "check_rules", "merge_overrides", "recipe_names", "INTERPOLATIONS"]

RECIPE_ROOT = Path(__file__).resolve().parent.parent / "recipes"
# The resize filters timm's transforms take (`random`: bilinear or bicubic at random, for training); a recipe
# value, or one read back from a weights file, outside these is refused before timm meets it.
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming", "random")


def read_yaml(path: Path, what: str = "recipe") -> Any:
    """A YAML file as plain data: a tag (`!!python/object`, ...) or any other YAML error is one line, and
    nothing in the file is ever constructed beyond plain values (safe_load)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.constructor.ConstructorError as e:
        tag = getattr(e, "problem", "") or str(e).splitlines()[0]
        raise ConfigError(f"{path} holds a YAML tag dccnext does not read ({tag}); a {what} is plain YAML "
                          "(mappings, lists, numbers, strings): remove the tag") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save the {what} as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path} ({e.strerror})") from None


def parse_overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """`["lr=2e-4", "model.global_op=none"]` -> {"lr": 0.0002, "model": {"global_op": "none"}}.

    Values are parsed as YAML; a dotted key names an entry of a mapping key (a recipe's `model:`).
    """
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or key.startswith(".") or key.endswith("."):
            raise ConfigError(f"--set {item!r} is not key=value (for example --set lr=1e-3)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: {value!r} is not a valid value") from None
        outer, dot, inner = key.partition(".")
        merge_overrides(out, {outer: {inner: parsed}} if dot else {key: parsed})
    return out


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`data` updated in place by `overrides`; a mapping given to a mapping key adds to it, entry by entry."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def recipe_names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def _find(name: str | Path, folder: Path, aliases: dict[str, str], what: str) -> Path:
    text = str(name)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{what} file {path} does not exist")
        return path
    path = folder / f"{aliases.get(text, text)}.yaml"
    if not path.is_file():
        raise ConfigError(f"no {what} {text!r}; use one of {', '.join(recipe_names(folder))} or a YAML file")
    return path


def read_recipe(name: str | Path, folder: Path, aliases: dict[str, str] | None = None,
                what: str = "recipe", _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Path]:
    """The mapping a recipe file holds, with its `base:` recipes merged under it (a base names a bundled recipe
    or a file relative to the one that names it)."""
    path = _find(name, folder, aliases or {}, what)
    if path.resolve() in _chain:
        names = " -> ".join(p.name for p in (*_chain, path.resolve()))
        raise ConfigError(f"{what} {path} is its own base ({names}); remove one of the base: lines")
    data = read_yaml(path, what) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a YAML mapping of recipe keys")
    base = data.pop("base", None)
    if base is None:
        return data, path
    relative = path.parent / str(base)
    merged, _ = read_recipe(relative if relative.is_file() else base, folder, aliases, what,
                            (*_chain, path.resolve()))
    return merge_overrides(merged, data), path


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint))


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(fits, value converted to the annotated type): ints pass as floats, lists become tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        item_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_hints) != len(value):
            return False, value
        items = [_coerce(v, h) for v, h in zip(value, item_hints, strict=True)]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return False, value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    return True, value


def check_fields(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` with every value converted to its field's annotated type, after checking every key is a field."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    values = {}
    for key, value in data.items():
        ok, converted = _coerce(value, hints[key])
        if not ok:
            raise ConfigError(f"{source}: {key} must be {_describe(hints[key])}, got {value!r}")
        values[key] = converted
    return values


def check_rules(rules: typing.Iterable[tuple[str, Any, bool, str]]) -> None:
    """How every config dataclass checks its values: (field, value, holds, rule) in order; the first rule that
    does not hold is one line naming the field, the rule ("must be ...") and the value given."""
    for name, value, holds, rule in rules:
        if not holds:
            raise ConfigError(f"{name} {rule}, got {list(value) if isinstance(value, tuple) else value!r}")


def build_recipe(cls: type, data: dict[str, Any], source: str):
    """`cls(**data)` after checking every key exists and every value has its annotated type."""
    values = check_fields(cls, data, f"recipe {source}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"recipe {source}: {e}") from None
