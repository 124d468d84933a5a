"""A real headless Chromium driven over the DevTools protocol (CDP), for the status page tests.

Chromium listens on 127.0.0.1 only (``--remote-debugging-port=0``: it picks a free port and writes it
to ``DevToolsActivePort`` in its profile folder). One browser WebSocket carries every command; each
tab is a flattened CDP session. Only aiohttp is needed: no Selenium, no Playwright download.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_NAMES = ("chromium", "chromium-browser")
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0


class DevToolsError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], profile: str, http: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse) -> None:
        self.process = process
        self.profile = profile
        self._http = http
        self._ws = ws
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def launch(cls, binary: str) -> Browser:
        profile = tempfile.mkdtemp(prefix="xqueue-chromium-")
        args = [
            binary, "--headless", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-gpu",
            "--disable-extensions", "--disable-background-networking", "--disable-sync", "--mute-audio",
            "--no-proxy-server", "--hide-scrollbars", "--disable-dev-shm-usage", "--force-color-profile=srgb",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its setuid/namespace sandbox
        process = _spawn(args, Path(profile) / "chromium.log")
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise DevToolsError(f"chromium exited with {process.returncode}: {cls._log_tail(profile)}")
            lines = port_file.read_text().split("\n") if port_file.exists() else []
            if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].strip():
                break
            if time.monotonic() > deadline:
                process.kill()
                raise DevToolsError(f"chromium did not open DevTools in {START_TIMEOUT} s: {cls._log_tail(profile)}")
            await asyncio.sleep(0.1)
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}", max_msg_size=0)
        except BaseException:
            await http.close()
            process.kill()
            raise
        return cls(process, profile, http, ws)

    @staticmethod
    def _log_tail(profile: str) -> str:
        path = Path(profile) / "chromium.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(message.data)
                future = self._pending.pop(data.get("id", -1), None)
                if future is not None and not future.done():
                    future.set_result(data)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(DevToolsError("the DevTools connection closed"))

    async def send(self, method: str, session_id: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session_id:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, COMMAND_TIMEOUT)
        if "error" in reply:
            raise DevToolsError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def new_tab(self) -> Tab:
        """A tab in a fresh browser context: its own cookies, like a private window."""
        context = await self.send("Target.createBrowserContext")
        target = await self.send("Target.createTarget", url="about:blank", browserContextId=context["browserContextId"])
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        tab = Tab(self, attached["sessionId"], target["targetId"])
        await tab.call("Page.enable")
        return tab

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.send("Browser.close"), 5)
        except (DevToolsError, TimeoutError, aiohttp.ClientError):
            pass
        self._reader.cancel()
        await self._ws.close()
        await self._http.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


class Tab:
    def __init__(self, browser: Browser, session_id: str, target_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.target_id = target_id

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, self.session_id, **params)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 15.0) -> bool:
        """Poll a JavaScript expression until it is truthy (bounded), e.g. a page having loaded; True."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                value = await self.evaluate(f"!!({expression})")
            except DevToolsError:
                value = None  # the document is being replaced (navigation in progress)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} not true after {seconds} s "
                                   f"(at {await self.evaluate('location.href')!r})")
            await asyncio.sleep(0.1)

    async def navigate(self, url: str) -> None:
        result = await self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise DevToolsError(f"navigation to {url} failed: {result['errorText']}")

    async def set_viewport(self, width: int, height: int, mobile: bool) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=mobile)

    async def screenshot(self, full_page: bool = True) -> bytes:
        """A PNG of the page (the whole document when ``full_page``) at the current viewport width."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.call("Page.getLayoutMetrics")
            size = metrics["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        return base64.b64decode((await self.call("Page.captureScreenshot", **params))["data"])

    async def close(self) -> None:
        await self.browser.send("Target.closeTarget", targetId=self.target_id)
