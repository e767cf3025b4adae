"""The 48-hour table of docs/pipeline.md ("Windows: days, hours, minutes") through `mlflow run`,
to a registered @champion that scores, with the default gate."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.support.processes import (
    assert_champion_scores,
    assert_pipeline_finished,
    assert_succeeded,
    copy_project,
    mlflow_environment,
    mlflow_run,
)
from tests.support.public_data import FEATURE_COLUMNS, PARAMETERS, credit_card_table

pytestmark = [pytest.mark.slow, pytest.mark.no_tracking_store]


def test_a_48_hour_table_with_hour_windows_runs_to_a_champion(tmp_path):
    data = tmp_path / "creditcard.csv"
    credit_card_table().to_csv(data, index=False)
    project = copy_project(tmp_path / "project")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = mlflow_run(
        project,
        mlflow_environment(uri),
        "--experiment-name",
        "fraud-detection",
        data=str(data),
        grid="none",
        n_estimators="60",
        **PARAMETERS,
    )
    assert_succeeded(result)
    steps = assert_pipeline_finished(MlflowClient(tracking_uri=uri))
    assert steps["train"].data.params["test_days"] == "12h"
    assert steps["train"].data.params["test_first_day"] == "1970-01-02 11:59:53"
    assert steps["register"].data.tags["fraud.decision"] == "promoted"
    model = assert_champion_scores(uri)
    assert model.metadata.get_input_schema().input_names() == list(FEATURE_COLUMNS)
