"""Typed parameters of every entry point and command, validated when they are created.

The one source of truth for parameters: the command-line flags of the root scripts are
generated from these fields (``config.fields``), and so is ``MLproject``
(``python -m fraud_detection.config.mlproject``; a test fails when it is stale). Adding a
parameter is one field here and a regeneration. This module imports no domain module: the rest
of the package reads its settings from here, never the other way round.

Each leaf field becomes one flag and one MLproject parameter of the same snake_case name;
nested dataclasses only group fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from fraud_detection.config.durations import (
    EXAMPLES,
    FeatureWindows,
    check_range,
    is_whole_days,
    parse_duration,
)
from fraud_detection.config.errors import ConfigError

# FIXME(fork): your team's experiment and registered-model names.
DEFAULT_EXPERIMENT_NAME = "fraud-detection"
DEFAULT_MODEL_NAME = "fraud-detector"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
MODEL_KINDS = ("xgboost", "logistic_regression", "random_forest")
GRID_NAMES = ("none", "small", "large")
TRACKING_MODES = ("manual", "autolog")
# Days before a fraud label is known: the gap between training and test, and the lag of the
# terminal-risk features (the book's 7).
DEFAULT_DELAY_DAYS = 7
# The book's card and terminal windows (chapter 3.3).
DEFAULT_FEATURE_WINDOWS = "1d,7d,30d"
# The file formats read and written, by suffix.
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.zip", ".csv.bz2")
PARQUET_SUFFIXES = (".parquet", ".pq")
EXTRA_COLUMN_POLICIES = ("warn", "reject")
# Where serve.py api keeps the online state when several workers share it.
STATE_URL_SCHEMES = ("redis://", "rediss://", "unix://")
# Where train, evaluate and serve.py batch compute: in-process pandas, or Spark (docs/spark.md).
ENGINES = ("pandas", "spark")
# What the simulator's drift changes from its date on (fraud_detection.data.simulator).
DRIFT_KINDS = ("terminals", "scenario", "amounts")
DRIFT_HELP = {
    "drift_start": "First day of a simulated drift (like 2018-07-30), inside the simulated "
    "days. Empty: no drift, the book's data. Simulated data only (data empty).",
    "drift_kind": "What drifts from drift_start on: terminals (a wave of compromised "
    "terminals), scenario (card testing: small amounts at night on compromised cards, a fraud "
    "the book does not have) or amounts (every amount inflates, week by week).",
    "drift_strength": "How strong the drift is; 1.0 is a clear drift of each kind: terminals, "
    "10 more terminals per 10,000 compromised a day (the book: 2); scenario, 6 cards per 5,000 "
    "card-tested a day; amounts, 10 percent more a week. Scales linearly (amounts: the weekly "
    "rate).",
}
# Above this the drift is no longer a drift but another data set (amounts: +1000% a week).
MAX_DRIFT_STRENGTH = 100.0


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _engine_field(what: str) -> Any:
    """An ``engine`` field: which engine computes ``what`` (checked by ``check_engine``)."""
    return field(
        default="pandas",
        metadata=_help(
            f"Engine that computes {what}: pandas (in this process) or spark (a Spark session; "
            "needs the spark extra, docs/spark.md)."
        ),
    )


def check_engine(engine: str) -> None:
    """Raise ``ConfigError`` unless ``engine`` is one of ``ENGINES``."""
    _require(engine in ENGINES, f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def _parse_date(name: str, value: str) -> None:
    try:
        pd.Timestamp(value)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"{name} must be a date like 2018-07-25 (or a time like 2018-07-25 06:00), "
            f"got {value!r}"
        ) from error


@dataclass(frozen=True)
class TransactionColumns:
    """Where each role lives in the transaction table: the simulator's names by default.

    A fork whose data uses other names passes them as parameters (``--label-column`` and
    friends), or changes these defaults.
    """

    # FIXME(fork): the column names of your transaction table, if you want them as defaults.
    label_column: str = field(default="TX_FRAUD", metadata=_help("0/1 fraud label column."))
    timestamp_column: str = field(
        default="TX_DATETIME",
        metadata=_help("Transaction time column: dates, or numbers of seconds."),
    )
    customer_column: str = field(
        default="CUSTOMER_ID", metadata=_help("Card (customer) id column.")
    )
    terminal_column: str = field(default="TERMINAL_ID", metadata=_help("Terminal id column."))
    amount_column: str = field(default="TX_AMOUNT", metadata=_help("Amount column."))
    id_column: str = field(
        default="TRANSACTION_ID", metadata=_help("Transaction id column (optional).")
    )


@dataclass(frozen=True)
class SimulatorConfig:
    """Size and seed of a simulated data set (the book's full size is 5,000 / 10,000 / 183)."""

    n_customers: int = 5_000
    n_terminals: int = 10_000
    n_days: int = 183
    start_date: str = "2018-04-01"
    seed: int = 0
    radius: float = 5.0
    drift_start: str = field(default="", metadata=_help(DRIFT_HELP["drift_start"]))
    drift_kind: str = field(default="terminals", metadata=_help(DRIFT_HELP["drift_kind"]))
    drift_strength: float = field(default=1.0, metadata=_help(DRIFT_HELP["drift_strength"]))

    def __post_init__(self) -> None:
        for name in ("n_customers", "n_terminals", "n_days"):
            value = getattr(self, name)
            _require(value >= 1, f"{name} must be at least 1, got {value}")
        _require(self.radius > 0, f"radius must be positive, got {self.radius}")
        _parse_date("start_date", self.start_date)
        check_drift(self.drift_start, self.drift_kind, self.drift_strength)
        if self.drift_start.strip():
            last_day = pd.Timestamp(self.start_date).normalize() + pd.Timedelta(
                days=self.n_days - 1
            )
            _require(
                self.drift_day is not None and 0 <= self.drift_day < self.n_days,
                f"drift_start must be one of the simulated days, {self.start_date} to "
                f"{last_day.date()}, got {self.drift_start!r}",
            )

    @property
    def drift_day(self) -> int | None:
        """The simulated day (0 is ``start_date``) the drift starts on; None without drift."""
        if not self.drift_start.strip():
            return None
        start = pd.Timestamp(self.start_date).normalize()
        return (pd.Timestamp(self.drift_start.strip()) - start).days


def check_drift(drift_start: str, drift_kind: str, drift_strength: float) -> None:
    """Raise ``ConfigError`` naming the drift setting that is not valid."""
    _require(
        drift_kind in DRIFT_KINDS,
        f"drift_kind must be one of {', '.join(DRIFT_KINDS)}, got {drift_kind!r}",
    )
    _require(
        0 < drift_strength <= MAX_DRIFT_STRENGTH,
        f"drift_strength must be more than 0 and at most {MAX_DRIFT_STRENGTH:g}, "
        f"got {drift_strength!r}",
    )
    if drift_start.strip():
        _parse_date("drift_start", drift_start.strip())
        day = pd.Timestamp(drift_start.strip())
        _require(
            day == day.normalize(),
            f"drift_start must be a day (like 2018-07-30), without a time; got {drift_start!r}",
        )


@dataclass(frozen=True)
class TrackingConfig:
    experiment_name: str = field(
        default=DEFAULT_EXPERIMENT_NAME,
        metadata=_help(
            "MLflow experiment of the pipeline's runs. An experiment given to `mlflow run` "
            "itself (--experiment-name) takes precedence over this default."
        ),
    )

    def __post_init__(self) -> None:
        _require(bool(self.experiment_name.strip()), "experiment_name must not be empty")


@dataclass(frozen=True)
class DataConfig:
    """Where transactions come from and what their columns are called."""

    data: str = field(
        default="",
        metadata=_help(
            "CSV or Parquet file of transactions: a local path or any URI MLflow can download "
            "(s3://, runs:/, ...). Empty: simulate transactions with the n_* and seed options."
        ),
    )
    # The book's population over 90 of its 183 days: a quick run with the book's fraud mix.
    n_customers: int = field(default=5_000, metadata=_help("Simulated customers."))
    n_terminals: int = field(default=10_000, metadata=_help("Simulated terminals."))
    n_days: int = field(default=90, metadata=_help("Simulated days (the book: 183)."))
    start_date: str = field(default="2018-04-01", metadata=_help("First simulated day."))
    seed: int = field(default=42, metadata=_help("Simulator seed: same seed, same data."))
    drift_start: str = field(default="", metadata=_help(DRIFT_HELP["drift_start"]))
    drift_kind: str = field(default="terminals", metadata=_help(DRIFT_HELP["drift_kind"]))
    drift_strength: float = field(default=1.0, metadata=_help(DRIFT_HELP["drift_strength"]))
    columns: TransactionColumns = field(default_factory=TransactionColumns)
    feature_columns: str = field(
        default="",
        metadata=_help(
            "Comma-separated columns to use as model features as they are. Empty: engineer the "
            "book's fifteen features and three amount ratios from timestamp, customer, "
            "terminal, amount and label."
        ),
    )
    feature_windows: str = field(
        default=DEFAULT_FEATURE_WINDOWS,
        metadata=_help(
            "Comma-separated lengths of the card and terminal feature windows, each a number "
            "of days or a duration (1h,6h,24h for data of hours). A window of whole days is "
            "named in days (CUSTOMER_ID_NB_TX_7DAY_WINDOW), others in hours, minutes or "
            "seconds (_36H_, _90MIN_)."
        ),
    )

    def __post_init__(self) -> None:
        FeatureWindows.parse(self.feature_windows)  # a ConfigError naming a bad window
        if self.uses_simulator:
            for name in ("n_customers", "n_terminals", "n_days"):
                value = getattr(self, name)
                _require(value >= 1, f"{name} must be at least 1, got {value}")
            _parse_date("start_date", self.start_date)
            self.simulator()  # a ConfigError naming a bad drift setting
        else:
            # Read, not used: a file has its own drift. (A retraining on a file keeps the
            # data recipe of a model trained on drifted simulated data: no error for it.)
            check_drift(self.drift_start, self.drift_kind, self.drift_strength)
        features = self.passthrough_features
        _require(
            len(features) == len(set(features)),
            f"feature_columns lists a column twice: {self.feature_columns!r}",
        )
        label = self.columns.label_column
        _require(
            label not in features,
            f"feature_columns must not contain the label column {label!r}",
        )

    @property
    def uses_simulator(self) -> bool:
        return not self.data.strip()

    @property
    def passthrough_features(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.feature_columns.split(",") if c.strip())

    @property
    def engineered_features(self) -> bool:
        return not self.passthrough_features

    @property
    def windows(self) -> FeatureWindows:
        return FeatureWindows.parse(self.feature_windows)

    def simulator(self) -> SimulatorConfig:
        return SimulatorConfig(
            n_customers=self.n_customers,
            n_terminals=self.n_terminals,
            n_days=self.n_days,
            start_date=self.start_date,
            seed=self.seed,
            drift_start=self.drift_start,
            drift_kind=self.drift_kind,
            drift_strength=self.drift_strength,
        )


@dataclass(frozen=True)
class SplitConfig:
    """Time windows: train | delay | test, as in the book (chapter 3.4).

    Each length is a number of days (``7``, the book's) or a duration pandas reads as a
    Timedelta (``36h``, ``90min``); numbers given from Python are kept as their string, the form
    MLflow stores parameters in. Whole days place the windows at midnight, as the book does;
    other lengths place them at the data's own instants (``data.split``).
    """

    train_start: str = field(
        default="",
        metadata=_help(
            "First training day (e.g. 2018-07-25), or instant when the windows are not whole "
            "days (e.g. 2018-07-25 06:00). Empty: the latest start whose test window still "
            "fits in the data."
        ),
    )
    train_days: str = field(
        default="7",
        metadata=_help(f"Length of the training window: {EXAMPLES}."),
    )
    delay_days: str = field(
        default=str(DEFAULT_DELAY_DAYS),
        metadata=_help(
            "Time before fraud labels are known: the gap between training and test, and the "
            f"lag of the terminal-risk features; {EXAMPLES} (0: none)."
        ),
    )
    test_days: str = field(default="7", metadata=_help(f"Length of the test window: {EXAMPLES}."))

    def __post_init__(self) -> None:
        for name in ("train_days", "delay_days", "test_days"):
            value = getattr(self, name)
            if not isinstance(value, str):  # a number from Python code: days, kept as text
                object.__setattr__(self, name, str(value))
            check_range(name, self._duration(name), value, allow_zero=name == "delay_days")
        if self.train_start:
            _parse_date("train_start", self.train_start)

    def _duration(self, name: str) -> pd.Timedelta:
        return parse_duration(name, getattr(self, name))

    @property
    def train_duration(self) -> pd.Timedelta:
        return self._duration("train_days")

    @property
    def delay_duration(self) -> pd.Timedelta:
        return self._duration("delay_days")

    @property
    def test_duration(self) -> pd.Timedelta:
        return self._duration("test_days")

    @property
    def whole_days(self) -> bool:
        """True when every window is whole days: the split is then placed at midnight."""
        return all(
            is_whole_days(duration)
            for duration in (self.train_duration, self.delay_duration, self.test_duration)
        )


@dataclass(frozen=True)
class ModelConfig:
    """The candidates compared on validation data, and how they are trained."""

    model_kinds: str = field(
        default="xgboost,logistic_regression",
        metadata=_help(
            "Comma-separated model families to compare on validation data "
            f"(any of: {', '.join(MODEL_KINDS)}); the best candidate by average precision is "
            "logged. random_forest uses the book's baseline settings (100 unpruned trees)."
        ),
    )
    grid: str = field(
        default="small",
        metadata=_help(
            f"XGBoost hyperparameter grid, one nested run per point: {', '.join(GRID_NAMES)} "
            "(none: only the max_depth/learning_rate below)."
        ),
    )
    max_depth: int = field(default=3, metadata=_help("XGBoost tree depth (grid none)."))
    learning_rate: float = field(default=0.05, metadata=_help("XGBoost learning rate (grid none)."))
    n_estimators: int = field(
        default=600,
        metadata=_help("Most XGBoost boosting rounds; early stopping usually stops sooner."),
    )
    early_stopping_rounds: int = field(
        default=50,
        metadata=_help(
            "Stop when validation log loss has not improved for this many rounds (0: never)."
        ),
    )
    # Measured: reweighting the rare class lowered validation average precision in every setting
    # we tried (README, "Model"); the tuned decision threshold handles the imbalance instead.
    scale_pos_weight: float = field(
        default=1.0,
        metadata=_help(
            "XGBoost weight of the fraud class; 0: negatives/positives of the training data."
        ),
    )
    # With XGBoost's default 256 quantile bins, a week of simulated data puts every amount above
    # about 190 in one bin, so no split can isolate the amounts above 220 that are all fraud;
    # 4096 bins can (README, "Model quality").
    max_bin: int = field(
        default=4_096,
        metadata=_help("XGBoost histogram bins per feature (split candidates; 256 in XGBoost)."),
    )
    # The default model keeps about 100 rounds after early stopping: every 50 writes one
    # checkpoint on the default run, so the checkpoint path is exercised where users look.
    checkpoint_every: int = field(
        default=50,
        metadata=_help(
            "Save the refitted booster every N boosting rounds as run artifacts (0: never)."
        ),
    )
    parallel_candidates: int = field(
        default=1,
        metadata=_help("Candidates trained at once, each in its own process (1: in turn)."),
    )
    n_jobs: int = field(default=0, metadata=_help("Threads per candidate; 0: all cores."))
    tracking_mode: str = field(
        default="manual",
        metadata=_help(
            "manual: the template logs parameters, metrics and curves itself; autolog: "
            "mlflow.autolog() logs them (the selection metrics and the model are logged either "
            "way)."
        ),
    )

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in MODEL_KINDS]
        _require(
            not unknown,
            f"model_kinds: unknown model {', '.join(unknown)}; allowed: {', '.join(MODEL_KINDS)}",
        )
        _require(bool(self.kinds), "model_kinds must name at least one model")
        _require(
            self.grid in GRID_NAMES,
            f"grid must be one of {', '.join(GRID_NAMES)}, got {self.grid!r}",
        )
        _require(
            self.tracking_mode in TRACKING_MODES,
            f"tracking_mode must be one of {', '.join(TRACKING_MODES)}, got {self.tracking_mode!r}",
        )
        _require(self.n_estimators >= 1, f"n_estimators must be >= 1, got {self.n_estimators}")
        _require(1 <= self.max_depth <= 32, f"max_depth must be in 1..32, got {self.max_depth}")
        _require(
            0 < self.learning_rate <= 1,
            f"learning_rate must be in (0, 1], got {self.learning_rate}",
        )
        for name in ("early_stopping_rounds", "checkpoint_every", "n_jobs"):
            value = getattr(self, name)
            _require(value >= 0, f"{name} must be >= 0, got {value}")
        _require(
            self.scale_pos_weight >= 0,
            f"scale_pos_weight must be >= 0, got {self.scale_pos_weight}",
        )
        _require(self.max_bin >= 2, f"max_bin must be >= 2, got {self.max_bin}")
        _require(
            1 <= self.parallel_candidates <= 64,
            f"parallel_candidates must be in 1..64, got {self.parallel_candidates}",
        )

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.model_kinds.split(",") if k.strip())


