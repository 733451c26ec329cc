"""Take ``docs/mlflow_ui.png``: ``mlflow ui`` showing a real sweep's parent run with its trial runs.

    .venv/bin/python docs/screenshot_mlflow.py [--out docs/mlflow_ui.png] [--keep]

1. runs a tiny real sweep (3 trials, 2 epochs, 2,000 images) into a fresh MLflow store in a temp folder;
2. starts ``mlflow server`` on a free loopback port;
3. opens the experiment's runs page in headless Chromium (Debian: ``apt-get install chromium``), drives it
   over the DevTools protocol (stdlib only: a minimal WebSocket client below) to expand the parent run
   and close the assistant side panel, and saves a screenshot;
4. stops the server and the browser. ``--keep`` leaves the temp folder for a look.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1600, 900
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}"]

#: Expand the sweep's parent row (the expander button sits in the same cell as the run's link).
EXPAND = """(() => {
  const link = [...document.querySelectorAll('a')].find(a => a.textContent.trim().startsWith('sweep-'));
  if (!link) return 'waiting';
  let cell = link;
  for (let i = 0; i < 6 && cell && !cell.querySelector('button'); i++) cell = cell.parentElement;
  const button = cell && cell.querySelector('button');
  if (!button) return 'no expander';
  button.click();
  return 'expanded';
})()"""
#: Close the "MLflow Assistant" side panel, which takes a third of the page.
CLOSE_ASSISTANT = """(() => {
  const close = document.querySelector('[data-component-id="mlflow.assistant.chat_panel.close"]');
  if (!close) return 'no panel';
  close.click();
  return 'closed';
})()"""
OPEN_COLUMNS = "[...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Columns').click()"
#: Entries of the "Columns" menu to toggle: show the sweep's metrics and params, hide empty columns.
TOGGLE = ["val_accuracy", "test_accuracy", "best_value", "optimizer.lr", "optimizer.momentum",
          "model.activation", "Dataset", "Source", "Models"]
TOGGLE_COLUMNS = """(() => {
  const want = %s;
  const leaves = root => [...root.querySelectorAll('span')].filter(e => e.children.length === 0);
  let menu = leaves(document).find(e => e.textContent.trim().startsWith('Metrics ('));
  while (menu && !leaves(menu).some(e => e.textContent.trim() === 'Dataset')) menu = menu.parentElement;
  if (!menu) return 'no columns menu';
  const hits = leaves(menu).filter(e => want.includes(e.textContent.trim()));
  hits.forEach(e => e.click());
  document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}));
  return hits.map(e => e.textContent.trim()).join(', ');
})()""" % json.dumps(TOGGLE)
TABLE_BOTTOM = """Math.max(0, ...[...document.querySelectorAll('a')]
    .filter(a => /^(trial-\\d+|sweep-.*)$/.test(a.textContent.trim()))
    .map(a => a.getBoundingClientRect().bottom))"""
COUNT_TRIALS = "[...document.querySelectorAll('a')].filter(a => /^trial-\\d+$/.test(a.textContent.trim())).length"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float = 90, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        time.sleep(every)
    sys.exit(f"error: timed out waiting for {what}")


class DevTools:
    """Just enough of a WebSocket client (RFC 6455, text frames) to call Chrome DevTools methods."""

    def __init__(self, ws_url: str):
        rest = ws_url.removeprefix("ws://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        if b" 101 " not in response.split(b"\r\n", 1)[0]:
            raise ConnectionError(response.decode(errors="replace"))
        self.buffer = response.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _receive(self) -> dict:
        message = b""
        while True:
            first, second = self._read(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = first & 0x0F
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the connection")
            message += payload
            if first & 0x80:
                return json.loads(message)

    def call(self, method: str, **params):
        self.next_id += 1
        self._send(0x1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


def run_sweep(tmp: Path, uri: str) -> None:
    args = [sys.executable, "-m", "lenet_sweep", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
            "trainer.epochs=2", "data.train_limit=2000", "data.test_limit=1000", "data.normalize=true",
            "trainer.verbose=0", f"mlflow.tracking_uri={uri}", f"hydra.sweeper.storage={tmp}/optuna.journal",
            f"hydra.sweep.dir={tmp}/multirun"]
    print("[screenshot] running a 3-trial sweep ...", flush=True)
    proc = subprocess.run(args, cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: the sweep failed:\n{proc.stderr[-3000:]}")


def screenshot(url: str, out: Path, profile: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: chromium not found: apt-get install chromium")
    port = free_port()
    browser = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                f"--remote-debugging-port={port}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def page_ws():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        tools = DevTools(wait_for("Chromium's DevTools", page_ws, timeout=60))
        tools.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                   deviceScaleFactor=1, mobile=False)
        tools.call("Page.enable")
        tools.call("Page.navigate", url=url)
        wait_for("the parent run in the runs table", lambda: tools.evaluate(EXPAND) == "expanded")
        wait_for("the trial runs", lambda: tools.evaluate(COUNT_TRIALS) >= 3, timeout=30)
        tools.evaluate(OPEN_COLUMNS)
        time.sleep(1.5)
        print(f"[screenshot] columns toggled: {tools.evaluate(TOGGLE_COLUMNS)}")
        time.sleep(1)
        print(f"[screenshot] assistant panel: {tools.evaluate(CLOSE_ASSISTANT)}")
        time.sleep(2)  # let the table settle after the clicks
        bottom = tools.evaluate(TABLE_BOTTOM) or HEIGHT  # crop the empty page below the table
        clip = {"x": 0, "y": 0, "width": WIDTH, "height": min(HEIGHT, int(bottom) + 60), "scale": 1}
        shot = tools.call("Page.captureScreenshot", format="png", clip=clip)
        out.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow_ui.png")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (its path is printed)")
    options = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlflow_ui_"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    server = None
    try:
        run_sweep(tmp, uri)
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(uri).get_experiment_by_name("lenet_sweep").experiment_id
        port = free_port()
        mlflow = [str(Path(sys.executable).with_name("mlflow"))]
        if not Path(mlflow[0]).exists():
            mlflow = [sys.executable, "-m", "mlflow"]
        server = subprocess.Popen([*mlflow, "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                                   "--port", str(port)], cwd=tmp, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)

        def healthy():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                return r.status == 200

        wait_for("mlflow server", healthy, timeout=120)
        url = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning"
        options.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(url, options.out, tmp / "chromium-profile")
        print(f"[screenshot] wrote {options.out} ({options.out.stat().st_size // 1024} KiB)")
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        if options.keep:
            print(f"[screenshot] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
