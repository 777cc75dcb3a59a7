"""Headless Debian Chromium driven over the DevTools protocol (a websocket): open pages, read the rendered DOM,
take screenshots, and record every request the page makes and every JavaScript error or console error.

Example:
    >>> with chromium(chromium_path(), tmp_path) as browser:
    ...     browser.open("file:///site/index.html#feature=3", "document.body.dataset.state === 'ready'")
    ...     browser.evaluate("document.title")
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Headless without a sandbox (root in a container), and without the background services whose connections
# would be refused here anyway.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--hide-scrollbars",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    """The Chromium executable on PATH (Debian's ``chromium``), or None."""
    return next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)


class Browser:
    """One headless Chromium with one page, over the DevTools protocol."""

    def __init__(self, process: subprocess.Popen, socket: Any, session: str, log: Path):
        self.process, self.socket, self.session, self.log = process, socket, session, log
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    @classmethod
    def start(cls, executable: str, folder: Path, width: int = 1280, height: int = 900, timeout: float = 60) -> Browser:
        """Launch Chromium with a fresh profile under ``folder`` and open one page of ``width`` x ``height``."""
        import websocket

        profile = folder / "profile"
        profile.mkdir(parents=True)
        log = folder / "chromium.log"
        with log.open("w") as stderr:
            process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                       stdout=subprocess.DEVNULL, stderr=stderr)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"Chromium did not open its DevTools port; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        socket = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True)
        browser = cls(process, socket, "", log)
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        browser.session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            browser.send(f"{domain}.enable")
        browser.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        return browser

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method (on the page once attached) and return its result; events seen meanwhile are kept."""
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 30) -> None:
        """Navigate to ``url`` and wait until the JavaScript expression ``ready`` is true."""
        self.send("Page.navigate", url=url)
        # Until the new document exists, the expression may run on the old one or on no body at all.
        self.wait(f"location.href === {json.dumps(url)} && ({ready})", timeout)

    def wait(self, condition: str, timeout: float = 30) -> None:
        """Wait until the JavaScript expression ``condition`` is true (an expression that throws counts as false)."""
        check = f"(() => {{ try {{ return Boolean({condition}); }} catch {{ return false; }} }})()"
        deadline = time.monotonic() + timeout
        while not self.evaluate(check):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{condition} was still false after {timeout} s; errors: {self.errors()}")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> Path:
        """Save the whole page (not only the viewport) as a PNG."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and browser log errors (failed loads) so far."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found

    def requests(self) -> list[str]:
        """Every URL the page requested so far, in order."""
        return [event["params"]["request"]["url"] for event in self.events if event["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        """Close Chromium (killing it if it does not exit)."""
        try:
            self.socket.send(json.dumps({"id": next(self._ids), "method": "Browser.close"}))
            self.socket.close()
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
            self.process.wait()


@contextmanager
def chromium(executable: str, folder: Path, width: int = 1280, height: int = 900) -> Iterator[Browser]:
    """A started :class:`Browser`, closed on leaving the block."""
    browser = Browser.start(executable, folder, width, height)
    try:
        yield browser
    finally:
        browser.close()
