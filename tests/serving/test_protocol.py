"""MLflow's scoring protocol: every request format, checked against the signature, no echo."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.pyfunc.scoring_server import infer_and_parse_data, predictions_to_json
from mlflow.types import ColSpec, DataType, Schema

from fraud_detection.data.features import FEATURE_COLUMNS
from fraud_detection.modelling.pyfunc import model_signature
from fraud_detection.serving.protocol import (
    InputSchema,
    RequestError,
    parse_request,
    predictions_json,
)

SCHEMA = InputSchema.from_signature(model_signature(FEATURE_COLUMNS).inputs)
ROWS = pd.DataFrame(
    np.arange(3 * len(FEATURE_COLUMNS), dtype=np.float64).reshape(3, -1) / 7,
    columns=list(FEATURE_COLUMNS),
)
JSON = "application/json"


def _json(payload: object) -> bytes:
    return json.dumps(payload).encode()


def _refused(body: bytes, content_type: str = JSON, schema: InputSchema = SCHEMA) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(body, content_type, schema)
    return caught.value


SHUFFLED = list(reversed(FEATURE_COLUMNS))  # column order in a request does not matter
FORMATS = {
    "dataframe_split": {"dataframe_split": ROWS[SHUFFLED].to_dict(orient="split")},
    "dataframe_records": {"dataframe_records": ROWS[SHUFFLED].to_dict(orient="records")},
    "inputs as columns": {"inputs": ROWS.to_dict(orient="list")},
    "inputs as records": {"inputs": ROWS.to_dict(orient="records")},
    "instances": {"instances": ROWS.to_dict(orient="records")},
    "with params": {"dataframe_split": ROWS.to_dict(orient="split"), "params": {}},
    "extra columns": {
        "dataframe_records": ROWS.assign(note="any text", card=None).to_dict(orient="records")
    },
}


@pytest.mark.parametrize("name", FORMATS)
def test_every_json_format_gives_the_rows_in_signature_order(name):
    parsed = parse_request(_json(FORMATS[name]), JSON, SCHEMA)
    np.testing.assert_array_equal(parsed.values, ROWS.to_numpy())
    assert parsed.extra_columns == (("note", "card") if name == "extra columns" else ())


@pytest.mark.parametrize(
    "payload",
    [
        {
            "dataframe_split": ROWS.assign(note="x", card=1)[["note", *SHUFFLED, "card"]].to_dict(
                orient="split"
            )
        },
        {"dataframe_records": ROWS.assign(note="x", card=1).to_dict(orient="records")},
        {"inputs": ROWS.assign(note="x", card=1).to_dict(orient="list")},
        # Only some records carry the extra columns.
        {
            "dataframe_records": [
                *ROWS.to_dict(orient="records"),
                {**ROWS.iloc[0].to_dict(), "note": "x", "card": 1},
            ]
        },
    ],
    ids=["split", "records", "columns", "some records"],
)
def test_extra_columns_are_named_in_the_order_sent(payload):
    assert parse_request(_json(payload), JSON, SCHEMA).extra_columns == ("note", "card")


def test_extra_columns_of_csv_and_parquet_are_named():
    frame = ROWS.assign(note="x")
    assert parse_request(frame.to_csv(index=False).encode(), "text/csv", SCHEMA).extra_columns == (
        "note",
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    parsed = parse_request(buffer.getvalue(), "application/vnd.apache.parquet", SCHEMA)
    assert parsed.extra_columns == ("note",)


@pytest.mark.parametrize("name", ["dataframe_split", "dataframe_records", "inputs as columns"])
def test_the_same_values_as_mlflow_parses(name):
    payload = FORMATS[name]
    mlflow_frame = infer_and_parse_data(payload, model_signature(FEATURE_COLUMNS).inputs)
    mlflow_frame = pd.DataFrame(mlflow_frame)[list(FEATURE_COLUMNS)]
    np.testing.assert_array_equal(
        parse_request(_json(payload), JSON, SCHEMA).values, mlflow_frame.to_numpy(np.float64)
    )


def test_csv_and_parquet_bodies():
    csv = ROWS[SHUFFLED].to_csv(index=False).encode()
    np.testing.assert_array_equal(parse_request(csv, "text/csv", SCHEMA).values, ROWS.to_numpy())
    buffer = io.BytesIO()
    ROWS.to_parquet(buffer)
    parquet = parse_request(buffer.getvalue(), "application/vnd.apache.parquet", SCHEMA)
    np.testing.assert_array_equal(parquet.values, ROWS.to_numpy())


def test_content_type_parameters():
    body = _json(FORMATS["dataframe_split"])
    parsed = parse_request(body, "application/json; charset=utf-8", SCHEMA)
    assert parsed.values.shape == (3, len(FEATURE_COLUMNS))
    assert _refused(body, "application/json; charset=latin-1").status == 415
    assert _refused(body, "text/plain").status == 415
    assert _refused(body, None).status == 415  # type: ignore[arg-type]


def test_missing_columns_are_named():
    records = ROWS.drop(columns=["TX_AMOUNT", "TX_DURING_NIGHT"]).to_dict(orient="records")
    error = _refused(_json({"dataframe_records": records}))
    assert error.status == 400
    assert error.message == "missing required column(s): TX_AMOUNT, TX_DURING_NIGHT"


def test_a_record_without_a_column_is_named_with_its_row():
    records = ROWS.to_dict(orient="records")
    del records[2]["TERMINAL_ID_RISK_7DAY_WINDOW"]
    error = _refused(_json({"dataframe_records": records}))
    assert error.message == "column TERMINAL_ID_RISK_7DAY_WINDOW: row 2 has no value"


SECRET = "4111-1111-1111-1111"  # something a client should never see repeated in an error


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (SECRET, "is a string that is not a number"),
        (None, "is missing (null or NaN)"),
        ([1, 2], "is a list, not a number"),
        ({"card": SECRET}, "is an object, not a number"),
        (float("nan"), "is missing (null or NaN)"),
        (float("inf"), "is infinite"),
    ],
)
def test_a_bad_value_names_the_column_and_row_without_echoing_it(value, problem):
    split = ROWS.to_dict(orient="split")
    split["data"][1][FEATURE_COLUMNS.index("CUSTOMER_ID_NB_TX_7DAY_WINDOW")] = value
    records = ROWS.to_dict(orient="records")
    records[1]["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] = value
    for body in ({"dataframe_split": split}, {"dataframe_records": records}):
        error = _refused(_json(body))
        assert error.status == 400
        assert error.message == f"column CUSTOMER_ID_NB_TX_7DAY_WINDOW: row 1 {problem}"
        assert SECRET not in error.message


def test_numbers_in_strings_are_accepted_as_mlflow_does():
    records = ROWS.to_dict(orient="records")
    records[0]["TX_AMOUNT"] = "12.5"
    assert parse_request(_json({"dataframe_records": records}), JSON, SCHEMA).values[0, 0] == 12.5


def test_malformed_bodies_get_one_line_without_the_body():
    error = _refused(b'{"dataframe_split": ' + SECRET.encode())
    assert error.status == 400
    assert error.message.startswith("the request body is not valid JSON (")
    assert SECRET not in error.message
    assert "not UTF-8" in _refused(b'{"inputs": "\xff"}').message
    assert "readable CSV" in _refused(b'a,b\n1,"2', "text/csv").message
    assert (
        "readable Parquet"
        in _refused(b"PAR1 not parquet", "application/vnd.apache.parquet").message
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "the JSON body is a list"),
        ({"data": []}, "found none and other keys"),
        ({"dataframe_split": {}, "inputs": {}}, "found dataframe_split and inputs"),
        ({"dataframe_split": [1]}, "dataframe_split must be an object with columns and data"),
        ({"dataframe_split": {"data": [[1]]}}, "dataframe_split needs 'columns'"),
        ({"dataframe_records": {"a": 1}}, "dataframe_records must be a list of records"),
        ({"dataframe_records": [1]}, "dataframe_records: row 0 is a int, not a record"),
        ({"dataframe_records": []}, "the request has no rows"),
    ],
)
def test_wrong_shapes_are_explained(payload, message):
    assert message in _refused(_json(payload)).message


def test_ragged_split_rows_are_named():
    split = ROWS.to_dict(orient="split")
    split["data"][1] = split["data"][1][:-1]
    assert _refused(_json({"dataframe_split": split})).message == (
        f"dataframe_split: row 1 has {len(FEATURE_COLUMNS) - 1} values for "
        f"{len(FEATURE_COLUMNS)} columns"
    )


def test_columns_of_unequal_length_are_refused():
    columns = ROWS.to_dict(orient="list")
    columns["TX_AMOUNT"] = columns["TX_AMOUNT"][:2]
    assert (
        "column TX_AMOUNT has 2 values, the others 3"
        in _refused(_json({"inputs": columns})).message
    )


def test_integer_and_boolean_columns_are_checked():
    schema = InputSchema.from_signature(
        Schema([ColSpec(DataType.long, "count"), ColSpec(DataType.boolean, "flag")])
    )
    good = parse_request(_json({"dataframe_records": [{"count": 3, "flag": True}]}), JSON, schema)
    np.testing.assert_array_equal(good.values, [[3.0, 1.0]])
    error = _refused(_json({"dataframe_records": [{"count": 2.5, "flag": 0}]}), schema=schema)
    assert error.message == "column count: row 0 is not an integer"
    error = _refused(_json({"dataframe_records": [{"count": 2, "flag": 2}]}), schema=schema)
    assert error.message == "column flag: row 0 is not a boolean (true/false or 0/1)"


def test_optional_columns_may_be_missing():
    schema = InputSchema.from_signature(
        Schema([ColSpec(DataType.double, "a"), ColSpec(DataType.double, "b", required=False)])
    )
    values = parse_request(_json({"dataframe_records": [{"a": 1}, {"a": 2, "b": 3}]}), JSON, schema)
    np.testing.assert_array_equal(values.values, [[1.0, np.nan], [2.0, 3.0]])


def test_signatures_that_cannot_be_served_are_refused():
    with pytest.raises(ValueError, match="type string"):
        InputSchema.from_signature(Schema([ColSpec(DataType.string, "text")]))
    with pytest.raises(ValueError, match="no input signature"):
        InputSchema.from_signature(None)
    assert isinstance(model_signature(FEATURE_COLUMNS), ModelSignature)


def test_predictions_are_written_byte_for_byte_as_mlflow_writes_them():
    outputs = {
        "fraud_probability": np.array([0.1, 1 / 3, 2.5e-7]),
        "is_fraud": np.array([0, 1, 0], dtype=np.int64),
    }
    mlflow_json = io.StringIO()
    predictions_to_json(pd.DataFrame(outputs), mlflow_json)
    assert predictions_json(outputs) == mlflow_json.getvalue().encode()
    for outputs in (
        {'{odd} "name"': np.array([1.5, -2.0]), "ok": np.array([True, False])},  # fast path
        {"p": np.array([0.5, np.nan]), "label": np.array(["a", "b"])},  # json.dumps path
    ):
        mlflow_json = io.StringIO()
        predictions_to_json(pd.DataFrame(outputs), mlflow_json)
        assert predictions_json(outputs) == mlflow_json.getvalue().encode()
    array_json = io.StringIO()
    predictions_to_json(np.array([0.5, 0.25]), array_json)
    assert predictions_json(np.array([0.5, 0.25])) == array_json.getvalue().encode()