@dataclass(frozen=True)
class CostConfig:
    """What an alert costs: the decision threshold maximises money saved on validation data."""

    review_cost: float = field(
        default=5.0,
        metadata=_help(
            "Cost of reviewing one alert, in the amount column's currency. The threshold "
            "maximises caught fraud amount minus this cost per alert."
        ),
    )

    def __post_init__(self) -> None:
        _require(self.review_cost >= 0, f"review_cost must be >= 0, got {self.review_cost}")


@dataclass(frozen=True)
class GateConfig:
    """Promotion criteria: absolute floors on test metrics, and no regression vs the champion."""

    min_roc_auc: float = field(default=0.80, metadata=_help("Lowest test ROC AUC to promote."))
    min_average_precision: float = field(
        default=0.30, metadata=_help("Lowest test average precision to promote.")
    )
    min_card_precision_at_100: float = field(
        default=0.0, metadata=_help("Lowest test card precision@100 to promote.")
    )
    champion_tolerance: float = field(
        default=0.0,
        metadata=_help(
            "How far below the current champion (same test rows) a metric may fall and still "
            "be promoted; 0 means no worse."
        ),
    )

    def __post_init__(self) -> None:
        for name in (
            "min_roc_auc",
            "min_average_precision",
            "min_card_precision_at_100",
            "champion_tolerance",
        ):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"{name} must be between 0 and 1, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    engine: str = _engine_field("the features, the split and the XGBoost fits")

    def __post_init__(self) -> None:
        check_engine(self.engine)


