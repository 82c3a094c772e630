"""The strict base of every result file model, and the one way to read and write those files.

A model field without a default is a key the file always has (its value may be null where the type
says so); a field defaulting to None is a key the producer may leave out. Dumping keeps exactly the
keys that were given (`exclude_unset`), so a file read and written back is the same JSON, and an
explicit null stays null. NaN and infinities are written as the JSON tokens NaN / Infinity, as
`json.dumps` does (the files always had them; nothing turns them into null).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from diffaudit.errors import ResultFileError


class ResultModel(BaseModel):
    """Strict: unknown keys, wrong types (no "0.5" for a number, no 1 for a boolean) and missing keys fail.
    Assignments are validated too, so a producer cannot put a wrong value in after construction."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, serialize_by_alias=True)

    def dump(self, exclude: set[str] | None = None) -> dict[str, Any]:
        """The JSON value of the model (keys as in the file), keeping only the keys that were set."""
        return self.model_dump(mode="python", by_alias=True, exclude_unset=True, exclude=exclude)

    def entries(self) -> list[tuple[str, Any]]:
        """(file key, value) of every key present, in declaration order, typed values kept (for rendering)."""
        out = [
            (f.alias or name, getattr(self, name))
            for name, f in type(self).model_fields.items()
            if name in self.model_fields_set
        ]
        return out + list((self.model_extra or {}).items())


class ResultFile(ResultModel):
    """A whole result file. FILE: its name (metrics/<FILE>, or reports/ for the release summary);
    HEADLINE: dotted keys a report section shows before everything else (empty: the top-level cells)."""

    FILE: ClassVar[str]
    HEADLINE: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def stem(cls) -> str:
        return cls.FILE.removesuffix(".json")


M = TypeVar("M", bound=ResultFile)


class FieldError(ValueError):
    """Raised by a model validator about one key (`field`, dotted, relative to the model validated)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _field(err: Any, data: Any) -> str:
    """The dotted path of an error in the file's own keys. Pydantic's location also names union members
    (e.g. `float`, a model's class name); those are not keys of the file and are left out."""
    node, parts = data, []
    loc = err["loc"]
    for i, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            parts.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
            node = node[part]
        elif err["type"] == "missing" and i == len(loc) - 1:
            parts.append(str(part))
    return ".".join(parts) or "(top level)"


def _where(err: Any, data: Any) -> tuple[str, str]:
    """(dotted field, what is wrong) of one pydantic error."""
    field, what = _field(err, data), err["msg"]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        field = cause.field if field == "(top level)" else f"{field}.{cause.field}"
        what = cause.message
    elif err["type"] not in ("missing", "extra_forbidden") and not isinstance(err["input"], (dict, list)):
        what += f", got {err['input']!r}"[:120]
    return field, what


def _message(path: Path | str, exc: ValidationError, data: Any) -> str:
    found = [_where(e, data) for e in exc.errors(include_url=False)]
    field, what = found[0]
    others = {f for f, _ in found} - {field}
    more = f" (and {len(others)} more field(s))" if others else ""
    return f"{path}: field {field}: {what}{more}".replace("\n", " ")


def parse_result(data: Any, model: type[M], path: Path | str) -> M:
    """A parsed JSON value as `model`, or ResultFileError naming `path` and the field at fault."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ResultFileError(_message(path, exc, data)) from None


def read_result(path: str | Path, model: type[M]) -> M:
    """Read a result file strictly: a missing file, invalid JSON or any departure from `model` raises
    ResultFileError with one line naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultFileError(f"{path}: not found: run the stage that writes {model.FILE} first") from None
    except OSError as exc:
        raise ResultFileError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ResultFileError(f"{path}: not valid JSON: {msg}{where}") from None
    return parse_result(data, model, path)


def write_result(path: str | Path, model: ResultFile) -> None:
    """Write `model` atomically as the producer's JSON (indent 2, NaN kept as NaN). It is validated
    again first, so what is written is what `read_result` accepts (a nested dict changed in place
    after construction is caught here, before the file exists)."""
    from diffaudit.utils.io import write_json  # torch-free import of this module for the readers

    data = model.dump()
    type(model).model_validate(data)
    write_json(path, data)
