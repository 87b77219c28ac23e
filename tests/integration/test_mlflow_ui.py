"""The MLflow UI, checked in a real browser on the store of a real study: what a user sees when
opening the link `rerank-ray study` prints.

The test runs a tiny study itself (``byo_study``: one random-init student, contrastive and
distillation from a precomputed-scores teacher, 2 steps each, on a collection defined in YAML)
into a fresh sqlite store, so the runs, tags, metrics
and the parent's description are exactly what the study runner writes. `rerank-ray ui` serves
the store on a free port; Debian's chromium (headless, driven by Selenium through Debian's
chromedriver) opens the printed link (``study.tracking.experiment_url``: the runs table in
model-training mode, which MLflow 3.17 takes from the URL, not from the experiment's tag),
checks the study's parent run is listed at first load, expands it, adds the in-domain metric
and the strategy and student tag columns from the Columns menu, and reads the grid against the
store; then it opens the parent run and reads the report in its description. The screenshots
go to ``test-artifacts/mlflow-ui-*.png``.

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

# xdist_group: the same worker as test_byo.py, which shares `byo_study`.
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600), pytest.mark.xdist_group("byo")]

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
STUDY = "byo"  # tests/integration/conftest.py's byo_study
METRIC = "mycorpus/nDCG_10"


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


@pytest.fixture(scope="module")
def study(byo_study):
    """The shared tiny study (tests/integration/conftest.py) and its trials' in-domain metric
    as the store holds it."""
    import mlflow

    _, result, _ = byo_study
    assert [t.status for t in result.trials] == ["ok", "ok"], [t.error for t in result.trials]
    client = mlflow.MlflowClient(result.tracking_uri)
    trials = client.search_runs(
        [result.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}' and tags.role = 'trial'",
    )
    return result, {r.info.run_name: r.data.metrics[METRIC] for r in trials}


@pytest.fixture
def mlflow_ui(study, tmp_path):
    """`rerank-ray ui` over the study's store; yields its URL."""
    tracking_uri = study[0].tracking_uri
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
        yield url
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


def grid_rows(driver, names) -> dict[str, str]:
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
        for name in names:
            if name in joined.split(" | "):
                rows[name] = joined
    return rows


def screenshot_on_exit(browser, name: str):
    """Save the page as test-artifacts/mlflow-ui-<name>.png when the block ends, also on failure."""
    import contextlib

    @contextlib.contextmanager
    def saving():
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            yield
        finally:  # the picture is the quickest way to see what the page showed
            browser.save_screenshot(str(ARTIFACTS / f"mlflow-ui-{name}.png"))

    return saving()


def test_printed_link_opens_the_study_runs_table(browser, mlflow_ui, study):
    from selenium.webdriver.support.ui import WebDriverWait

    from rerank_ray.study.tracking import experiment_url

    result, metrics = study
    wait = WebDriverWait(browser, 90)
    started = time.perf_counter()
    with screenshot_on_exit(browser, "study"):
        headers, rows = compare_runs(browser, wait, experiment_url(mlflow_ui, result.experiment_id), metrics)
    print(f"\nMLflow UI checked in {time.perf_counter() - started:.1f}s; screenshots in {ARTIFACTS}")

    assert {METRIC, "strategy", "student"} <= headers
    for name, value in metrics.items():
        cells = rows[name].split(" | ")
        strategy = name.split("+")[0]
        assert strategy in cells and "tiny-l1" in cells, rows[name]
        assert any(cell and abs(float(cell) - value) < 1e-3 for cell in cells if _number(cell)), (
            value,
            rows[name],
        )


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_parent_run_description_is_the_report(browser, mlflow_ui, study):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from rerank_ray.study.tracking import run_url

    result, _ = study
    wait = WebDriverWait(browser, 90)
    with screenshot_on_exit(browser, "parent"):
        browser.get(run_url(mlflow_ui, result.experiment_id, result.parent_run_id))
        # The report's table (student rows, the first-stage row) is rendered in the description.
        wait.until(lambda d: "first stage" in d.find_element(By.TAG_NAME, "body").text)
        text = browser.find_element(By.TAG_NAME, "body").text
    assert "tiny-l1" in text and "mycorpus" in text


def compare_runs(browser, wait, link: str, metrics: dict[str, float]) -> tuple[set[str], dict[str, str]]:
    """What a user does after opening the link: the study's parent run is listed (the runs
    table, not the GenAI overview); expand it, add the metric and tag columns; returns the
    grid's headers and rows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    browser.get(link)

    # First load: the study's parent run in the runs grid; its trials are nested under it.
    parent_cell = wait.until(
        ec.presence_of_element_located((By.XPATH, f"//div[@role='gridcell'][.//a/span[text()='{STUDY}']]"))
    )
    parent_cell.find_element(
        By.CSS_SELECTOR, "button[data-component-id$='runnamecellrenderer.tsx_46']"
    ).click()
    last = sorted(metrics)[-1]
    wait.until(ec.presence_of_element_located((By.XPATH, f"//a/span[text()='{last}']")))

    # Columns menu: the in-domain metric, and the strategy and student tags.
    browser.find_element(By.XPATH, "//button[.//*[text()='Columns'] or text()='Columns']").click()
    menu = wait.until(
        ec.visibility_of_element_located(
            (By.XPATH, "//div[@role='dialog'][.//*[starts-with(text(), 'Tags (')]]")
        )
    )
    for label in (METRIC, "strategy", "student"):
        menu.find_element(By.XPATH, f".//*[text()='{label}']").click()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)

    wanted = {METRIC, "strategy", "student"}
    headers = wait.until(lambda d: wanted <= (found := header_texts(d)) and found)
    wait.until(lambda d: len(grid_rows(d, metrics)) == len(metrics))
    return headers, grid_rows(browser, metrics)


def test_make_browser_deps_is_idempotent():
    """With everything installed the target only checks, so the browser test can always call it."""
    if shutil.which("make") is None:
        pytest.fail("make is missing: install it (apt-get install make)")
    out = subprocess.run(
        ["make", "-C", str(PROJECT_ROOT), "--no-print-directory", "browser-deps", f"BIN={BIN}"],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    assert "apt-get" not in out.stdout and "Collecting" not in out.stdout, out.stdout