@dataclass(frozen=True)
class EvaluateConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run_id: str = field(
        default="",
        metadata=_help("Train run to evaluate. Empty: the latest successful train run."),
    )
    model_name: str = field(
        default=DEFAULT_MODEL_NAME,
        metadata=_help("Registered model whose @champion is scored on the same rows."),
    )
    gate: GateConfig = field(default_factory=GateConfig)
    engine: str = _engine_field("the test window and its metrics")

    def __post_init__(self) -> None:
        check_engine(self.engine)


@dataclass(frozen=True)
class RegisterConfig:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run_id: str = field(
        default="",
        metadata=_help("Evaluate run to register. Empty: the latest successful evaluate run."),
    )
    model_name: str = field(default=DEFAULT_MODEL_NAME, metadata=_help("Registered model name."))
    require_approval: bool = field(
        default=False,
        metadata=_help(
            "Never promote by itself: set @challenger and print the command a reviewer runs "
            "to promote it (--approve-version)."
        ),
    )
    approve_version: str = field(
        default="",
        metadata=_help(
            "Promote this version to @champion after human review (its evaluation must have "
            "passed the gate, against the champion still in place)."
        ),
    )
    rollback: bool = field(
        default=False,
        metadata=_help("Move @champion back to the version the current champion replaced."),
    )
    reason: str = field(
        default="", metadata=_help("Why (recorded with an approval or a rollback).")
    )

    def __post_init__(self) -> None:
        actions = [name for name in ("approve_version", "rollback") if getattr(self, name)]
        _require(len(actions) <= 1, "--approve-version and --rollback cannot be used together")
        _require(
            not (actions and self.run_id),
            "--run-id registers an evaluation; it cannot be combined with "
            f"--{actions[0].replace('_', '-') if actions else ''}",
        )
        if self.approve_version:
            _require(
                self.approve_version.isdigit(),
                f"approve_version must be a version number, got {self.approve_version!r}",
            )
        if self.rollback:
            _require(bool(self.reason.strip()), "--rollback needs --reason (it is recorded)")

    @property
    def action(self) -> str:
        if self.rollback:
            return "rollback"
        if self.approve_version:
            return "approve"
        return "register"


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``main`` passes on to train, evaluate and register."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    model_name: str = field(default=DEFAULT_MODEL_NAME, metadata=_help("Registered model name."))
    gate: GateConfig = field(default_factory=GateConfig)
    require_approval: bool = field(
        default=False,
        metadata=_help("Register without promoting; a reviewer promotes with --approve-version."),
    )
    engine: str = _engine_field("train's and evaluate's data and fits")

    def __post_init__(self) -> None:
        check_engine(self.engine)


