"""MLflow's scoring protocol, parsed straight into a checked matrix of feature values.

``mlflow models serve`` accepts a JSON body with one of ``dataframe_split``,
``dataframe_records``, ``inputs`` or ``instances`` (plus an optional ``params``), or a CSV or
Parquet body, and answers ``{"predictions": [{column: value, ...}, ...]}``. This module speaks the
same protocol for models whose inputs are named numeric columns, without building a DataFrame on
the way: the request becomes one float64 matrix in the signature's column order, checked against
the signature (every required column present, every value a finite number, integers where the
signature says so). A bad request raises ``RequestError`` whose message names the column, the row
and the problem, and never repeats the request's content. Columns the signature does not name
are not scored; their names come back with the matrix, so that the service can warn about them
or refuse them (a silent drop would hide an upstream bug).

Everything here is pure: bytes in, a matrix or bytes out.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES = (JSON, CSV, PARQUET)
JSON_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
PARAMS_KEY = "params"

# Signature column types this service can check and feed to a model as numbers.
NUMERIC_TYPES = ("double", "float", "long", "integer", "boolean")
_INTEGER_TYPES = ("long", "integer")
_ABSENT = object()


class RequestError(Exception):
    """A request the service refuses: an HTTP status, an error code and a one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> bytes:
        return json.dumps({"error_code": self.code, "message": self.message}).encode()


def bad_request(message: str) -> RequestError:
    return RequestError(400, "BAD_REQUEST", message)


@dataclass(frozen=True)
class ScoringInput:
    """A parsed request: the matrix to score, and the columns it sent that the model ignores."""

    values: np.ndarray
    extra_columns: tuple[str, ...] = ()
    # The JSON body's "params" (inference parameters, e.g. {"reasons": 3}); empty without.
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InputColumn:
    name: str
    type: str  # one of NUMERIC_TYPES
    required: bool = True


@dataclass(frozen=True)
class InputSchema:
    """The named numeric input columns of a model signature, in the signature's order."""

    columns: tuple[InputColumn, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @classmethod
    def from_signature(cls, schema: Any) -> InputSchema:
        """Build from ``model.metadata.get_input_schema()`` (an ``mlflow.types.Schema``).

        Raises:
            ValueError: no signature, unnamed (tensor) inputs, or a non-numeric column.
        """
        if schema is None:
            raise ValueError("the model has no input signature to check requests against")
        if not schema.has_input_names() or schema.is_tensor_spec():
            raise ValueError("the model's inputs are not named columns")
        columns = []
        for spec in schema.inputs:
            type_name = getattr(spec.type, "name", str(spec.type))
            if type_name not in NUMERIC_TYPES:
                raise ValueError(
                    f"input column {spec.name} has type {type_name}; this service serves "
                    f"numeric columns only ({', '.join(NUMERIC_TYPES)})"
                )
            columns.append(InputColumn(spec.name, type_name, spec.required))
        return cls(tuple(columns))


def parse_request(body: bytes, content_type: str | None, schema: InputSchema) -> ScoringInput:
    """Turn a scoring request into a float64 matrix: one row per record, columns as ``schema``.

    Also returns the names of the columns the request sent that ``schema`` does not have, in
    the order first seen.

    Raises:
        RequestError: 415 for an unsupported content type, 400 for a body that does not fit
            the protocol or the signature.
    """
    mime_type = _mime_type(content_type)
    params: Mapping[str, Any] = {}
    if mime_type == JSON:
        payload = _json_payload(body)
        values, sent = _from_payload(payload, schema)
        params = _params(payload)
    elif mime_type == CSV:
        values, sent = _from_frame(_read_csv(body), schema)
    else:
        values, sent = _from_frame(_read_parquet(body), schema)
    known = set(schema.names)
    extra = tuple(name for name in dict.fromkeys(sent) if name not in known)
    return ScoringInput(check_values(values, schema), extra, params)


# Each reader returns the matrix and the column names the request used (all of them, or at
# least every one that is not the model's).
_Read = tuple[np.ndarray, Sequence[str]]


def _mime_type(content_type: str | None) -> str:
    if not content_type:
        raise RequestError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"missing Content-Type header; use one of {', '.join(CONTENT_TYPES)}",
        )
    mime_type, *parameters = (part.strip() for part in content_type.split(";"))
    mime_type = mime_type.lower()
    if mime_type not in CONTENT_TYPES:
        raise RequestError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"unsupported Content-Type; use one of {', '.join(CONTENT_TYPES)}",
        )
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            raise RequestError(
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                "the only Content-Type parameter accepted is charset=utf-8",
            )
    return mime_type


