"""The template's tests (fast layer: ``pytest``; integration layer: ``pytest -m slow``).

MLflow 3 starts a telemetry thread when it is imported, which sends a request to its host
(and, mid-import, could deadlock with ``mlflow.autolog()``: a hung fast test showed it). These
tests talk to 127.0.0.1 only, so telemetry is switched off here, before conftest imports MLflow;
the variables reach every process the tests start.
"""

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
