"""A real browser for tests: Debian's chromium, headless, driven over the DevTools protocol.

`load(page)` opens a file:// URL with the network cut off, waits for every <video> to load
its metadata (so a clip the browser cannot play shows up as an error, not a silent black
box), and returns the console errors, failed requests, what the page's videos report, the
DOM and a PNG screenshot. No browser download: the websockets client comes with Prefect.

One browser per test session (started at the first page, killed at exit): each page gets its
own browser context (an incognito-like profile, nothing shared) and connection.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--mute-audio", "--hide-scrollbars", "--remote-debugging-port=0",
         # nothing may come from the network: the page must be self-contained
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]


def chromium() -> str:
    """The browser's path; a missing browser fails the test in CI and skips it elsewhere."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "chromium not found (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError  # unreachable


@dataclass
class PageReport:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    videos: list[dict[str, Any]] = field(default_factory=list)
    html: str = ""
    text: str = ""
    screenshot: bytes = b""


class _Cdp:
    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id, self.events = ws, 0, []
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.waiting:
                self.waiting.pop(msg["id"]).set_result(msg)
            else:
                self.events.append(msg)

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self.next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = fut
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})


_VIDEOS_JS = """
(async () => {
  const vids = [...document.querySelectorAll('video')];
  await Promise.all(vids.map(v => new Promise(ok => {
    if (v.readyState >= 1 || v.error) return ok();
    v.addEventListener('loadedmetadata', ok, {once: true});
    v.addEventListener('error', ok, {once: true});
    setTimeout(ok, 15000);
  })));
  const imgs = [...document.querySelectorAll('img')];
  return JSON.stringify(vids.map(v => ({src: v.getAttribute('src'), poster: v.getAttribute('poster'),
    readyState: v.readyState, error: v.error ? v.error.code : null, duration: v.duration,
    currentTime: v.currentTime,
    width: v.videoWidth, height: v.videoHeight, label: v.getAttribute('aria-label')})));
})()
"""


_browser: tuple[subprocess.Popen[str], str, str] | None = None  # (process, ws URL, profile)


def _endpoint() -> str:
    """The session browser's DevTools URL, starting it if needed (or again, if it died)."""
    global _browser
    if _browser is not None and _browser[0].poll() is None:
        return _browser[1]
    profile = tempfile.mkdtemp(prefix="storyreel-chromium-")
    proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}",
                             "--window-size=1366,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws_url = _devtools_url(proc)
    except BaseException:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
        raise
    # its log goes on (a full pipe would stall the browser): drained for as long as it runs
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
    _browser = (proc, ws_url, profile)
    return ws_url


@atexit.register
def _close_browser() -> None:
    global _browser
    if _browser is not None:
        proc, _, profile = _browser
        _browser = None
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def _load(url: str, width: int, height: int) -> PageReport:
    ws_url = await asyncio.to_thread(_endpoint)
    async with websockets.connect(ws_url, max_size=64 * 2**20) as ws:
        cdp = _Cdp(ws)
        context = (await cdp.call("Target.createBrowserContext"))["browserContextId"]
        try:
            target = (await cdp.call("Target.createTarget", url="about:blank",
                                     browserContextId=context))["targetId"]
            session = (await cdp.call("Target.attachToTarget", targetId=target,
                                      flatten=True))["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                await cdp.call(f"{domain}.enable", session)
            await cdp.call("Emulation.setDeviceMetricsOverride", session, width=width,
                           height=height, deviceScaleFactor=1, mobile=False)
            await cdp.call("Page.navigate", session, url=url)
            for _ in range(300):  # the load event
                if any(e.get("method") == "Page.loadEventFired" for e in cdp.events):
                    break
                await asyncio.sleep(0.05)
            videos = await cdp.call("Runtime.evaluate", session, expression=_VIDEOS_JS,
                                    awaitPromise=True, returnByValue=True)
            dom = await cdp.call("Runtime.evaluate", session, returnByValue=True,
                                 expression="document.documentElement.outerHTML")
            text = await cdp.call("Runtime.evaluate", session, returnByValue=True,
                                  expression="document.body.innerText")
            shot = await cdp.call("Page.captureScreenshot", session, format="png")
            report = PageReport(videos=json.loads(videos["result"]["value"]),
                                html=dom["result"]["value"], text=text["result"]["value"],
                                screenshot=base64.b64decode(shot["data"]))
            report.errors = _errors(cdp.events)
            return report
        finally:
            await cdp.call("Target.disposeBrowserContext", browserContextId=context)
            cdp.reader.cancel()


def _devtools_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            return m[1]
    raise RuntimeError(f"chromium exited ({proc.wait()}) before its DevTools endpoint was up")


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for ev in events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                              for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            out.append("exception: " + p["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.loadingFailed" and p.get("errorText") != "net::ERR_ABORTED":
            # (ERR_ABORTED: the media element cancels its own range request once it has
            # what it asked for; a missing file is ERR_FILE_NOT_FOUND)
            out.append(f"load failed: {p.get('errorText')} {p.get('type')}")
    return out


async def aload(page: Path, width: int = 1366, height: int = 900) -> PageReport:
    """Open `page` from file:// in headless chromium and report what a person would see."""
    return await _load(Path(page).resolve().as_uri(), width, height)


def load(page: Path, width: int = 1366, height: int = 900) -> PageReport:
    return asyncio.run(aload(page, width, height))


def save_screenshot(report: PageReport, dest: Path) -> Path:
    dest.write_bytes(report.screenshot)
    return dest

