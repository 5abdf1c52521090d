"""``synkafka --config FILE``: a TOML file of option defaults, checked before any command.

Top-level keys apply to every command that has the option; a table named after a
command (or ``[topics.ensure]`` for a sub-command) applies to that command and
overrides them. Keys are the option names of ``--help`` without the dashes (see
:func:`_option_keys`). The file becomes click's ``default_map``, so a flag and its
environment variable still win over it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import typer

from adapter.core.errors import ConfigError

__all__ = ["config_default_map"]

# Where a key was set, as error messages name it: "top level:" or "[consume]".
_Scope = dict[str, tuple[Any, str]]


def config_default_map(path: Path, root: Any) -> dict[str, Any]:
    """Turn a TOML file into click's ``default_map`` for every command.

    Every key and value is checked here, before any command runs, because click would
    silently ignore a key it does not know and would blame an environment variable for
    a value of the wrong type.

    Args:
        path: the TOML file.
        root: the root click group (``ctx.command`` of the ``synkafka`` callback).

    Raises:
        ConfigError: the file cannot be read or parsed, names a table or key no
            command has, or gives a value its option cannot take.
    """
    return _DefaultMap(path).build(root, "synkafka", _read_toml(path), {}, "")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply to read") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start + 1})"
        ) from None


def _option_keys(command: Any) -> dict[str, Any]:
    """The TOML keys one command (or group) takes, each to the parameter it sets.

    A key is an option's long name as ``--help`` shows it, without the dashes
    (``json``, ``from``, ``metrics-port``), or the short name of an option that has
    no long one (``X``). The Python parameter name (``as_json``, ``start_from``) is
    still accepted, because that is what earlier releases read.
    """
    keys: dict[str, Any] = {}
    for param in command.params:
        if param.name is None:
            continue
        long = [o[2:] for o in param.opts if o.startswith("--")]
        short = [o[1:] for o in param.opts if o.startswith("-") and o[1:2] != "-"]
        for key in {*(long or short), param.name, param.name.replace("_", "-")}:
            keys[key] = param
    return keys


def _subtree_keys(command: Any) -> set[str]:
    keys = set(_option_keys(command))
    for sub in getattr(command, "commands", {}).values():
        keys |= _subtree_keys(sub)
    return keys


class _DefaultMap:
    """Builds the default map of one file, command by command down the tree."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def _fail(self, message: str) -> ConfigError:
        return ConfigError(f"config file {self._path}: {message}")

    def build(
        self,
        command: Any,
        name: str,
        table: dict[str, Any],
        inherited: _Scope,
        label: str,
    ) -> dict[str, Any]:
        """The default map of ``command`` (``label`` its table, "" for the root)."""
        own_keys = _option_keys(command) if label else {}
        scope = dict(inherited)
        scope.update(self._table_values(command, table, label, own_keys))
        out: dict[str, Any] = {}
        if label:  # the root's own options are not read from the file
            for key, (value, where) in scope.items():
                param = own_keys.get(key)
                if param is not None:
                    out[param.name] = self._convert(
                        command, name, param, key, value, where
                    )
        subs: dict[str, Any] = getattr(command, "commands", {})
        for sub_name, sub in subs.items():
            own = table.get(sub_name, {})
            own = own if isinstance(own, dict) else {}
            inner = f"{label}.{sub_name}" if label else sub_name
            out[sub_name] = self.build(sub, sub_name, own, scope, inner)
        return out

    def _table_values(
        self, command: Any, table: dict[str, Any], label: str, own_keys: dict[str, Any]
    ) -> _Scope:
        """The keys a table sets, each checked to be an option of its subtree."""
        where = f"[{label}]" if label else "top level:"
        subs: dict[str, Any] = getattr(command, "commands", {})
        known = _subtree_keys(command)
        if not label:
            known -= set(_option_keys(command))  # the root's own --config and --version
        values: _Scope = {}
        seen: dict[str, str] = {}
        for key, value in table.items():
            if isinstance(value, dict):
                if key not in subs:
                    inner = f"{label}.{key}" if label else key
                    raise self._fail(
                        f"unknown table [{inner}] (tables are named after commands, "
                        "such as [consume] or [topics.ensure])"
                    )
                continue
            self._check_known(key, known, label, where)
            param = own_keys.get(key)
            if param is not None:
                if param.name in seen:
                    raise self._fail(
                        f"{where} {seen[param.name]!r} and {key!r} set the same option"
                    )
                seen[param.name] = key
            values[key] = (value, where)
        return values

    def _check_known(self, key: str, known: set[str], label: str, where: str) -> None:
        if key in known:
            return
        if not label:
            raise self._fail(f"{where} unknown key {key!r} (no command has --{key})")
        raise self._fail(
            f"{where} unknown key {key!r} (keys are the long option names "
            f"of `synkafka {label.replace('.', ' ')} --help`, without dashes)"
        )

    def _convert(
        self, command: Any, name: str, param: Any, key: str, value: Any, where: str
    ) -> Any:
        """The value as click will see it, checked now so the error names the file."""
        if param.multiple and not isinstance(value, list):
            value = [value]  # `stream = "events"` reads as a list of one
        elif not param.multiple and isinstance(value, list):
            raise self._fail(f"{where} {key}: takes one value, not a list")
        try:
            param.process_value(typer.Context(command, info_name=name), value)
        except typer.BadParameter as exc:
            # The bare message: click's own would name the environment variable.
            raise self._fail(f"{where} {key}: {exc.message}") from None
        return value
