"""The MLflow UI, checked in a real browser: `rerank-ray ui` serves a study's runs and a user can
compare them by strategy, student and nDCG.

The store holds one study laid out by the study runner's own MLflow conventions
(``rerank_ray.tune.tracking``: a parent run, one child run per trial with ``strategy`` /
``student`` / ``teacher`` / ``seed`` tags, metrics named by ``mlflow_key``), written with
MLflow's client so the test takes seconds, not a training run. `rerank-ray ui` serves it on a
free port; Debian's chromium (headless, driven by Selenium through Debian's chromedriver) opens
the experiment, expands the study's parent run, adds the nDCG metric and the strategy and
student tag columns from the Columns menu, and the test reads the grid. The screenshot goes to
``test-artifacts/mlflow-ui-study.png``.

Needs: chromium, chromium-driver (apt) and selenium (pip); `make browser-deps` installs them and
the `browser` fixture runs it when something is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rerank_ray.config import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
# The flags that keep headless chromium quiet and self-contained on a machine without a network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Wide: the runs grid renders only the columns that fit (column virtualisation).
    "--window-size=2400,1100",
]
TRIALS = [  # (strategy, student, teacher, dl19 nDCG@10, scifact nDCG@10)
    ("contrastive", "minilm-l1", None, 0.4123, 0.5521),
    ("distillation", "minilm-l1", "ce-l6", 0.4456, 0.5702),
    ("contrastive", "minilm-l2", None, 0.4789, 0.5813),
    ("distillation", "minilm-l2", "ce-l6", 0.5012, 0.6034),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian chromium under Selenium, installing what is missing first."""
    missing = not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK))
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = True
    if missing:
        subprocess.run(
            ["make", "-C", str(PROJECT_ROOT), "browser-deps", f"BIN={BIN}"], check=True, timeout=900
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def write_study(tracking_uri: str) -> str:
    """A study as the study runner logs it; returns the experiment id."""
    import mlflow

    from rerank_ray.evaluation.metrics import mlflow_key
    from rerank_ray.tune.tracking import child_tags, ensure_experiment

    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, "ui-study")
    parent = client.create_run(
        experiment_id, run_name="ui-study", tags={"role": "study", "study": "ui-study"}
    )
    for strategy, student, teacher, dl19, scifact in TRIALS:
        name = "+".join([strategy, student, *([teacher] if teacher else []), "s0"])
        tags = child_tags(
            "ui-study", parent.info.run_id, "trial",
            strategy=strategy, student=student, teacher=teacher or "none", seed="0",
        )  # fmt: skip
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        client.log_metric(run.info.run_id, mlflow_key("dl19", "nDCG@10"), dl19)
        client.log_metric(run.info.run_id, mlflow_key("scifact", "nDCG@10"), scifact)
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    return experiment_id


@pytest.fixture
def mlflow_ui(tmp_path):
    """`rerank-ray ui` over a fresh sqlite store holding one study; yields (url, experiment id)."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = write_study(tracking_uri)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "RERANK_RAY_LOG_DIR": str(tmp_path / "logs")}
    log = open(tmp_path / "ui.log", "w")
    # Its own process group: stopping it stops the `mlflow server` child too, and nothing else.
    proc = subprocess.Popen(
        [str(BIN / "rerank-ray"), "ui", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, tmp_path / "ui.log")
        yield url, experiment_id
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"rerank-ray ui exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"rerank-ray ui did not answer on {url} within {timeout}s:\n{log_path.read_text()[-3000:]}")


def header_texts(driver) -> set[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, ".ag-header-row-column")
    return {text for row in rows for text in row.text.split("\n") if text}


def grid_rows(driver) -> dict[str, str]:
    """Run name -> the text of its whole row. AG Grid renders a row as one element per
    container (pinned left, centre), joined here by their shared row index."""
    from selenium.webdriver.common.by import By

    parts: dict[str, list[str]] = {}
    for row in driver.find_elements(
        By.CSS_SELECTOR, ".ag-center-cols-container [role=row], .ag-pinned-left-cols-container [role=row]"
    ):
        parts.setdefault(row.get_attribute("row-index"), []).append(row.text.replace("\n", " | "))
    rows = {}
    for texts in parts.values():
        joined = " | ".join(texts)
        for strategy, student, teacher, *_ in TRIALS:
            name = "+".join([strategy, student, *([teacher] if teacher else []), "s0"])
            if name in joined.split(" | "):
                rows[name] = joined
    return rows


def test_study_runs_show_strategy_student_and_ndcg(browser, mlflow_ui):
    from selenium.webdriver.support.ui import WebDriverWait

    url, experiment_id = mlflow_ui
    wait = WebDriverWait(browser, 90)
    started = time.perf_counter()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow-ui-study.png"
    try:
        headers, rows = compare_runs(browser, wait, url, experiment_id)
    finally:  # also on failure: the picture is the quickest way to see what the page showed
        browser.save_screenshot(str(shot))
    print(f"\nMLflow UI checked in {time.perf_counter() - started:.1f}s; screenshot {shot}")

    assert {"dl19/nDCG_10", "scifact/nDCG_10", "strategy", "student"} <= headers
    for strategy, student, teacher, dl19, scifact in TRIALS:
        name = "+".join([strategy, student, *([teacher] if teacher else []), "s0"])
        cells = rows[name].split(" | ")
        assert strategy in cells and student in cells, rows[name]
        assert f"{dl19:.4f}".rstrip("0") in cells and f"{scifact:.4f}".rstrip("0") in cells, rows[name]


def compare_runs(browser, wait, url: str, experiment_id: str) -> tuple[set[str], dict[str, str]]:
    """What a user does to compare a study's trials; returns the grid's headers and rows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    # The runs tab of the experiment, in the "model training" view (not GenAI traces).
    browser.get(f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")

    # The study is one parent run; its trials are nested under it until expanded.
    parent_cell = wait.until(
        ec.presence_of_element_located((By.XPATH, "//div[@role='gridcell'][.//a/span[text()='ui-study']]"))
    )
    parent_cell.find_element(
        By.CSS_SELECTOR, "button[data-component-id$='runnamecellrenderer.tsx_46']"
    ).click()
    wait.until(
        ec.presence_of_element_located((By.XPATH, "//a/span[text()='distillation+minilm-l2+ce-l6+s0']"))
    )

    # Columns menu: every metric, and the strategy and student tags.
    browser.find_element(By.XPATH, "//button[.//*[text()='Columns'] or text()='Columns']").click()
    menu = wait.until(
        ec.visibility_of_element_located((By.XPATH, "//div[@role='dialog'][.//*[text()='Tags (6)']]"))
    )
    for label in ("Metrics (2)", "strategy", "student"):
        menu.find_element(By.XPATH, f".//*[text()='{label}']").click()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)

    wanted = {"dl19/nDCG_10", "scifact/nDCG_10", "strategy", "student"}
    headers = wait.until(lambda d: wanted <= (found := header_texts(d)) and found)
    wait.until(lambda d: len(grid_rows(d)) == len(TRIALS))
    return headers, grid_rows(browser)


def test_make_browser_deps_is_idempotent():
    """With everything installed the target only checks, so the browser test can always call it."""
    if shutil.which("make") is None:
        pytest.fail("make is missing: install it (apt-get install make)")
    out = subprocess.run(
        ["make", "-C", str(PROJECT_ROOT), "--no-print-directory", "browser-deps", f"BIN={BIN}"],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    assert "apt-get" not in out.stdout and "Collecting" not in out.stdout, out.stdout