# --- JSON -------------------------------------------------------------------------------------


def _json_payload(body: bytes) -> dict[str, Any]:
    """The JSON body as an object with exactly one input format key (and maybe params)."""
    try:
        payload = json.loads(body)
    except UnicodeDecodeError as error:
        raise bad_request("the request body is not UTF-8 text") from error
    except json.JSONDecodeError as error:
        # The position helps the client find the problem; the text around it is not repeated.
        raise bad_request(
            f"the request body is not valid JSON ({error.msg} at line {error.lineno} "
            f"column {error.colno})"
        ) from error
    if not isinstance(payload, dict):
        raise bad_request(_format_help(f"the JSON body is {_kind(payload)}"))
    present = [key for key in JSON_FORMATS if key in payload]
    unknown = [key for key in payload if key not in JSON_FORMATS and key != PARAMS_KEY]
    if len(present) != 1 or unknown:
        found = "none" if not present else " and ".join(present)
        raise bad_request(_format_help(f"found {found}" + (" and other keys" if unknown else "")))
    return payload


def _params(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    params = payload.get(PARAMS_KEY)
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise bad_request(
            f"{PARAMS_KEY} must be an object of parameter values, not {_kind(params)}"
        )
    return params


def _from_payload(payload: Mapping[str, Any], schema: InputSchema) -> _Read:
    input_format = next(key for key in JSON_FORMATS if key in payload)
    data = payload[input_format]
    if input_format == "dataframe_split":
        return _from_split(data, schema)
    if input_format == "dataframe_records":
        return _from_records(data, schema, input_format)
    # "inputs" and "instances": a dict of columns, or a list of records.
    if isinstance(data, dict):
        return _from_columns(data, schema, input_format)
    return _from_records(data, schema, input_format)


def _format_help(problem: str) -> str:
    return (
        f"expected a JSON object with exactly one of {', '.join(JSON_FORMATS)} "
        f"(and optionally {PARAMS_KEY}); {problem}"
    )


def _from_split(data: Any, schema: InputSchema) -> _Read:
    if not isinstance(data, dict):
        raise bad_request(
            f"dataframe_split must be an object with columns and data, not {_kind(data)}"
        )
    columns, rows = data.get("columns"), data.get("data")
    if not isinstance(columns, list) or not all(isinstance(name, str) for name in columns):
        raise bad_request("dataframe_split needs 'columns': a list of column names")
    if not isinstance(rows, list):
        raise bad_request("dataframe_split needs 'data': a list of rows")
    if len(set(columns)) != len(columns):
        raise bad_request("dataframe_split lists a column name twice")
    position = {name: index for index, name in enumerate(columns)}
    _require_columns(schema, position)
    wanted = [position.get(column.name) for column in schema.columns]
    try:
        matrix = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        matrix = None  # ragged, or a value that is not a number somewhere: find out below
    if matrix is not None and matrix.ndim == 2 and matrix.shape[1] == len(columns):
        return _select(matrix, wanted), columns
    if matrix is not None and matrix.size == 0 and not rows:
        return np.empty((0, len(schema.columns))), columns
    for index, row in enumerate(rows):
        if not isinstance(row, list):
            raise bad_request(f"dataframe_split: row {index} is {_kind(row)}, not a list")
        if len(row) != len(columns):
            raise bad_request(
                f"dataframe_split: row {index} has {len(row)} values for {len(columns)} columns"
            )
    # Only the model's columns must be numbers: extra columns may hold anything.
    picked = [[row[i] if i is not None else None for i in wanted] for row in rows]
    return _to_matrix(picked, schema), columns


def _from_records(data: Any, schema: InputSchema, input_format: str) -> _Read:
    if not isinstance(data, list):
        raise bad_request(f"{input_format} must be a list of records, not {_kind(data)}")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise bad_request(f"{input_format}: row {index} is {_kind(record)}, not a record")
    names = schema.names
    if all(column.required for column in schema.columns):
        getter = itemgetter(*names)
        try:
            picked = [getter(record) for record in data]
        except KeyError:
            picked = None
        if picked is not None:
            if len(names) == 1:
                picked = [[value] for value in picked]
            # Every record has the model's columns: only a longer one has others too.
            longer = [record for record in data if len(record) > len(names)]
            return _to_matrix(picked, schema), _keys(longer)
    # Some record lacks a column (or some columns are optional): name what is missing.
    seen = _keys(data)
    _require_columns(schema, seen)
    for column in schema.columns:
        if column.required:
            for index, record in enumerate(data):
                if column.name not in record:
                    raise bad_request(f"column {column.name}: row {index} has no value")
    return _to_matrix([[record.get(name) for name in names] for record in data], schema), seen


def _keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of ``records``, in the order first seen."""
    return list(dict.fromkeys(key for record in records for key in record))


def _from_columns(data: Mapping[str, Any], schema: InputSchema, input_format: str) -> _Read:
    _require_columns(schema, data)
    given = {
        column.name: values if isinstance(values, list) else [values]
        for column in schema.columns
        if (values := data.get(column.name, _ABSENT)) is not _ABSENT
    }
    lengths = Counter(len(values) for values in given.values())
    rows = lengths.most_common(1)[0][0] if lengths else 0
    for name, values in given.items():
        if len(values) != rows:
            raise bad_request(
                f"{input_format}: column {name} has {len(values)} values, the others {rows}"
            )
    columns = [given.get(column.name, [None] * rows) for column in schema.columns]
    return _to_matrix(list(zip(*columns, strict=True)), schema), list(data)


def _require_columns(schema: InputSchema, present: Any) -> None:
    missing = [c.name for c in schema.columns if c.required and c.name not in present]
    if missing:
        raise bad_request(f"missing required column(s): {', '.join(missing)}")


def _select(matrix: np.ndarray, wanted: Sequence[int | None]) -> np.ndarray:
    if all(index is not None for index in wanted):
        if list(wanted) == list(range(matrix.shape[1])):
            return matrix
        return matrix[:, wanted]
    selected = np.full((matrix.shape[0], len(wanted)), np.nan)
    for target, index in enumerate(wanted):
        if index is not None:
            selected[:, target] = matrix[:, index]
    return selected


def _to_matrix(rows: Sequence[Sequence[Any]], schema: InputSchema) -> np.ndarray:
    """Rows of the schema's columns -> float64 matrix; a value that is no number is named."""
    if not rows:
        return np.empty((0, len(schema.columns)))
    try:
        matrix = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        matrix = None
    if matrix is not None and matrix.shape == (len(rows), len(schema.columns)):
        return matrix
    for position, column in enumerate(schema.columns):
        for index, row in enumerate(rows):
            problem = _value_problem(row[position], column.required)
            if problem:
                raise bad_request(f"column {column.name}: row {index} {problem}")
    raise bad_request("the request's values cannot be read as numbers")  # not reached in practice


def _value_problem(value: Any, required: bool) -> str | None:
    if value is None:
        return "is missing (null or NaN)" if required else None
    if isinstance(value, bool | int | float):
        try:
            float(value)
        except OverflowError:
            return "is too large for a number"
        return None
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return "is a string that is not a number"
        return None
    return f"is {_kind(value)}, not a number"


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


# --- CSV and Parquet --------------------------------------------------------------------------


def _read_csv(body: bytes) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(body))
    except pd.errors.EmptyDataError as error:
        raise bad_request("the CSV body is empty") from error
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise bad_request("the request body is not a readable CSV table") from error


