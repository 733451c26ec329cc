"""Take the README's screenshots of a real sweep: ``mlflow ui`` and optuna-dashboard.

    .venv/bin/python tools/screenshots.py [--out docs] [--keep] [--reuse DIR]

Needs the ``docs`` extra (``pip install -e '.[docs]'``: Selenium, optuna-dashboard) and Debian's
``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``). It

1. runs a tiny real sweep (4 trials, 2 epochs, 2,000 images) with its MLflow store, Optuna journal and
   multirun folder in a temp folder;
2. starts ``mlflow server`` and ``optuna-dashboard`` on free loopback ports, each in its own process
   group, and waits until each answers;
3. drives headless Chromium with Selenium (the driver is /usr/bin/chromedriver, given explicitly, so
   Selenium Manager never tries to download one) at a 1600x900 viewport and writes

   - ``mlflow_ui.png``: the experiment's "Model training" runs table (MLflow 3 opens an experiment in
     its GenAI view; ``?workflowType=machine_learning`` opens the runs table directly) with the sweep's
     parent run expanded to show its trial runs, the sweep's metrics and parameters as columns;
   - ``optuna_dashboard.png``: the study's page (history of the objective, named by the study's metric
     name, parameter importances, timeline);
   - ``optuna_trial.png``: the study's trials page at the best trial (parameters, value, user attrs
     with ``mlflow_run_url``, the trial's run in MLflow);
4. stops the browser and both servers (their whole process groups). ``--keep`` leaves the temp folder
   (its path is printed); ``--reuse DIR`` takes the stores a ``--keep`` left instead of a new sweep.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1600, 900
TRIALS = 4
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Columns of MLflow's runs table (its "Columns" menu): shown (True) or hidden (False).
COLUMNS = {"Dataset": False, "Source": True, "Models": True, "val_accuracy": True, "test_accuracy": True,
           "optimizer.lr": True, "optimizer.momentum": True, "model.activation": True}


def log(message: str) -> None:
    print(f"[screenshots] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep(tmp: Path) -> None:
    args = [sys.executable, "-m", "lenet_sweep", "-m", "hydra/sweeper=optuna", f"hydra.sweeper.n_trials={TRIALS}",
            "trainer.epochs=2", "data.train_limit=2000", "data.test_limit=500", "data.normalize=true",
            "trainer.verbose=0", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
            f"hydra.sweeper.storage={tmp}/optuna.journal", f"hydra.sweep.dir={tmp}/multirun"]
    log(f"running a {TRIALS}-trial sweep in {tmp} ...")
    # in the temp folder: the model's artifacts go to its mlruns/, nothing lands in the checkout
    proc = subprocess.run(args, cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: the sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


class Server:
    """A command in its own process group (its workers with it), its output in ``<tmp>/<name>.log``."""

    def __init__(self, name: str, args: list[str], tmp: Path):
        self.name, self.log = name, tmp / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_until_answers(self, url: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"error: {self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        sys.exit(f"error: {self.name} did not answer {url} within {timeout:.0f} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        stop_group(self.proc.pid)


def stop_group(pgid: int, grace: float = 20) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            sys.exit(f"error: {path} not found: apt-get install {package}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--hide-scrollbars", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(flag)
    # chromedriver and the browser it starts in a process group of their own, stopped as one at the end
    service = Service(CHROMEDRIVER, popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(options=options, service=service)
    # Selenium sizes the window, and headless Chromium's window holds some browser chrome too:
    # grow it by the difference so that the page's viewport is WIDTH x HEIGHT
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * WIDTH - inner[0], 2 * HEIGHT - inner[1])
    return driver


def save(driver, out: Path, bottom: float | None = None, margin: int = 40) -> None:
    """The viewport as a PNG, cut ``bottom`` pixels down (plus ``margin``) when given."""
    from PIL import Image  # Pillow: a dependency of matplotlib

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
    if bottom:
        image = image.crop((0, 0, image.width, min(image.height, int(bottom) + margin)))
    image.save(out, optimize=True)
    log(f"wrote {out} ({image.width}x{image.height}, {out.stat().st_size // 1024} KiB)")


def mlflow_page(driver, base: str, experiment_id: str, out: Path) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 90)
    driver.get(f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    # the "MLflow Assistant" side panel opens with the page and takes a third of it
    try:
        WebDriverWait(driver, 15).until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'))).click()
    except TimeoutException:
        pass
    parent = "//a[starts-with(normalize-space(), 'sweep-')]"
    wait.until(EC.presence_of_element_located((By.XPATH, parent)))
    # the expander is the button in the run name's cell
    wait.until(EC.element_to_be_clickable((By.XPATH, f"{parent}/ancestor::*[.//button][1]//button"))).click()
    trials = "//a[starts-with(normalize-space(), 'trial-')]"
    wait.until(lambda d: len(d.find_elements(By.XPATH, trials)) >= TRIALS)

    driver.find_element(By.XPATH, "//button[normalize-space()='Columns']").click()
    for name, shown in COLUMNS.items():
        title = wait.until(EC.element_to_be_clickable(
            (By.XPATH, f"//span[contains(@class, 'light-tree-title') and normalize-space()='{name}']")))
        node = title.find_element(By.XPATH, "./ancestor::*[contains(@class, 'light-tree-treenode')][1]")
        if ("checkbox-checked" in node.get_attribute("class")) != shown:
            title.click()
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()  # closes the menu
    wait.until(EC.invisibility_of_element_located((By.CSS_SELECTOR, ".du-bois-light-tree")))
    driver.execute_script("document.activeElement.blur()")  # no focus ring on Columns (Selenium has no blur)
    time.sleep(2)  # the table re-lays out its columns
    bottom = max(a.rect["y"] + a.rect["height"] for a in driver.find_elements(By.XPATH, f"{parent}|{trials}"))
    save(driver, out, bottom)


def optuna_pages(driver, base: str, study_id: int, best: int, out: Path, out_trial: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 90)
    driver.get(f"{base}/dashboard/studies/{study_id}")
    # plotly draws the history's points; the importances are computed after it
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .point")))
    wait.until(EC.presence_of_element_located((By.XPATH, "//*[normalize-space()='Hyperparameter Importance']")))
    time.sleep(3)
    history = driver.find_element(
        By.XPATH, "//h6[normalize-space()='History']/ancestor::*[contains(@class, 'MuiCard-root')][1]")
    save(driver, out, history.rect["y"] + history.rect["height"], margin=12)  # down to the history's card

    driver.get(f"{base}/dashboard/studies/{study_id}/trials?numbers={best}")
    wait.until(EC.presence_of_element_located((By.XPATH, f"//*[contains(normalize-space(), 'Trial {best} (')]")))
    wait.until(EC.presence_of_element_located((By.XPATH, "//*[contains(text(), 'mlflow_run_url')]")))
    time.sleep(1)
    attrs = driver.find_element(By.XPATH, "//p[normalize-space()='User Attributes']/..")  # the row
    save(driver, out_trial, attrs.rect["y"] + attrs.rect["height"], margin=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (docs)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (its path is printed)")
    parser.add_argument("--reuse", type=Path, help="a folder --keep left: its stores, no new sweep")
    options = parser.parse_args()
    tmp = options.reuse.resolve() if options.reuse else Path(tempfile.mkdtemp(prefix="screenshots_"))
    options.out = options.out.resolve()
    options.out.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    driver = None
    try:
        if not options.reuse:
            sweep(tmp)
        import optuna
        from mlflow.tracking import MlflowClient

        uri = f"sqlite:///{tmp}/mlflow.db"
        experiment_id = MlflowClient(uri).get_experiment_by_name("lenet_sweep").experiment_id
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(tmp / "optuna.journal")))
        study = optuna.load_study(study_name="lenet_sweep", storage=storage)
        study_id = storage.get_study_id_from_name("lenet_sweep")

        bin_dir = Path(sys.executable).parent
        mlflow_port, dashboard_port = free_port(), free_port()
        mlflow = Server("mlflow", [str(bin_dir / "mlflow"), "server", "--backend-store-uri", uri,
                                   "--host", "127.0.0.1", "--port", str(mlflow_port)], tmp)
        servers.append(mlflow)
        # optuna-dashboard reads the journal file itself (a path that is not a sqlite file: JournalStorage)
        dashboard = Server("optuna-dashboard", [str(bin_dir / "optuna-dashboard"), str(tmp / "optuna.journal"),
                                                "--host", "127.0.0.1", "--port", str(dashboard_port)], tmp)
        servers.append(dashboard)
        mlflow.wait_until_answers(f"http://127.0.0.1:{mlflow_port}/health")
        dashboard.wait_until_answers(f"http://127.0.0.1:{dashboard_port}/api/studies")
        log(f"mlflow server on :{mlflow_port}, optuna-dashboard on :{dashboard_port}")

        driver = browser(tmp / "chromium-profile")
        mlflow_page(driver, f"http://127.0.0.1:{mlflow_port}", experiment_id, options.out / "mlflow_ui.png")
        optuna_pages(driver, f"http://127.0.0.1:{dashboard_port}", study_id, study.best_trial.number,
                     options.out / "optuna_dashboard.png", options.out / "optuna_trial.png")
    finally:
        if driver is not None:
            driver_group = driver.service.process.pid
            driver.quit()
            stop_group(driver_group, grace=5)
        for server in servers:
            server.stop()
        if options.keep or options.reuse:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
