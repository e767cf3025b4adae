"""MLflow datasets for the step's frames: the same schema sooner, and logged despite a race.

Guards against two failures:

- **Schema inference that costs more than all the rest of the tracking.** MLflow 3.17 decides
  whether each column is required by testing every value in Python: 3.5 s for the default
  training and validation frames (``bench/tracking_overhead.py``). ``FastSchemaPandasDataset``
  infers the types from a sample with MLflow's public ``infer_signature`` and "required" from
  one vectorised ``isna`` over the whole frame: the identical schema (tested).
- **Trainings that log the same data at the same moment.** MLflow's SQL store looks for an
  existing row of each dataset and then inserts the missing ones, so runs logging the same
  dataset at once collide on the table's unique key and the server refuses the loser (seen with
  three trainings started together). ``log_datasets`` asks once more: by then the winner's row
  is committed and the store links it.

A fork may replace both with ``mlflow.data.from_pandas`` and ``mlflow.log_input``: slower, and
one of two simultaneous trainings on the same data may fail.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from functools import cached_property

import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from fraud_detection.data.validation import fingerprint
from fraud_detection.hardening.outages import diagnose

logger = logging.getLogger(__name__)


class FastSchemaPandasDataset(PandasDataset):
    """``PandasDataset`` whose schema is inferred in vectorised form: the same schema, sooner.

    MLflow 3.17 decides whether each column is required by testing every value in Python: 3.5 s
    for the default training and validation frames, more than all the rest of the train step's
    tracking put together (``bench/tracking_overhead.py``). Here the types come from a sample
    (MLflow's own inference) and "required" from one vectorised ``isna`` over the whole frame.
    """

    _TYPE_SAMPLE_ROWS = 1_000

    @cached_property
    def schema(self) -> Schema | None:
        try:
            with warnings.catch_warnings():
                # MLflow's hint that integer columns cannot hold missing values is advice for
                # model signatures; a dataset's schema records the columns as they are.
                warnings.filterwarnings(
                    "ignore", message="Hint: Inferred schema contains integer", category=UserWarning
                )
                sampled = infer_signature(self.df.head(self._TYPE_SAMPLE_ROWS)).inputs
        except Exception:  # as PandasDataset: no schema rather than no dataset
            logger.debug("Could not infer the schema of dataset %s", self.name, exc_info=True)
            return None
        if not sampled.has_input_names():
            return sampled
        has_missing = self.df.isna().any()
        return Schema(
            [
                ColSpec(spec.type, spec.name, required=not bool(has_missing[spec.name]))
                for spec in sampled.inputs
            ]
        )


def pandas_dataset(
    frame: pd.DataFrame, source: str, name: str, label: str, predictions: str | None = None
) -> PandasDataset:
    """An MLflow dataset for ``frame`` whose digest is our content fingerprint of it.

    File sources resolve to MLflow's own source types (local, s3, http...); simulated data is
    described by its generator parameters.
    """
    if source.startswith("simulator:"):
        settings = dict(item.split("=", 1) for item in source.removeprefix("simulator:").split(","))
        generator = {"generator": "fraud_detection.data.simulator"}
        dataset_source = CodeDatasetSource({**generator, **settings})
    else:
        dataset_source = resolve_dataset_source(source)
    return FastSchemaPandasDataset(
        df=frame,
        source=dataset_source,
        targets=label,
        name=name,
        digest=fingerprint(frame),
        predictions=predictions,
    )


def log_datasets(run_id: str, datasets: Mapping[str, PandasDataset]) -> None:
    """Record ``datasets`` (by context: training, validation...) as inputs of run ``run_id``.

    MLflow's SQL store looks for an existing row of each dataset and then inserts the missing
    ones, so trainings that log the same data at the same moment can collide on the datasets
    table's unique key, and the server refuses the loser's request (seen with three trainings
    started together: ``tests/integration/test_server_faults.py``). By then the winner's row is
    committed; asked again, the store finds it and links it to this run.
    """
    inputs = [
        DatasetInput(Dataset(**dataset.to_dict()), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        for context, dataset in datasets.items()
    ]
    client = MlflowClient()
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as error:
        if diagnose(error) is not None:
            raise
        logger.debug("Logging the datasets again after %s", error)
        client.log_inputs(run_id, datasets=inputs)
