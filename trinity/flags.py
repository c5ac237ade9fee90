"""Typer options generated from a configuration model, so that every field is a flag and a new
field becomes one without touching the command.

Works on pydantic models (help from ``Field(description=...)``) and on dataclasses (help from
the ``Attributes:`` section of the class docstring).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import click
import typer
from pydantic import BaseModel

__all__ = ["Flag", "LazyCommand", "command_with_flags", "model_flags", "nested_overrides"]

_ATTR = re.compile(r"^\s+([a-z_][a-z0-9_]*(?:\s*/\s*[a-z_][a-z0-9_]*)*):\s*(.*)$")


@dataclass(frozen=True)
class Flag:
    """One generated option: the config path it sets and how the command line spells it."""

    path: tuple[str, ...]
    param: str
    decls: tuple[str, ...]
    annotation: Any
    help: str
    panel: str | None = None
    convert: Callable[[Any], Any] | None = None


def _docstring_help(cls: type) -> dict[str, str]:
    out: dict[str, str] = {}
    names: list[str] = []
    for line in (cls.__doc__ or "").splitlines():
        if m := _ATTR.match(line):
            names = [n.strip() for n in m.group(1).split("/")]
            for n in names:
                out[n] = m.group(2).strip()
        elif names and line.strip() and line.startswith(" " * 12):
            for n in names:
                out[n] += " " + line.strip()
        else:
            names = []
    return out


def _fields(model: type) -> list[tuple[str, Any, str, Any]]:
    """``(name, type, help, default)`` of every field."""
    hints = typing.get_type_hints(model)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [(n, hints[n], f.description or "", f.get_default(call_default_factory=True))
                for n, f in model.model_fields.items()]
    docs = _docstring_help(model)
    return [(f.name, hints[f.name], docs.get(f.name, ""), f.default) for f in dataclasses.fields(model)]


def _with_default(help_: str, default: Any) -> str:
    if default is None or default is dataclasses.MISSING or default == frozenset():
        return help_
    shown = str(default).lower() if isinstance(default, bool) else str(default)
    return f"{help_} (default: {shown})"


def _option_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    return annotation if annotation in (int, float, str, bool) else str


def model_flags(model: type, *, path: tuple[str, ...] = (), skip: Sequence[str] = (), panel: str | None = None,
                defaults: Any = None, names: Mapping[str, Sequence[str]] = {}, types_: Mapping[str, Any] = {},
                helps: Mapping[str, str] = {}, converters: Mapping[str, Callable[[Any], Any]] = {}) -> list[Flag]:
    """One flag per field of ``model`` (``--field-name``; ``--x/--no-x`` for booleans); ``defaults``
    (an instance) overrides the defaults shown in the help."""
    flags = []
    for name, annotation, help_, default in _fields(model):
        if name in skip:
            continue
        if dataclasses.is_dataclass(annotation):  # a nested table: --<name>-<field> flags
            nested = model_flags(annotation, path=(*path, name), panel=panel, defaults=getattr(defaults, name, None))
            flags += [dataclasses.replace(f, decls=tuple(f"--{name.replace('_', '-')}-{d[2:]}" for d in f.decls))
                      for f in nested]
            continue
        help_ = helps.get(name) or _with_default(help_, getattr(defaults, name, default))
        kind = types_.get(name) or _option_type(annotation)
        decls = tuple(names.get(name) or (f"--{name.replace('_', '-')}",))
        if kind is bool:
            decls = (f"{decls[0]}/--no-{decls[0][2:]}",)
        flags.append(Flag((*path, name), "_".join((*path, name)), decls, kind, help_, panel, converters.get(name)))
    return flags


def nested_overrides(flags: Sequence[Flag], values: Mapping[str, Any]) -> dict[str, Any]:
    """The given flags' values as a nested dict of config overrides (unset flags left out)."""
    out: dict[str, Any] = {}
    for flag in flags:
        value = values.get(flag.param)
        if value is None or value == []:
            continue
        node = out
        for key in flag.path[:-1]:
            node = node.setdefault(key, {})
        node[flag.path[-1]] = flag.convert(value) if flag.convert else value
    return out


def command_with_flags(fn: Callable[..., Any], flags: Sequence[Flag]) -> Callable[..., Any]:
    """``fn(overrides, **own_params)`` as a typer command with ``flags`` after its own parameters."""
    own = list(inspect.signature(fn).parameters.values())[1:]
    extra = [inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[f.annotation],
                               default=typer.Option(None, *f.decls, help=f.help, rich_help_panel=f.panel))
             for f in flags]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        mine = {p.name: kwargs.pop(p.name) for p in own}
        return fn(nested_overrides(flags, kwargs), **mine)

    command.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
    return command


class LazyCommand(click.Command):
    """A click command built on first use, so listing it (``trinity --help``) imports nothing heavy."""

    def __init__(self, name: str, help: str, load: Callable[[], click.Command]) -> None:
        super().__init__(name, help=help)
        self._load, self._real = load, None

    @property
    def real(self) -> click.Command:
        if self._real is None:
            self._real = self._load()
        return self._real

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        return self.real.make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        return self.real.invoke(ctx)
