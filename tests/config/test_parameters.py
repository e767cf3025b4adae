"""MLproject, the CLI flags and the config dataclasses must describe the same parameters."""

import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from fraud_detection.cli import (
    EXIT_BAD_PARAMETERS,
    main_with_exit_code,
)
from fraud_detection.config import (
    DEFAULT_FEATURE_WINDOWS,
    BatchConfig,
    ConfigError,
    DataConfig,
    EvaluateConfig,
    FeatureWindows,
    GateConfig,
    ModelConfig,
    MonitorConfig,
    PipelineConfig,
    RegisterConfig,
    SplitConfig,
    TrainConfig,
    format_duration,
)
from fraud_detection.config.fields import (
    build_config,
    flatten,
    leaves,
)
from fraud_detection.config.mlproject import main as mlproject_main
from fraud_detection.config.mlproject import render
from tests.support import PROJECT_DIR

ENTRY_POINTS = {
    "main": (PipelineConfig, "main.py"),
    "train": (TrainConfig, "train.py"),
    "evaluate": (EvaluateConfig, "evaluate.py"),
    "register": (RegisterConfig, "register.py"),
    "monitor": (MonitorConfig, "monitor.py"),
}
MLPROJECT_TYPES = {str: "string", int: "int", float: "float", bool: "bool"}


@pytest.fixture(scope="module")
def mlproject() -> dict:
    return yaml.safe_load((PROJECT_DIR / "MLproject").read_text())


def test_mlproject_is_generated_from_the_config():
    """A stale MLproject fails here: regenerate it with `make mlproject`."""
    assert (PROJECT_DIR / "MLproject").read_text() == render()


def test_the_generator_reports_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "MLproject"
    stale.write_text(render().replace("default: 600", "default: 601"))
    assert mlproject_main(["--check", "--path", str(stale)]) == 1
    assert "stale" in capsys.readouterr().out
    assert mlproject_main(["--path", str(stale)]) == 0
    assert mlproject_main(["--check", "--path", str(stale)]) == 0


def test_entry_points(mlproject):
    assert set(mlproject["entry_points"]) == set(ENTRY_POINTS)
    assert mlproject["python_env"] == "python_env.yaml"


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_mlproject_parameters_match_the_config(mlproject, entry_point):
    config_type, _ = ENTRY_POINTS[entry_point]
    declared = mlproject["entry_points"][entry_point]["parameters"]
    expected = {
        leaf.name: {"type": MLPROJECT_TYPES[leaf.type], "default": leaf.default}
        for leaf in leaves(config_type)
    }
    assert declared == expected


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_mlproject_command_passes_every_parameter_to_its_flag(mlproject, entry_point):
    config_type, script = ENTRY_POINTS[entry_point]
    command = mlproject["entry_points"][entry_point]["command"]
    assert command.startswith(f"python {script} ")
    passed = dict(re.findall(r"--([a-z0-9-]+) \{([a-z0-9_]+)\}", command))
    assert passed == {leaf.name.replace("_", "-"): leaf.name for leaf in leaves(config_type)}
    assert "\n" not in command  # a folded block must not keep line breaks


def test_leaf_names_are_unique_per_entry_point():
    for config_type, _ in ENTRY_POINTS.values():
        names = [leaf.name for leaf in leaves(config_type)]
        assert len(names) == len(set(names)), config_type


def test_main_passes_everything_the_steps_take():
    main = {leaf.name for leaf in leaves(PipelineConfig)}
    # main chains run ids itself; approving and rolling back are actions of their own.
    own = {"run_id", "approve_version", "rollback", "reason"}
    for step in (TrainConfig, EvaluateConfig, RegisterConfig):
        assert {leaf.name for leaf in leaves(step)} - own <= main


def test_build_config_round_trips_through_strings():
    config = TrainConfig()
    strings = {key: str(value) for key, value in flatten(config).items()}
    assert build_config(TrainConfig, strings) == config


