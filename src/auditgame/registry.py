"""One registry of families, attacks, auditors and violation kinds, keyed by kind and name.

Built-ins register with the decorators below when their modules are imported (each track's
package lists its built-in modules of each kind in ``BUILTINS``; importing a package registers
nothing, so that importing ``auditgame.auditors.base`` does not import every auditor); a third-party
package registers the same way from a module named in the ``auditgame.plugins`` entry-point
group, e.g. in its ``pyproject.toml``::

    [project.entry-points."auditgame.plugins"]
    mine = "my_package.auditors"

Importing that module runs its ``@auditor("...")`` decorators; nothing else is needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from auditgame.errors import RegistryError

if TYPE_CHECKING:
    from auditgame.attacks.base import Planter
    from auditgame.auditors.base import Auditor
    from auditgame.families.base import Family
    from auditgame.violation import ViolationKind

Kind = Literal["family", "attack", "auditor", "violation"]
KINDS: tuple[Kind, ...] = ("family", "attack", "auditor", "violation")
ENTRY_POINT_GROUP = "auditgame.plugins"
TRACKS = (
    "auditgame.image",
    "auditgame.vector",
    "auditgame.maxofk",
    "auditgame.text",
    "auditgame.text.cipher",
)
"""The packages of the built-in tracks; each one's ``BUILTINS`` maps a kind to its modules."""

T = TypeVar("T")

_registry: dict[Kind, dict[str, Any]] = {kind: {} for kind in KINDS}
_loaded = False
_builtins_loaded: set[Kind] = set()


def register(kind: Kind, name: str) -> Callable[[T], T]:
    """Decorator that files a class under ``(kind, name)`` and sets its ``name`` attribute."""

    def decorate(obj: T) -> T:
        if not isinstance(obj, type):
            # A function slipped between a decorator and its class would take the class's name.
            raise RegistryError(f"{kind} {name!r}: only a class can be registered, not {obj!r}")
        existing = _registry[kind].get(name)
        if existing is not None and existing is not obj:
            raise RegistryError(f"{kind} {name!r} is already registered by {existing!r}")
        _registry[kind][name] = obj
        obj.name = name  # type: ignore[attr-defined]
        return obj

    return decorate


def family(name: str) -> Callable[[T], T]:
    return register("family", name)


def attack(name: str) -> Callable[[T], T]:
    return register("attack", name)


def auditor(name: str) -> Callable[[T], T]:
    return register("auditor", name)


def load_builtins(*kinds: Kind) -> None:
    """Import the built-in modules of ``kinds`` (default: every kind), no plugin, once."""
    for kind in kinds or KINDS:
        if kind in _builtins_loaded:
            continue
        _builtins_loaded.add(kind)
        for track in TRACKS:
            for module in importlib.import_module(track).BUILTINS[kind]:
                importlib.import_module(module)


def load_plugins() -> None:
    """Import the built-ins and every module in the entry-point group, once."""
    global _loaded
    load_builtins()
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:
            raise RegistryError(
                f"plugin {entry.name!r} ({entry.value}) failed to load: {exc}"
            ) from exc


@overload
def get(kind: Literal["family"], name: str) -> type[Family]: ...
@overload
def get(kind: Literal["attack"], name: str) -> type[Planter]: ...
@overload
def get(kind: Literal["auditor"], name: str) -> type[Auditor]: ...
@overload
def get(kind: Literal["violation"], name: str) -> type[ViolationKind]: ...
@overload
def get(kind: Kind, name: str) -> Any: ...


def get(kind: Kind, name: str) -> Any:
    """The class registered as ``(kind, name)``, typed by its kind (a family's class, an
    attack's, an auditor's, a violation kind's). Plugins are imported only when the name is
    not a built-in (or already registered): a game's referee, which holds the key, asks only
    for built-in families and attacks, so no plugin's import-time code runs beside the key."""
    load_builtins(kind)
    if name not in _registry[kind]:
        load_plugins()
    try:
        return _registry[kind][name]
    except KeyError:
        known = ", ".join(sorted(_registry[kind])) or "none"
        raise RegistryError(f"unknown {kind} {name!r}; known: {known}") from None


def registered(kind: Kind, name: str) -> Any | None:
    """What is registered as ``(kind, name)`` so far, importing nothing."""
    return _registry[kind].get(name)


def is_builtin(obj: object) -> bool:
    """Whether ``obj`` ships in this package (and so is trusted code in a referee)."""
    return getattr(obj, "__module__", "").startswith("auditgame.")


def plugin_modules() -> list[str]:
    """The entry-point modules, by name, without importing any."""
    return [entry.module for entry in entry_points(group=ENTRY_POINT_GROUP)]


def names(kind: Kind) -> list[str]:
    """Every registered name of ``kind``, plugins imported."""
    load_plugins()
    return sorted(_registry[kind])


def loaded(kind: Kind) -> list[str]:
    """The built-in names of ``kind`` and those registered so far, importing no plugin: for
    code that must not run a plugin's import-time code (a report over a store)."""
    load_builtins(kind)
    return sorted(_registry[kind])