@dataclass(frozen=True)
class BatchConfig:
    """``serve.py batch``: score a file of transactions with a registered model."""

    model_uri: str = field(
        default=f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}",
        metadata=_help("Model to score with: models:/<name>@<alias>, models:/<name>/<version>."),
    )
    input: str = field(
        default="",
        metadata=_help(
            "CSV or Parquet file of transactions (path or URI), in time order when features "
            "are to be computed."
        ),
    )
    output: str = field(
        default="", metadata=_help("Where to write the scored rows (.csv or .parquet).")
    )
    chunk_rows: int = field(
        default=250_000,
        metadata=_help(
            "Rows read, scored and written at a time. Memory holds one chunk plus the history "
            "the windows reach (the transactions of the longest feature window plus the delay)."
        ),
    )
    reasons: int = field(
        default=0,
        metadata=_help(
            "Reason codes per row: the top k features by contribution to the score, with their "
            "signed contributions (log-odds) and the bias. 0: none."
        ),
    )
    columns: TransactionColumns = field(default_factory=TransactionColumns)
    engine: str = _engine_field("the features and scores (spark writes a Parquet directory)")

    def __post_init__(self) -> None:
        check_engine(self.engine)
        _require(self.reasons >= 0, f"--reasons must be 0 or more, got {self.reasons}")
        _require(bool(self.input), "--input is required: the CSV or Parquet file to score")
        _require(
            self.output.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES),
            f"--output must end with .csv or .parquet, got {self.output or 'nothing'!r}",
        )
        _require(self.chunk_rows >= 1, f"--chunk-rows must be at least 1, got {self.chunk_rows}")


