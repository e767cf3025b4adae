"""Entry file of the logged MLflow "model from code" (see ``steps.train``).

MLflow executes this file when it loads the model; ``set_model`` is how it hands MLflow the
model object. The package is not meant to import this module: it exists for the loader only.
"""

from mlflow.models import set_model

from fraud_detection.modelling.pyfunc import FraudDetector

set_model(FraudDetector())
