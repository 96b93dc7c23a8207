"""Errors that map to the CLI's exit codes: 2 for bad input, 3 for runtime failures."""

from __future__ import annotations


class AuditError(Exception):
    """A failure the user can act on; ``messages`` each name the problem and the fix."""

    exit_code = 3

    def __init__(self, messages: list[str] | str):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("\n".join(self.messages))


class SpecError(AuditError):
    """The spec, the model or the data it names is invalid; raised before any work is done."""

    exit_code = 2


class ExportError(AuditError):
    """The model could not be exported to ONNX or loaded by ONNX Runtime."""

    exit_code = 3


class NotFoundError(AuditError, KeyError):
    """A run or table asked for by name does not exist (exit 2); still a KeyError for Python callers."""

    exit_code = 2

    def __str__(self) -> str:
        return "\n".join(self.messages)


class QueryError(AuditError):
    """SQL that DuckDB rejects (exit 2); the message lists the tables that can be queried."""

    exit_code = 2


class StoreFullError(AuditError):
    """The report store ran out of space (or quota) while a run published; the run left nothing there (exit 3)."""

    exit_code = 3