def _read_parquet(body: bytes) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(body))
    except (OSError, ValueError) as error:
        raise bad_request("the request body is not a readable Parquet table") from error


def _from_frame(frame: pd.DataFrame, schema: InputSchema) -> _Read:
    _require_columns(schema, frame.columns)
    matrix = np.full((len(frame), len(schema.columns)), np.nan)
    for position, column in enumerate(schema.columns):
        if column.name not in frame.columns:
            continue
        values = frame[column.name]
        numbers = pd.to_numeric(values, errors="coerce")
        unreadable = numbers.isna() & values.notna()
        if unreadable.any():
            first = int(np.flatnonzero(unreadable.to_numpy())[0])
            raise bad_request(f"column {column.name}: row {first} is not a number")
        matrix[:, position] = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    return matrix, [str(name) for name in frame.columns]


# --- checks shared by every format ------------------------------------------------------------


def check_values(matrix: np.ndarray, schema: InputSchema) -> np.ndarray:
    """Check a float64 matrix against the signature's columns; return it unchanged."""
    if matrix.shape[0] == 0:
        raise bad_request("the request has no rows")
    finite = np.isfinite(matrix)
    if not finite.all():
        for position, column in enumerate(schema.columns):
            bad = ~finite[:, position]
            if column.required and bad.any():
                first = int(np.flatnonzero(bad)[0])
                what = (
                    "is missing (null or NaN)"
                    if np.isnan(matrix[first, position])
                    else ("is infinite")
                )
                raise bad_request(f"column {column.name}: row {first} {what}")
            if not column.required and np.isinf(matrix[:, position]).any():
                first = int(np.flatnonzero(np.isinf(matrix[:, position]))[0])
                raise bad_request(f"column {column.name}: row {first} is infinite")
    for position, column in enumerate(schema.columns):
        if column.type in _INTEGER_TYPES or column.type == "boolean":
            values = matrix[:, position]
            present = ~np.isnan(values)
            if column.type == "boolean":
                bad = present & (values != 0) & (values != 1)
                problem = "is not a boolean (true/false or 0/1)"
            else:
                bad = present & (values != np.round(values))
                problem = "is not an integer"
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise bad_request(f"column {column.name}: row {first} {problem}")
    return matrix


