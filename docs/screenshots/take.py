"""Take the README's screenshots of the MLflow UI: what a newcomer sees after the quick start.

    python docs/screenshots/take.py              # the quick start's default run (about 4 min)
    python docs/screenshots/take.py --small      # small data, no sweep (about 1.5 min)
    make screenshots

Steps, each as a user would do it:

1. Clone this repository's HEAD into a temporary folder (as a newcomer clones it; a folder
   that is not a git checkout is copied instead) and run the quick start there:
   `mlflow run . --env-manager local`, which leaves `mlflow.db` and `mlruns/` in that folder.
2. Start `mlflow ui` in that folder on a free port of 127.0.0.1 and wait until it answers.
3. Find the experiment, runs and model versions with MlflowClient.
4. Open each page in headless Chromium (Debian's `chromium` package), driven through the
   Chrome DevTools Protocol over a pipe (no debugging port is opened), wait until the page has
   rendered (its content is there and no spinner is left), and capture it.

Writes, to docs/images/ (or --out):

    ui-runs.png           the experiment's runs: `main`, its train/evaluate/register runs nested
                          under it, and the sweep's candidate runs under train
    ui-model.png          the registered model `fraud-detector`: versions, aliases, tags
    ui-model-version.png  the champion version: aliases, source run, lineage tags
    ui-model-card.png     the evaluate run's Artifacts tab showing model_card.html

Every process it starts (the pipeline, `mlflow ui`, Chromium) runs in a session of its own
and is stopped through it. Nothing is sent anywhere but 127.0.0.1. Exit status: 0 done, 1 a
step failed (the pipeline, the server, a page that did not render: its last state is saved as
`<name>.failed.png` in the kept work folder), 2 Chromium is missing or a bad argument.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

# mlflow is imported once main() has turned its telemetry off (MLflow starts its telemetry
# client when it is imported): see _client.

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))  # the project files and the small run are the tests' own
from tests.support import PROJECT_FILES, SMALL_RUN  # noqa: E402 (no mlflow import there)

DEFAULT_OUT = REPOSITORY / "docs" / "images"
# The folder the quick start runs in; its name is what the UI's Source column shows.
PROJECT_FOLDER = "fraud-detection"
EXPERIMENT = "fraud-detection"
MODEL = "fraud-detector"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_INSTALL = "apt-get install chromium"
WINDOW = (1440, 900)
# A rendered page has far more colours than this (text is anti-aliased); a blank one has 1-2.
MIN_COLOURS = 256
# For every MLflow process, this one included: no telemetry (MLflow 3 sends it to its own host
# otherwise), and no job runner for GenAI features in `mlflow ui`.
QUIET = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
PIPELINE_TIMEOUT_S = 1800
SERVER_TIMEOUT_S = 180
PAGE_TIMEOUT_S = 60
# Chromium flags: headless, and nothing that reaches out to Google's hosts.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    # No name resolves but 127.0.0.1's: the pages cannot reach anything else.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-pipe",
)
# Chromium's temporary profile: a new folder each time, named so, removed when it stops.
CHROMIUM_PROFILE_PREFIX = "screenshots-chromium-"
SHORT_PATH = 40
# Runs Chromium (argv[3:]) with the pipe ends argv[1] and argv[2] as its fds 3 and 4.
FDS_3_AND_4 = (
    "import os, sys; reader, writer = int(sys.argv[1]), int(sys.argv[2]);"
    " os.dup2(reader, 3); os.dup2(writer, 4); os.close(reader); os.close(writer);"
    " os.execv(sys.argv[3], sys.argv[3:])"
)
# MLflow's UI marks what is still loading with these (its design system's spinner and
# skeleton placeholders).
LOADING_SELECTOR = '[class*="spin-spinning"], [class*="skeleton"]'


class ScreenshotError(Exception):
    """A step failed; the message says which and why."""


class ChromiumMissingError(ScreenshotError):
    pass


# --- processes -------------------------------------------------------------------------------


def quiet_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for MLflow processes: no telemetry, no GenAI job runner, no inherited
    tracking settings (the quick start uses the working directory's mlflow.db), and this
    interpreter's bin folder first on PATH (`mlflow run` starts `python main.py`)."""
    env = dict(os.environ if base is None else base)
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_EXPERIMENT_ID",
    ):
        env.pop(name, None)
    env.update(QUIET)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def stop(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the process's session, SIGKILL after ``grace_s``."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
    _signal_group(process.pid, signal.SIGKILL)  # anything left in its session


def run_logged(command: Sequence[str], log: Path, cwd: Path, env: Mapping[str, str]) -> None:
    """Run ``command`` in a session of its own, output to ``log``; fail with its tail."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=PIPELINE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            stop(process)
    if returncode != 0:
        what = "timed out" if returncode is None else f"exited with {returncode}"
        tail = log.read_text(errors="replace")[-3000:]
        raise ScreenshotError(f"`{' '.join(command[2:5])} ...` {what}; end of {log}:\n{tail}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status < 300
    except (OSError, urllib.error.HTTPError):
        return False


@contextmanager
def mlflow_ui(project: Path, log: Path) -> Iterator[str]:
    """`mlflow ui` in ``project`` (its mlflow.db, as the README says) on a free loopback port;
    yields its base URL once /health answers, and stops it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=project,
            env=quiet_environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while not http_ok(url + "health"):
            if process.poll() is not None:
                raise ScreenshotError(f"mlflow ui exited with {process.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise ScreenshotError(
                    f"mlflow ui did not answer in {SERVER_TIMEOUT_S} s; see {log}"
                )
            time.sleep(0.5)
        yield url
    finally:
        stop(process)


# --- the pipeline ----------------------------------------------------------------------------


def prepare_project(destination: Path) -> str:
    """Put the project in ``destination`` as a newcomer gets it; return what was used."""
    git = ["git", "-C", str(REPOSITORY)]
    inside = subprocess.run(
        [*git, "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True
    )
    if shutil.which("git") is None or inside.returncode != 0:
        destination.mkdir(parents=True)
        for name in PROJECT_FILES:
            source = REPOSITORY / name
            if source.is_dir():
                shutil.copytree(
                    source, destination / name, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy(source, destination / name)
        return f"a copy of {REPOSITORY} (not a git checkout)"
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", *PROJECT_FILES], capture_output=True, text=True
    ).stdout.strip()
    if changed:
        print(
            "warning: uncommitted changes to the pipeline's files are not in the screenshots "
            f"(they show commit {commit[:12]}):\n{changed}",
            file=sys.stderr,
        )
    # A local clone (no network), checked out at this work tree's commit. Its `origin` would
    # be this folder's path, which MLflow would record as the runs' source: removed.
    subprocess.run(
        ["git", "clone", "--quiet", "--no-checkout", str(REPOSITORY), str(destination)],
        check=True,
    )
    subprocess.run(["git", "-C", str(destination), "checkout", "--quiet", commit], check=True)
    subprocess.run(["git", "-C", str(destination), "remote", "remove", "origin"], check=True)
    return f"a clone of commit {commit[:12]}"


def run_quick_start(project: Path, log: Path, small: bool) -> float:
    """The README's quick start (`mlflow run . --env-manager local --experiment-name
    fraud-detection`) in ``project``."""
    command = [sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local"]
    command += ["--experiment-name", "fraud-detection"]
    if small:
        for key, value in SMALL_RUN.items():
            command += ["-P", f"{key}={value}"]
    started = time.monotonic()
    scratch = project.parent / "tmp"  # MLflow leaves a folder in TMPDIR for every project run
    scratch.mkdir(exist_ok=True)
    run_logged(command, log, project, quiet_environment({**os.environ, "TMPDIR": str(scratch)}))
    return time.monotonic() - started


@dataclass(frozen=True)
class Pipeline:
    """What the pages show, as MlflowClient finds it in the quick start's store."""

    experiment_id: str
    main_run: Any
    step_runs: dict[str, Any]  # train, evaluate, register
    candidates: list[Any]
    champion_version: str
    versions: list[str]

    @property
    def runs(self) -> list[Any]:
        return [self.main_run, *self.step_runs.values(), *self.candidates]


def _client(tracking_uri: str):
    os.environ.update(QUIET)  # before mlflow is first imported (main() has done it already)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def find_pipeline(tracking_uri: str) -> Pipeline:
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise ScreenshotError(f"no experiment {EXPERIMENT!r} in {tracking_uri}")
    runs = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000
    )
    by_step: dict[str, list[Any]] = {}
    for run in runs:
        by_step.setdefault(run.data.tags.get("fraud.step", ""), []).append(run)
    if not by_step.get("main"):
        raise ScreenshotError(f"no pipeline run (tag fraud.step=main) in experiment {EXPERIMENT!r}")
    main = by_step["main"][0]  # the latest pipeline

    def child(step: str, parent: Any) -> list[Any]:
        return [
            run
            for run in by_step.get(step, [])
            if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        ]

    steps = {}
    for step in ("train", "evaluate", "register"):
        found = child(step, main)
        if not found:
            raise ScreenshotError(f"the pipeline run {main.info.run_id} has no {step} run")
        steps[step] = found[0]
    models = client.search_registered_models(f"name = '{MODEL}'")
    if not models or "champion" not in models[0].aliases:
        raise ScreenshotError(f"no registered model {MODEL} with a @champion in {tracking_uri}")
    model = models[0]
    versions = [v.version for v in client.search_model_versions(f"name = '{MODEL}'")]
    return Pipeline(
        experiment_id=experiment.experiment_id,
        main_run=main,
        step_runs=steps,
        candidates=child("candidate", steps["train"]),
        champion_version=str(model.aliases["champion"]),
        versions=sorted(map(str, versions), key=int),
    )


# --- Chromium through the DevTools protocol ------------------------------------------------


def find_chromium(explicit: str | None) -> str:
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise ChromiumMissingError(f"Chromium not found at {explicit!r}")
        return found
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumMissingError(
        f"Chromium is not installed (looked for {', '.join(CHROMIUM_NAMES)} on PATH): "
        f"{CHROMIUM_INSTALL}, or pass --chromium PATH"
    )


class Browser:
    """Headless Chromium driven over `--remote-debugging-pipe`: the protocol's JSON messages,
    NUL-terminated, on the child's file descriptors 3 (commands) and 4 (answers, events)."""

    def __init__(self, executable: str, log: Path, window: tuple[int, int]) -> None:
        self.window = window
        # Chromium puts a socket in its TMPDIR and dies if the socket's path is longer than
        # a socket address allows (108 bytes): its profile, and its TMPDIR, go to a short path.
        root = tempfile.gettempdir()
        if len(root) > SHORT_PATH and os.path.isdir("/tmp"):
            root = "/tmp"
        self.profile = tempfile.mkdtemp(prefix=CHROMIUM_PROFILE_PREFIX, dir=root)
        # Chromium reads commands from its fd 3 and writes to its fd 4: the pipes' child ends
        # are moved above the usual descriptors, and a trampoline puts them on 3 and 4.
        reader, self._commands = os.pipe()
        self._answers, writer = os.pipe()
        child_reader = fcntl.fcntl(reader, fcntl.F_DUPFD_CLOEXEC, 10)
        child_writer = fcntl.fcntl(writer, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (reader, writer):
            os.close(fd)
        command = [
            executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={window[0]},{window[1]}",
            "about:blank",
        ]
        trampoline = [sys.executable, "-I", "-c", FDS_3_AND_4, str(child_reader)]
        trampoline.append(str(child_writer))
        try:
            with log.open("ab") as output:
                self.process = subprocess.Popen(
                    [*trampoline, *command],
                    pass_fds=(child_reader, child_writer),
                    env={**os.environ, "TMPDIR": self.profile},
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        finally:
            os.close(child_reader)
            os.close(child_writer)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        with suppress(Exception):
            self.send("Browser.close", timeout=10)
        stop(self.process, grace_s=10)
        for fd in (self._commands, self._answers):
            with suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout=30
    ) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise ScreenshotError(f"Chromium exited (status {self.process.poll()})") from None
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline, method)
            if answer.get("id") == message["id"]:
                if "error" in answer:
                    raise ScreenshotError(f"Chromium refused {method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def _receive(self, deadline: float, method: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScreenshotError(f"Chromium did not answer {method} in time")
            ready, _, _ = select.select([self._answers], [], [], left)
            if ready:
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise ScreenshotError(f"Chromium exited (status {self.process.poll()})")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def requested_urls(self) -> set[str]:
        """Every URL the pages have requested (Network.enable in new_page)."""
        return {
            event["params"]["request"]["url"]
            for event in self.events
            if event.get("method") == "Network.requestWillBeSent"
        }

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session)
        width, height = self.window
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send("Network.enable")
        page.send(
            "Target.setAutoAttach",
            {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": True},
        )
        return page


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str, session: str | None = None) -> Any:
        """The value of ``expression`` in the page (or in the frame of ``session``)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.browser.send("Runtime.evaluate", params, session or self.session)
        if "exceptionDetails" in result:
            raise ScreenshotError(f"script failed in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def frame_sessions(self) -> list[str]:
        """The sessions of this page's iframes, newest first. A sandboxed iframe runs in a
        process of its own: Chromium attaches it as a target of its own (Target.setAutoAttach
        in Browser.new_page)."""
        attached, detached = [], set()
        for event in self.browser.events:
            params = event.get("params", {})
            if event.get("method") == "Target.detachedFromTarget":
                detached.add(params.get("sessionId"))
            elif (
                event.get("method") == "Target.attachedToTarget"
                and event.get("sessionId") == self.session
                and params["targetInfo"]["type"] == "iframe"
            ):
                attached.append(params["sessionId"])
        return [session for session in reversed(attached) if session not in detached]

    def wait_for(self, expression: str, what: str, timeout: float = PAGE_TIMEOUT_S) -> None:
        """Until ``expression`` is true in the page and nothing in it is loading any more."""
        check = (
            f"(() => {{ try {{ return !document.querySelector('{LOADING_SELECTOR}')"
            f" && Boolean({expression}); }} catch (error) {{ return false; }} }})()"
        )
        deadline = time.monotonic() + timeout
        while not self.evaluate(check):
            if time.monotonic() > deadline:
                raise ScreenshotError(f"{what} did not render in {timeout:.0f} s")
            time.sleep(0.25)

    def click(self, selector: str) -> bool:
        """Click the first element matching ``selector``; False if there is none."""
        return bool(
            self.evaluate(
                f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                " if (!e) return false; e.click(); return true; })()"
            )
        )

    def mouse(self, kind: str, x: float, y: float, pressed: bool = False) -> None:
        params: dict[str, Any] = {"type": kind, "x": x, "y": y, "buttons": int(pressed)}
        if kind != "mouseMoved":
            params.update(button="left", clickCount=1)
        elif pressed:
            params["button"] = "left"
        self.send("Input.dispatchMouseEvent", params)

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        """Drag the mouse from ``start`` to ``end`` as a hand would (a column's edge, say),
        then move it to the window's top right corner, where it hovers over nothing."""
        self.mouse("mouseMoved", *start)
        self.mouse("mousePressed", *start, pressed=True)
        steps = 20
        for step in range(1, steps + 1):
            x = start[0] + (end[0] - start[0]) * step / steps
            y = start[1] + (end[1] - start[1]) * step / steps
            self.mouse("mouseMoved", x, y, pressed=True)
        self.mouse("mouseReleased", *end)
        self.mouse("mouseMoved", self.browser.window[0] - 2, 2)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])


# --- the pages -------------------------------------------------------------------------------


def text_present(*texts: str) -> str:
    """A page condition: every one of ``texts`` is in the page's text."""
    return " && ".join(
        f"(document.body?.innerText ?? '').includes({json.dumps(text)})" for text in texts
    )


ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
# The runs table: one row per run (row-id = the run id), a +/- button on parents.
EXPAND_BUTTON = '[data-component-id*="runnamecellrenderer"]'
# Widths of the runs table's columns (ag-grid's col-id) in the screenshot, which add up to the
# table's width in the window (1188 px with Duration's 80 and the checkboxes' 73): wide enough
# to read the runs' names (a candidate's name is its settings) and their Source.
COLUMN_WIDTHS = {
    "attributes.`Models`": 160,
    "attributes.`Dataset`": 185,
    "runDateAndNestInfo": 135,  # Created
    "attributes.`Source`": 180,
    "attributes.`Run Name`": 370,
}
# The pages in the "Model training" view of MLflow's sidebar. MLflow 3.17.2 keeps the choice
# between it and "GenAI" in the browser (localStorage), GenAI by default: a new browser opens an
# experiment on its GenAI overview (traces, token usage) even when the experiment's kind says
# custom_model_development. This URL parameter is the switch a user clicks.
MACHINE_LEARNING = "workflowType=machine_learning"


def settle(page: Page) -> None:
    """Close the MLflow Assistant panel (it opens by itself on a new browser's first page and
    covers a third of the window), then let the page finish drawing."""
    if page.click(ASSISTANT_CLOSE):
        page.wait_for(f"!document.querySelector('{ASSISTANT_CLOSE}')", "closing the assistant")
    page.evaluate("document.fonts.ready.then(() => true)")
    time.sleep(1.0)


def runs_page(page: Page, base: str, pipeline: Pipeline) -> None:
    # Oldest first (MLflow's default is newest first): the pipeline then reads top-down, main,
    # train and its candidates, evaluate, register.
    page.navigate(
        f"{base}#/experiments/{pipeline.experiment_id}/runs?{MACHINE_LEARNING}"
        "&orderByKey=attributes.start_time&orderByAsc=true"
    )
    top = [pipeline.main_run.info.run_name]
    page.wait_for(text_present(*top), "the experiment's runs table")
    settle(page)
    # Expand every parent run (main, then train), as a user clicks each +.
    expanded: set[str] = set()
    want = {run.info.run_id for run in pipeline.runs}
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while True:
        rows = page.evaluate(
            f"Array.from(document.querySelectorAll('[role=row] {EXPAND_BUTTON}'))"
            ".map(b => b.closest('[role=row]').getAttribute('row-id'))"
        )
        new = [row for row in dict.fromkeys(rows) if row not in expanded]
        if not new:
            break
        for row in new:
            page.click(f'[role=row][row-id="{row}"] {EXPAND_BUTTON}')
            expanded.add(row)
        time.sleep(0.5)
        if time.monotonic() > deadline:
            raise ScreenshotError("the runs table kept growing")
    shown = (
        "new Set(Array.from(document.querySelectorAll('[role=row][row-id]'),"
        " r => r.getAttribute('row-id')))"
    )
    page.wait_for(
        f"(s => {json.dumps(sorted(want))}.every(id => s.has(id)))({shown})",
        "every run of the pipeline in the runs table",
    )
    # Columns wide enough to read the runs' names (a candidate's name is its settings) and
    # the Source, within the window's width.
    for column, width in COLUMN_WIDTHS.items():
        resize_column(page, column, width)
    settle(page)


def resize_column(page: Page, column: str, width: int) -> None:
    """Drag the right edge of the runs table's ``column`` until it is ``width`` wide."""
    header = f".ag-header-cell[col-id={json.dumps(column)}]"
    # A point of the header's resize handle that is not under the next header.
    found = page.evaluate(
        f"(() => {{ const cell = document.querySelector({json.dumps(header)});"
        " const handle = cell && cell.querySelector('.ag-header-cell-resize');"
        " if (!handle) return null;"
        " const c = cell.getBoundingClientRect(), h = handle.getBoundingClientRect();"
        " const y = h.top + h.height / 2;"
        " for (let x = Math.ceil(h.left); x < h.right; x++)"
        "   if (document.elementFromPoint(x, y) === handle) return [x, y, c.width];"
        " return null; })()"
    )
    if found is None:
        raise ScreenshotError(f"the runs table has no resizable column {column!r}")
    x, y, current = found
    page.drag((x, y), (x + width - current, y))


def model_page(page: Page, base: str, pipeline: Pipeline) -> None:
    page.navigate(f"{base}#/models/{MODEL}?{MACHINE_LEARNING}")
    page.wait_for(
        text_present(MODEL, *(f"Version {v}" for v in pipeline.versions), "champion", "challenger"),
        f"the registered model {MODEL}",
    )
    settle(page)


def model_version_page(page: Page, base: str, pipeline: Pipeline) -> None:
    version = pipeline.champion_version
    page.navigate(f"{base}#/models/{MODEL}/versions/{version}?{MACHINE_LEARNING}")
    page.wait_for(
        text_present(f"Version {version}", "champion", "fraud.decision"),
        f"{MODEL} version {version}",
    )
    settle(page)


def model_card_page(page: Page, base: str, pipeline: Pipeline) -> None:
    evaluate = pipeline.step_runs["evaluate"]
    page.navigate(
        f"{base}#/experiments/{pipeline.experiment_id}/runs/{evaluate.info.run_id}"
        f"/artifacts/model_card.html?{MACHINE_LEARNING}"
    )
    page.wait_for(
        text_present(evaluate.info.run_name, "model_card.html")
        + " && !!document.querySelector('iframe')",
        "the evaluate run's Artifacts tab",
    )
    # The card is shown in a sandboxed iframe: wait until it has drawn its content.
    card_ready = (
        "document.readyState === 'complete' && (document.body?.innerText ?? '').includes('Lineage')"
        " && Array.from(document.images).every(i => i.complete)"
    )
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while not any(page.evaluate(card_ready, frame) for frame in page.frame_sessions()):
        if time.monotonic() > deadline:
            raise ScreenshotError("model_card.html did not render in the Artifacts tab")
        time.sleep(0.25)
    settle(page)


SHOTS = {
    "ui-runs.png": runs_page,
    "ui-model.png": model_page,
    "ui-model-version.png": model_version_page,
    "ui-model-card.png": model_card_page,
}


def check_png(data: bytes, name: str, window: tuple[int, int]) -> None:
    from io import BytesIO

    image = Image.open(BytesIO(data))
    if image.format != "PNG" or image.size != window:
        raise ScreenshotError(f"{name}: {image.format} {image.size}, expected a PNG of {window}")
    colours = image.convert("RGB").getcolors(maxcolors=MIN_COLOURS)
    if colours is not None:  # None: more than MIN_COLOURS colours
        raise ScreenshotError(f"{name} looks blank ({len(colours)} colours)")


def take_screenshots(
    base: str, pipeline: Pipeline, chromium: str, out: Path, work: Path, window: tuple[int, int]
) -> list[Path]:
    browser = Browser(chromium, work / "chromium.log", window)
    written = []
    try:
        page = browser.new_page()
        for name, show in SHOTS.items():
            try:
                show(page, base, pipeline)
                data = page.screenshot()
                check_png(data, name, window)
            except ScreenshotError:
                with suppress(Exception):
                    (work / name.replace(".png", ".failed.png")).write_bytes(page.screenshot())
                raise
            path = out / name
            path.write_bytes(data)
            written.append(path)
        elsewhere = sorted(
            url
            for url in browser.requested_urls()
            if url.startswith(("http:", "https:", "ws:", "wss:")) and not url.startswith(base)
        )
        if elsewhere:  # blocked by --host-resolver-rules; said, in case a page misses them
            print("note: the pages asked for (and did not get):", *elsewhere, sep="\n  ")
    finally:
        browser.close()
    return written


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the PNGs go")
    parser.add_argument(
        "--small",
        action="store_true",
        help="small data and no sweep (for tests; the committed screenshots use the defaults)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the project, its store and the logs here (default: a temporary folder, "
        "removed at the end unless something failed)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --workdir: use the store a previous run left there, without re-running "
        "the pipeline",
    )
    parser.add_argument("--chromium", help="the Chromium executable (default: found on PATH)")
    args = parser.parse_args(argv)
    if args.reuse and args.workdir is None:
        parser.error("--reuse needs --workdir")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    os.environ.update(QUIET)
    try:
        chromium = find_chromium(args.chromium)
    except ChromiumMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ui-screenshots-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    project = work / PROJECT_FOLDER
    done = False
    try:
        if args.reuse and (project / "mlflow.db").exists():
            print(f"reusing the store in {project}")
        else:
            if project.exists():
                raise ScreenshotError(f"{project} exists already (pass --reuse to use its store)")
            source = prepare_project(project)
            print(f"running the quick start in {project} ({source}) ...", flush=True)
            seconds = run_quick_start(project, work / "pipeline.log", args.small)
            print(f"pipeline done in {seconds:.0f} s")
        tracking_uri = f"sqlite:///{project / 'mlflow.db'}"
        pipeline = find_pipeline(tracking_uri)
        args.out.mkdir(parents=True, exist_ok=True)
        with mlflow_ui(project, work / "mlflow-ui.log") as base:
            print(f"mlflow ui answers on {base}")
            written = take_screenshots(base, pipeline, chromium, args.out, work, WINDOW)
        done = True
    except (ScreenshotError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if done and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif not done:
            print(f"(work folder kept, with the logs: {work})", file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
