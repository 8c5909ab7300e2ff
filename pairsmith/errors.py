"""The one error table.

Every public entry (CLI, gRPC, Python API, file readers) raises a
:class:`PairsmithError` subclass for anything the caller can fix. Its
:class:`ErrorKind` decides the gRPC status code (see ``service/status.py``)
and the CLI exit code; nothing else is allowed to leak as INTERNAL.
"""

from __future__ import annotations

import enum
from typing import TypeVar


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"  # bad input: field, limit, file line
    NOT_FOUND = "not_found"  # unknown index, model path, data set
    ALREADY_EXISTS = "already_exists"  # create of an existing index
    FAILED_PRECONDITION = "failed_precondition"  # wrong model/method, stale export, encoder mismatch
    RESOURCE_EXHAUSTED = "resource_exhausted"  # overload, limits
    UNAUTHENTICATED = "unauthenticated"  # missing or wrong API key
    PERMISSION_DENIED = "permission_denied"  # a valid API key without the scope the call needs
    UNAVAILABLE = "unavailable"  # shutting down / not ready


E = TypeVar("E", bound=enum.Enum)


class PairsmithError(Exception):
    """Base class: a message a user can act on, plus its kind."""

    kind: ErrorKind = ErrorKind.INVALID_ARGUMENT

    def __init__(self, message: str, *, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidInput(PairsmithError):
    kind = ErrorKind.INVALID_ARGUMENT


class DataFormatError(InvalidInput):
    """A malformed input file: always names the file and, where known, the line."""

    def __init__(self, path: object, message: str, *, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


class NotFound(PairsmithError):
    kind = ErrorKind.NOT_FOUND


class AlreadyExists(PairsmithError):
    kind = ErrorKind.ALREADY_EXISTS


class FailedPrecondition(PairsmithError):
    kind = ErrorKind.FAILED_PRECONDITION


class ResourceExhausted(PairsmithError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class Unauthenticated(PairsmithError):
    kind = ErrorKind.UNAUTHENTICATED


class PermissionDenied(PairsmithError):
    kind = ErrorKind.PERMISSION_DENIED


class Unavailable(PairsmithError):
    kind = ErrorKind.UNAVAILABLE


def parse_enum(
    cls: type[E],
    value: str | E,
    field: str,
    *,
    aliases: dict[str, str] | None = None,
    dash_to_underscore: bool = False,
    extra_choices: tuple[str, ...] = (),
) -> E:
    """``value`` as a member of ``cls`` (by value, case-insensitive), or InvalidInput naming ``field``.

    ``aliases`` maps extra spellings (after lower-casing) to member values.
    """
    if isinstance(value, cls):
        return value
    norm = str(value).strip().lower()
    if dash_to_underscore:
        norm = norm.replace("-", "_")
    norm = (aliases or {}).get(norm, norm)
    try:
        return cls(norm)
    except ValueError:
        choices = [*extra_choices, *[m.value for m in cls]]
        raise InvalidInput(f"{field}: unknown {value!r}; choose one of {choices}") from None