@pytest.mark.parametrize(
    ("config_type", "values", "message"),
    [
        (ModelConfig, {"model_kinds": "xgboost,forest"}, "unknown model forest"),
        (ModelConfig, {"n_estimators": "-3"}, "n_estimators"),
        (ModelConfig, {"learning_rate": "2"}, "learning_rate"),
        (ModelConfig, {"max_bin": "1"}, "max_bin must be >= 2"),
        (GateConfig, {"min_roc_auc": "1.5"}, "between 0 and 1"),
        (GateConfig, {"champion_tolerance": "-0.1"}, "between 0 and 1"),
        (TrainConfig, {"n_customers": "-5"}, "n_customers must be at least 1"),
        (TrainConfig, {"n_days": "2.5"}, "n_days must be int"),
        (TrainConfig, {"experiment_name": " "}, "experiment_name"),
    ],
)
def test_bad_parameters_are_refused_with_the_allowed_range(config_type, values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(config_type, values)


def test_bad_flag_exits_2_before_any_work(caplog):
    def must_not_run(config):
        raise AssertionError("the step ran")

    code = main_with_exit_code(TrainConfig, must_not_run, ["--n-days", "-1"], "train")
    assert code == EXIT_BAD_PARAMETERS
    assert "n_days must be at least 1" in caplog.text


@pytest.mark.parametrize(
    "script", ["main.py", "train.py", "evaluate.py", "register.py", "serve.py"]
)
def test_root_scripts_describe_their_flags(script):
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / script), "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_DIR,
    )
    assert "usage:" in result.stdout


def test_windows_are_parameters_of_days_or_durations():
    """`-P train_days=7` keeps working; `-P train_days=36h` and friends are new."""
    config = build_config(
        TrainConfig,
        {"train_days": "7", "delay_days": "90min", "test_days": "0.5", "feature_windows": "1h,6h"},
    )
    assert (config.split.train_days, config.split.delay_days) == ("7", "90min")
    assert config.split.test_duration == pd.Timedelta(hours=12)
    assert config.data.windows.seconds == (3_600, 21_600)
    assert build_config(TrainConfig, flatten(config)) == config
    # An old data recipe stored the windows as JSON numbers.
    assert build_config(SplitConfig, {"train_days": 7}) == SplitConfig()


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("1d,7d,30d", ("1DAY", "7DAY", "30DAY")),
        ("36h,2d", ("36H", "2DAY")),
        ("90min, 45s, 1h", ("90MIN", "45S", "1H")),
        ("1.5,48h", ("36H", "2DAY")),
    ],
)
def test_feature_windows_are_named_in_the_largest_exact_unit(text, labels):
    assert DataConfig(feature_windows=text).windows.labels == labels


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1d,24h", "feature_windows lists the same window twice \\(1DAY\\)"),
        ("", "feature_windows must list at least one window"),
        ("1d,0h", "feature_windows must be more than 0 and at most 366 days, got '0h'"),
        ("1d,1 month", "feature_windows must be a number of days or a duration"),
        ("1d,500ms", "feature_windows must be a whole number of seconds, got '500ms'"),
    ],
)
def test_bad_feature_windows_are_refused_naming_the_window(text, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(feature_windows=text)


def test_the_default_windows_and_their_mlproject_text():
    assert DataConfig().windows == FeatureWindows.parse(DEFAULT_FEATURE_WINDOWS)
    assert DataConfig().windows.seconds == (86_400, 7 * 86_400, 30 * 86_400)
    assert SplitConfig().whole_days and SplitConfig().train_days == "7"


@pytest.mark.parametrize(
    ("duration", "words"),
    [
        (pd.Timedelta(days=35), "35 days"),
        (pd.Timedelta(hours=52), "2 days 4 hours"),
        (pd.Timedelta(seconds=172_793), "1 day 23 hours 59 minutes 53 seconds"),
        (pd.Timedelta(minutes=1), "1 minute"),
        (pd.Timedelta(0), "0 seconds"),
    ],
)
def test_durations_are_told_in_words(duration, words):
    assert format_duration(duration) == words


@pytest.mark.parametrize(
    "make",
    [
        lambda engine: TrainConfig(engine=engine),
        lambda engine: EvaluateConfig(engine=engine),
        lambda engine: PipelineConfig(engine=engine),
        lambda engine: BatchConfig(input="t.csv", output="s.parquet", engine=engine),
    ],
    ids=["train", "evaluate", "main", "batch"],
)
def test_engine_accepts_pandas_and_spark_and_names_them_otherwise(make) -> None:
    assert make("pandas").engine == "pandas"
    assert make("spark").engine == "spark"
    with pytest.raises(ConfigError, match=r"engine must be one of pandas, spark, got 'dask'"):
        make("dask")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scored": ""}, "--scored is required"),
        ({"window_days": 0}, "--window-days must be at least 1"),
        ({"psi_threshold": 0}, "--psi-threshold must be positive"),
        ({"alert_rate_ratio": 1.0}, "--alert-rate-ratio must be above 1"),
        ({"min_ap_ratio": 1.5}, "--min-ap-ratio must be between 0 and 1"),
        ({"as_of": "soon"}, "as_of must be a date"),
    ],
)
def test_monitor_parameters_are_checked(changes, message):
    with pytest.raises(ConfigError, match=message):
        MonitorConfig(**{"scored": "scored.csv", **changes})
