"""One generic registry; each kind of thing (languages, models, data sets, translators, judges, generation
backends) has one, beside the stage that uses it.

An entry is written once: either the object itself (``@JUDGES.register("name")`` on a class or function,
``LANGUAGES.add(code, record)``) or a lazy ``"module:attr"`` string, imported on first use so that listing
names or checking a config never imports torch, scikit-learn or vLLM. A class loaded from the registry
gets its registry name as ``name`` when it declares none, so the name is never written twice. Users add
their own entries from their own modules (``import_modules`` in the config), which call ``add`` or
``register`` on the registry they extend."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from pipelines.errors import ConfigError, UnknownNameError

T = TypeVar("T")


def load_object(ref: str) -> Any:
    """The object a ``"package.module:attr"`` string names."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ConfigError(f"'{ref}' is not a 'module:attr' reference")
    try:
        obj: Any = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import {module!r} for '{ref}': {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module!r} has no attribute {attr!r} (from '{ref}')") from None
    return obj


def import_modules(modules: list[str]) -> None:
    """Import user modules whose import registers entries (plugins), naming the fix when one is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"import_modules: cannot import {name!r} ({exc}); put its folder on PYTHONPATH or install it"
            ) from None


def _named(item: Any, name: str) -> Any:
    """A class that declares no `name` of its own gets its registry name (written once, in the entry)."""
    if inspect.isclass(item) and not item.__dict__.get("name"):
        item.name = name
    return item


class Registry(Generic[T]):
    def __init__(self, kind: str, entries: Mapping[str, T | str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T | str] = {}
        self._descriptions: dict[str, str] = {}
        for name, item in (entries or {}).items():
            self.add(name, item)

    def add(self, name: str, item: T | str, description: str = "") -> T | str:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = _named(item, name) if not isinstance(item, str) else item
        if description:
            self._descriptions[name] = description
        return item

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator form: ``@JUDGES.register("refusal-phrase")``."""

        def deco(item: T) -> T:
            self.add(name, item, description)
            return item

        return deco

    def get(self, name: str) -> T:
        try:
            item = self._items[name]
        except KeyError:
            raise UnknownNameError(self._unknown(name)) from None
        if isinstance(item, str):
            item = self._items[name] = _named(load_object(item), name)
        return item  # type: ignore[return-value]

    def check(self, name: str) -> None:
        """Fails like get() for an unknown name, without importing anything."""
        if name not in self._items:
            raise UnknownNameError(self._unknown(name))

    def _unknown(self, name: str) -> str:
        known = ", ".join(sorted(self._items)) or "(none)"
        close = difflib.get_close_matches(name, list(self._items), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {self.kind} '{name}'{hint}; known {self.kind}s: {known}"

    def describe(self, name: str) -> str:
        """One line about an entry: its registered description, else its docstring's first line."""
        if name in self._descriptions:
            return self._descriptions[name]
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self.get(name)) for name in self.names()]


def bind_options(kind: str, name: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Checks `options` against the keyword arguments `factory` accepts, so a typo fails when the config
    loads, naming the key and the accepted ones, instead of deep inside a Ray worker."""
    sig = inspect.signature(factory)
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # it takes anything: it checks its own options
    accepted = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)
                and p != "self"]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ConfigError(f"{kind} '{name}' has no option(s) {unknown}; it accepts: {', '.join(accepted) or 'none'}")
    try:
        sig.bind_partial(**options)
    except TypeError as exc:
        raise ConfigError(f"{kind} '{name}': {exc}") from None
