"""The specs in deploy/ for platforms this machine cannot reach (docs/spark-clusters.md), checked
as far as can be done offline.

- deploy/databricks-cluster.json: what MLflow reads of it (`new_cluster`, `libraries`; an
  existing cluster refused), run through MLflow's own validation; every field name, type and
  enum value known to the Databricks SDK's model of the Clusters and Libraries APIs
  (databricks-sdk, installed with MLflow); the fields a new cluster must have; and its libraries
  the project's own pins. Not checked: that the runtime and node type exist in a workspace.
- deploy/kubernetes-backend.json and kubernetes-job.yaml: parsed by MLflow's own backend-config
  reader; the template has every field MLflow's Kubernetes backend reads or fills in. Not
  checked: Kubernetes' own schema (kubectl validates only against a live API server).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.projects import _parse_kubernetes_config
from mlflow.projects.databricks import before_run_validations
from packaging.requirements import Requirement

from tests.support import PROJECT_DIR

DATABRICKS_SPEC = PROJECT_DIR / "deploy" / "databricks-cluster.json"
KUBERNETES_BACKEND = PROJECT_DIR / "deploy" / "kubernetes-backend.json"


def _databricks_spec() -> dict[str, Any]:
    return json.loads(DATABRICKS_SPEC.read_text())


def _problems(model: Any, value: Any, where: str) -> list[str]:
    """Where ``value`` does not fit the type ``model`` (an SDK dataclass, enum, list, dict or
    primitive, as the SDK's type hints say)."""
    if typing.get_origin(model) in (typing.Union, types.UnionType):
        (model,) = [arg for arg in typing.get_args(model) if arg is not type(None)]
    origin = typing.get_origin(model)
    if dataclasses.is_dataclass(model):
        return _dataclass_problems(model, value, where)
    if isinstance(model, type) and issubclass(model, enum.Enum):
        allowed = {member.value for member in model}
        return [] if value in allowed else [f"{where}: {value!r} is not one of {sorted(allowed)}"]
    if origin is list:
        (item,) = typing.get_args(model)
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, v in enumerate(value) for p in _problems(item, v, f"{where}[{i}]")]
    if origin is dict:
        key_type, value_type = typing.get_args(model)
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        return [
            problem
            for key, item in value.items()
            for problem in _problems(key_type, key, f"{where} key")
            + _problems(value_type, item, f"{where}.{key}")
        ]
    kind_ok = isinstance(value, model) and not (model is int and isinstance(value, bool))
    return [] if kind_ok else [f"{where}: {value!r} is not a {model.__name__}"]


def _dataclass_problems(model: type, value: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({model.__name__})"]
    hints = typing.get_type_hints(model)
    fields = {field.name: field for field in dataclasses.fields(model)}
    problems = [f"{where}.{key}: unknown to {model.__name__}" for key in value if key not in fields]
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING and (
            field.default_factory is dataclasses.MISSING
        )
        if name in value:
            problems += _problems(hints[name], value[name], f"{where}.{name}")
        elif required:
            problems.append(f"{where}.{name}: required by {model.__name__}")
    return problems


def test_the_databricks_spec_is_what_mlflow_reads():
    spec = _databricks_spec()
    # mlflow/projects/databricks.py, _run_shell_command_job: `new_cluster` is unwrapped and sent
    # as the job's cluster; `libraries` are installed with mlflow==<client version> appended.
    # A bare cluster spec would be sent with the bookkeeping keys `mlflow.projects._run` adds to
    # the same dict (ENV_MANAGER, SYNCHRONOUS, ...).
    assert set(spec) == {"new_cluster", "libraries"}
    before_run_validations("databricks", spec)
    with pytest.raises(MlflowException, match="must provide a \\*new cluster\\*"):
        before_run_validations("databricks", {"existing_cluster_id": "0101-abc"})


def test_the_databricks_spec_matches_the_sdks_model_of_the_api():
    from databricks.sdk.service.compute import ClusterSpec, Library

    spec = _databricks_spec()
    problems = _problems(ClusterSpec, spec["new_cluster"], "new_cluster")
    problems += _problems(list[Library], spec["libraries"], "libraries")
    assert problems == []


def test_the_databricks_spec_has_what_a_new_cluster_needs():
    cluster = _databricks_spec()["new_cluster"]
    assert cluster["spark_version"].split(".")[0].isdigit()
    # Spark 4 (the `spark` extra's PySpark 4.x) and the ML runtime (its XGBoost is replaced).
    assert int(cluster["spark_version"].split(".")[0]) >= 17
    assert "-ml-" in cluster["spark_version"]
    assert "node_type_id" in cluster or "instance_pool_id" in cluster
    assert "num_workers" in cluster or "autoscale" in cluster
    # The window features count seconds in UTC, whatever the cluster's time zone.
    assert cluster["spark_conf"]["spark.sql.session.timeZone"] == "UTC"


def test_the_databricks_libraries_are_the_projects_pins():
    """python_env.yaml's dependencies for Linux, but `xgboost` for `xgboost-cpu` (the ML
    runtime ships `xgboost`; both install the same module) and no `mlflow` (MLflow adds its
    own version) nor `pyspark` (the runtime's Spark must not be replaced)."""
    python_env = yaml.safe_load((PROJECT_DIR / "python_env.yaml").read_text())
    expected = set()
    for text in python_env["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"sys_platform": "linux"}):
            continue
        if requirement.name == "mlflow":
            continue
        name = "xgboost" if requirement.name == "xgboost-cpu" else requirement.name
        expected.add(f"{name}{requirement.specifier}")
    installed = {
        str(Requirement(library["pypi"]["package"])) for library in _databricks_spec()["libraries"]
    }
    assert installed == {str(Requirement(text)) for text in expected}


def test_the_kubernetes_backend_config_is_read_by_mlflow(monkeypatch):
    monkeypatch.chdir(PROJECT_DIR)  # `mlflow run .` runs from the project's root
    config = _parse_kubernetes_config(json.loads(KUBERNETES_BACKEND.read_text()))
    assert config["repository-uri"]
    assert Path(config["kube-job-template-path"]).is_file()
    template = config["kube-job-template"]
    assert (template["apiVersion"], template["kind"]) == ("batch/v1", "Job")


def test_the_kubernetes_job_template_has_what_mlflow_fills_in():
    """mlflow/projects/kubernetes.py: _get_kubernetes_job_definition writes metadata.name and
    the first container's name, image, command, and appends to its env list;
    run_kubernetes_job reads metadata.namespace."""
    template_path = json.loads(KUBERNETES_BACKEND.read_text())["kube-job-template-path"]
    template = yaml.safe_load((PROJECT_DIR / template_path).read_text())
    assert isinstance(template["metadata"], dict)
    assert isinstance(template["metadata"]["namespace"], str)
    pod = template["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert isinstance(container, dict)
    assert isinstance(container.get("env", []), list)
    assert all({"name", "value"} <= set(variable) for variable in container.get("env", []))
    # Kubernetes accepts only these for a Job's pods.
    assert pod["restartPolicy"] in ("Never", "OnFailure")