@dataclass(frozen=True)
class ApiConfig:
    """``serve.py api``: answer scoring requests over HTTP."""

    model_uri: str = field(
        default=f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}",
        metadata=_help(
            "Model to serve. models:/<name>@<alias> is followed when the alias moves; "
            "models:/<name>/<version> or any other URI is served as it is."
        ),
    )
    host: str = field(
        default="127.0.0.1",
        metadata=_help("Interface to listen on (0.0.0.0: every interface; think first)."),
    )
    port: int = field(default=8080, metadata=_help("TCP port."))
    workers: int = field(
        default=1,
        metadata=_help("Processes answering on the port, each with its own copy of the model."),
    )
    poll_seconds: float = field(
        default=10.0,
        metadata=_help(
            "How often to check where the alias points; 0: never (pin at start, or, with "
            "FRAUD_DETECTION_WEBHOOK_SECRET set, move only on registry webhooks)."
        ),
    )
    max_body_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata=_help("Largest request body accepted (bytes); larger ones get 413."),
    )
    extra_columns: str = field(
        default="warn",
        metadata=_help(
            "Columns the model does not take: warn (score the rest, name them in the "
            "X-Ignored-Columns header, the log and /metrics) or reject (400)."
        ),
    )
    history: str = field(
        default="",
        metadata=_help(
            "Transaction table with labels (CSV or Parquet, path or URI) that warm-starts the "
            "online state of POST /transactions: its last longest window plus the label delay. "
            "With --state-url, loaded only when the state there is empty."
        ),
    )
    state_url: str = field(
        default="",
        metadata=_help(
            "Where the online state lives: empty keeps it in memory (one worker); "
            "redis://host:port/db shares it between workers and replicas and keeps it across "
            "restarts (pip install -e '.[online]')."
        ),
    )
    score_log: str = field(
        default="",
        metadata=_help(
            "Directory where every transaction scored by POST /transactions is appended "
            "(scored/scored-<date>-<pid>.csv: raw fields, features, fraud_probability, "
            "is_fraud, model_version) and every POST /feedback label (labels/labels-<date>-"
            "<pid>.csv), for monitor --scored DIR/scored --labels DIR/labels. Written behind "
            "scoring, one file per worker and day. Empty: no log."
        ),
    )

    def __post_init__(self) -> None:
        _require(bool(self.model_uri.strip()), "--model-uri must not be empty")
        _require(0 <= self.port <= 65_535, f"--port must be between 0 and 65535, got {self.port}")
        _require(1 <= self.workers <= 64, f"--workers must be between 1 and 64, got {self.workers}")
        _require(self.poll_seconds >= 0, f"--poll-seconds must be >= 0, got {self.poll_seconds}")
        _require(
            self.max_body_bytes >= 1024,
            f"--max-body-bytes must be at least 1024, got {self.max_body_bytes}",
        )
        _require(
            self.extra_columns in EXTRA_COLUMN_POLICIES,
            f"--extra-columns must be one of {', '.join(EXTRA_COLUMN_POLICIES)}, "
            f"got {self.extra_columns!r}",
        )
        _require(
            not self.state_url or self.state_url.startswith(STATE_URL_SCHEMES),
            f"--state-url must start with {' or '.join(STATE_URL_SCHEMES)} (or be empty: in "
            "memory)",
        )
        _require(
            bool(self.state_url) or self.workers == 1 or not self.history,
            "--history with --workers above 1 needs --state-url: each worker would keep a state "
            "of its own",
        )


