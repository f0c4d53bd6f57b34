"""YAML loading that remembers where each key came from.

Operators edit these files by hand; an error that says ``proxy.yaml:14:
upstream.port: expected an integer`` is worth far more than a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, already prefixed with file, line and key."""


@dataclass
class Located:
    """A parsed YAML document plus the line of every key path in it."""

    source: str
    data: Any
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def error(self, path: tuple[str, ...], message: str) -> ConfigError:
        line = self._line(path)
        where = f"{self.source}:{line}" if line else self.source
        key = ".".join(path) if path else "(top level)"
        return ConfigError(f"{where}: {key}: {message}")

    def _line(self, path: tuple[str, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


def resolve_secret(doc: Located, path: tuple[str, ...], value: Any) -> str:
    """A secret written inline, as ``{env: NAME}`` or as ``{file: PATH}``; keeping it
    out of the file itself is the point of the last two."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (how, where), = value.items()
        if how == "env":
            if where not in os.environ:
                raise doc.error(path, f"environment variable {where} is not set")
            return os.environ[where]
        if how == "file":
            try:
                return Path(where).read_text().strip()
            except OSError as exc:
                raise doc.error(path, f"cannot read {where}: {exc.strerror}") from exc
    raise doc.error(path, "expected a string, {env: NAME} or {file: PATH}")


def _scalar(node: yaml.Node) -> Any:
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _walk(node: yaml.Node, path: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(_scalar(key_node))
            child = (*path, key)
            lines[child] = key_node.start_mark.line + 1
            if key in out:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key "
                                  f"{'.'.join(child)}")
            out[key] = _walk(value_node, child, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, str(i)), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def parse_yaml(text: str, source: str) -> Located:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    lines: dict[tuple[str, ...], int] = {}
    if node is None:
        return Located(source, {}, lines)
    try:
        data = _walk(node, (), lines)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return Located(source, data, lines)


def load_yaml(path: str | Path) -> Located:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from exc
    return parse_yaml(text, str(p))
