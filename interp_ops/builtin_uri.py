"""``builtin:NAME?key=value&...`` URIs, spelled and checked one way for every family of builtins.

A family (the data sets of ``datasets``, the concept set of ``concepts``) declares its names, each name's
parameters with their parsers and defaults, and how it words its three spelling mistakes; ``parse`` checks a URI
against it: a known name, a well-formed query, no unknown or repeated key, then every parameter parsed in the
declared order (defaults too). Every mistake raises the family's own error class, its message starting with the
family's word ("data: ...", "concepts: ...").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

SCHEME = "builtin"


class InvalidParameter(ValueError):
    """Raised by a parameter's parser; ``BuiltinFamily.parse`` re-raises it as the family's error."""


Parser = Callable[[str, str], object]  # (key, text) -> value, or raises InvalidParameter


def whole_number(low: int, high: int) -> Parser:
    """A parser of whole numbers from ``low`` to ``high``."""

    def parse(key: str, text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise InvalidParameter(f"parameter {key}={text!r} must be a whole number from {low} to {high}")
        return int(text)

    return parse


@dataclass(frozen=True)
class BuiltinFamily:
    """One family of builtins and the wording of its mistakes.

    ``names`` maps each builtin's name to its parameters: key -> (parser, default text); a default of None leaves
    the value None when the key is not given. The message templates are ``str.format`` strings over ``uri``,
    ``name``, ``query``, ``key``, ``known`` (the names, sorted and comma-separated), ``keys`` (the name's
    parameters, comma-separated, in declared order) and ``sorted_keys`` (their sorted list).
    """

    word: str
    error: type[ValueError]
    names: Mapping[str, Mapping[str, tuple[Parser, str | None]]]
    unknown_name: str
    malformed_query: str
    unknown_key: str

    def parse(self, uri: str, defaults: Mapping[str, str] | None = None) -> tuple[str, dict[str, object]]:
        """(name, parsed parameters) of ``uri``; ``defaults`` override the declared default texts."""
        parts = urlsplit(uri)
        name, query = parts.path, parts.query
        if parts.scheme != SCHEME or name not in self.names:
            self._fail(self.unknown_name, uri=uri, name=name)
        allowed = self.names[name]
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            self._fail(self.malformed_query, uri=uri, name=name, query=query, sorted_keys=sorted(allowed))
        given: dict[str, str] = {}
        for key, value in pairs:
            if key not in allowed:
                self._fail(self.unknown_key, uri=uri, name=name, key=key, keys=", ".join(allowed))
            if key in given:
                self._fail("parameter {key!r} is given twice in {uri!r}; give it once", uri=uri, key=key)
            given[key] = value
        texts = {key: default for key, (_, default) in allowed.items()} | dict(defaults or {}) | given
        values = {}
        for key, (parse, _) in allowed.items():
            try:
                values[key] = None if texts[key] is None else parse(key, texts[key])
            except InvalidParameter as error:
                raise self.error(f"{self.word}: {error}") from None
        return name, values

    def _fail(self, template: str, **fields) -> None:
        known = ", ".join(sorted(self.names))
        raise self.error(f"{self.word}: " + template.format(known=known, **fields)) from None
