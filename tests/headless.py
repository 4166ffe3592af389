"""Headless Chromium driven over the DevTools protocol (a websocket), for page tests.

    with Browser.start(tmp_path) as browser:
        browser.navigate("http://127.0.0.1:8080/_status")
        browser.evaluate("document.title")
        browser.screenshot(path)

Chromium runs with a fresh profile, no network beyond what the page asks for (no
background networking, sync, component updates or QUIC) and its DevTools port picked by
itself (read back from DevToolsActivePort). `find_chromium()` is None when it is not
installed (`make deps` installs Debian's `chromium`).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import websocket

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-sync",
    "--disable-component-update",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, proc: subprocess.Popen[bytes], ws: websocket.WebSocket) -> None:
        self.proc = proc
        self.ws = ws
        self._id = 0

    @classmethod
    def start(
        cls, workdir: Path, width: int = 1280, height: int = 820, timeout: float = 20.0
    ) -> Browser:
        binary = find_chromium()
        if binary is None:
            raise RuntimeError("chromium not found (make deps installs it)")
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = open(workdir / "chromium.log", "wb")  # noqa: SIM115 (kept open by the process)
        proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "chromium did not start: " + (workdir / "chromium.log").read_text()[-2000:]
                    )
                time.sleep(0.05)
            port = int(port_file.read_text().split("\n")[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as res:
                targets = json.loads(res.read())
            page = next(t for t in targets if t.get("type") == "page")
            ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        browser = cls(proc, ws)
        browser.call("Page.enable")
        browser.call("Runtime.enable")
        return browser

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
