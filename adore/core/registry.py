"""One small registry for everything chosen by name: methods, datasets, tasks, adapter schemes.

In the style of lm-evaluation-harness: entries register themselves where they are defined
(``@METHODS.register("h2o")``); a duplicate name is refused, and an unknown name is one line with a
did-you-mean and the full list. A registry never imports the modules that fill it: whoever needs the
complete list imports them first (``adore.methods`` does it for methods).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry, for one kind of thing (``kind`` appears in errors: "unknown method 'h3o'")."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] != entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r}, {entry!r})")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        hint = f" {self.hint}" if self.hint else ""
        return f"unknown {self.kind} {name!r}{guess}; choose one of: {', '.join(self.names())}{hint}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]


#: Every KV-cache method, by the name its ``conf/method/<name>.yaml`` uses.
METHODS: Registry[type] = Registry("method")
#: ``model.adapter=<scheme>:<arg>`` resolvers: scheme -> ``resolve(arg, context, model_name) -> folder``.
ADAPTER_SCHEMES: Registry[Callable] = Registry("adapter scheme")


def register_method(name: str) -> Callable[[type], type]:
    """``@register_method("h2o")`` above a :class:`~adore.core.policy.KVPolicy` dataclass."""

    def decorate(cls: type) -> type:
        METHODS.add(name, cls)
        cls.method_name = name
        return cls

    return decorate