@dataclass(frozen=True)
class WebhookConfig:
    """``serve.py webhook``: register the registry webhook that tells ``serve.py api`` at once
    that its alias moved (the secret: ``FRAUD_DETECTION_WEBHOOK_SECRET``, as the service)."""

    url: str = field(
        default="",
        metadata=_help(
            "Where the tracking server posts alias events: the service's /webhooks/registry, "
            "e.g. https://scoring.example.com/webhooks/registry."
        ),
    )
    name: str = field(
        default="fraud-detection-serving",
        metadata=_help("Name of the webhook in the registry; registering again updates it."),
    )

    def __post_init__(self) -> None:
        _require(
            self.url.startswith(("http://", "https://")),
            f"--url must be an http(s) URL of the service's webhook route, got {self.url!r}",
        )
        _require(bool(self.name.strip()), "--name must not be empty")


@dataclass(frozen=True)
class MonitorConfig:
    """``monitor``: drift and delayed-label performance of a model on files it scored
    (docs/monitoring.md). Default thresholds: measured on quiet weeks of the default data."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    scored: str = field(
        default="",
        metadata=_help(
            "File that serve.py batch wrote with this model (CSV or Parquet, path or URI): raw "
            "transactions and their fraud_probability; or a directory of such files, such as "
            "the scored/ folder of serve.py api --score-log."
        ),
    )
    model_uri: str = field(
        default=f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}",
        metadata=_help(
            "The registered model that scored the file: models:/<name>@<alias> or /<version>."
        ),
    )
    window_days: int = field(default=7, metadata=_help("Length of a monitoring window, in days."))
    # Quiet weeks of the default data: feature PSI at most 0.0036, score PSI 0.0013, alert-rate
    # ratio 0.94-1.08 against the test window's rate (1.31-1.50 against the in-sample validation
    # rate of a model without one), average-precision ratio at least 1.08
    # (bench/results/monitor_quiet.json).
    psi_threshold: float = field(
        default=0.1, metadata=_help("Highest population stability index of a feature.")
    )
    score_psi_threshold: float = field(
        default=0.1, metadata=_help("Highest population stability index of the score.")
    )
    alert_rate_ratio: float = field(
        default=2.0,
        metadata=_help(
            "Largest factor between a window's alert rate and the model's on its test window "
            "(from its evaluate run), either way (2: from half to twice)."
        ),
    )
    min_ap_ratio: float = field(
        default=0.7,
        metadata=_help(
            "Lowest realised average precision of a window with matured labels, as a share of "
            "the model's test average precision."
        ),
    )
    as_of: str = field(
        default="",
        metadata=_help(
            "When labels are read (a date or time): a window's labels count once its end plus "
            "the model's label delay is at or before it. Empty: the latest time in the file."
        ),
    )
    labels: str = field(
        default="",
        metadata=_help(
            "CSV or Parquet file (or directory of files, such as the labels/ folder of serve.py "
            "api --score-log) of transaction id and label, when the labels came later than the "
            "scores; a transaction it does not name is genuine. Empty: the scored file's label "
            "column."
        ),
    )
    require_performance: bool = field(
        default=False,
        metadata=_help("Fail when no window has matured labels (instead of drift only)."),
    )
    retrain: bool = field(
        default=False,
        metadata=_help(
            "When a threshold is crossed, train, evaluate and register on the most recent data "
            "through the normal gate."
        ),
    )
    data: str = field(
        default="",
        metadata=_help(
            "Data to retrain on (CSV or Parquet, path or URI). Empty: the model's own train "
            "data recipe, with the latest training window it allows."
        ),
    )
    columns: TransactionColumns = field(default_factory=TransactionColumns)
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        _require(bool(self.scored.strip()), "--scored is required: a file serve.py batch wrote")
        _require(bool(self.model_uri.strip()), "--model-uri must not be empty")
        _require(self.window_days >= 1, f"--window-days must be at least 1, got {self.window_days}")
        for name in ("psi_threshold", "score_psi_threshold"):
            value = getattr(self, name)
            _require(value > 0, f"--{name.replace('_', '-')} must be positive, got {value}")
        _require(
            self.alert_rate_ratio > 1,
            f"--alert-rate-ratio must be above 1, got {self.alert_rate_ratio}",
        )
        _require(
            0 <= self.min_ap_ratio <= 1,
            f"--min-ap-ratio must be between 0 and 1, got {self.min_ap_ratio}",
        )
        if self.as_of:
            _parse_date("as_of", self.as_of)