# --- response ---------------------------------------------------------------------------------


def predictions_json(outputs: Mapping[str, np.ndarray] | np.ndarray) -> bytes:
    """``{"predictions": ...}`` byte for byte as MLflow writes it.

    Named output columns become records (``[{column: value, ...}, ...]``, what a DataFrame
    output gives); an array becomes a list of values.
    """
    if not isinstance(outputs, Mapping):
        return json.dumps({"predictions": np.asarray(outputs).tolist()}).encode()
    columns = {name: np.asarray(values) for name, values in outputs.items()}
    texts = [_as_json_texts(values) for values in columns.values()]
    if any(text is None for text in texts):
        records = [
            dict(zip(columns, row, strict=True))
            for row in zip(*(values.tolist() for values in columns.values()), strict=True)
        ]
        return json.dumps({"predictions": records}).encode()
    # One format string per record instead of json.dumps over a list of dicts: half the time
    # for a 10,000-row answer, and the same bytes (json writes floats with repr too).
    keys = [json.dumps(str(name)).replace("{", "{{").replace("}", "}}") for name in columns]
    record = "{{" + ", ".join(f"{key}: {{}}" for key in keys) + "}}"
    return ('{"predictions": [' + ", ".join(map(record.format, *texts)) + "]}").encode()


def _as_json_texts(values: np.ndarray) -> Iterator[str] | None:
    """Each value as JSON text, for plain numbers and booleans; None for anything else."""
    if values.ndim != 1:
        return None
    if values.dtype.kind == "f" and np.isfinite(values).all():
        return map(float.__repr__, values.astype(np.float64).tolist())
    if values.dtype.kind in "iu":
        return map(int.__repr__, values.tolist())
    if values.dtype.kind == "b":
        return iter(["true" if value else "false" for value in values.tolist()])
    texts = values.tolist()
    if values.dtype.kind in "OUT" and all(isinstance(text, str) for text in texts):
        return map(json.dumps, texts)  # feature names of reason codes
    return None
