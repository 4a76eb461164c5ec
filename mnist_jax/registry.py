"""Name -> definition tables for the parts a researcher swaps (models, optimizers).

An entry is one definition plus the config fields it reads, with their defaults; the
config schema takes every registered entry's fields as known fields of its group, so
registering a model or optimizer is all it takes to configure, sweep and resume it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from mnist_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Entry:
    build: Callable[..., Any]
    fields: Mapping[str, Any]  # config field -> default, passed to `build` by name
    # (**fields) -> None: raises a one-line ConfigError for a value that cannot work
    check: Callable[..., None] | None = None


class Registry:
    """The entries of one config group (`model`, `optim`), chosen by `GROUP.name`."""

    def __init__(self, group: str):
        self.group = group
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        *,
        fields: Mapping[str, Any] | None = None,
        check: Callable[..., None] | None = None,
    ):
        """Decorator: `@MODELS.register("mlp", fields={"hidden_units": (100, 100)})`.
        `build` receives each field's configured value as a keyword argument; so does
        `check`, which the config schema calls to refuse a value in one line."""

        def add(build):
            for field, default in (fields or {}).items():
                known = self.defaults().get(field, default)
                if field == "name" or known != default:
                    raise ValueError(
                        f"{self.group}.{field}: registered with default {known!r} "
                        f"already; {name!r} cannot give it {default!r}"
                    )
            self._entries[name] = Entry(build, dict(fields or {}), check)
            return build

        return add

    def unregister(self, name: str) -> None:
        """Removes an entry (a model defined for one notebook session or test)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise ConfigError(
                f"{self.group}.name={name!r} is not one of {', '.join(self._entries)}"
            )
        return self._entries[name]

    def defaults(self) -> dict[str, Any]:
        """Every field any entry reads, with its default: the group's config fields."""
        merged: dict[str, Any] = {}
        for entry in self._entries.values():
            merged |= entry.fields
        return merged

    def arguments(self, group_config) -> dict[str, Any]:
        """The keyword arguments `build` gets for `group_config` (missing fields take
        their defaults, so a config from before a field existed still builds)."""
        entry = self.entry(group_config.name)
        return {f: group_config.get(f, d) for f, d in entry.fields.items()}

    def check(self, group_config) -> None:
        """The chosen entry's own check of its fields' values, if it has one."""
        entry = self.entry(group_config.name)
        if entry.check is not None:
            entry.check(**self.arguments(group_config))

    def unused(self, group_config) -> list[str]:
        """Fields set away from their default that the chosen entry does not read: a
        setting that would silently do nothing (dropout for the linear model)."""
        used = self.entry(group_config.name).fields
        return [
            f
            for f, default in self.defaults().items()
            if f not in used and f in group_config and group_config[f] != default
        ]
