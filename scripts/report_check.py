"""Open a jaxvae report in headless Chromium and check it the way a reader would see it.

    python scripts/report_check.py RUN/report.html [--screenshot FILE.png]   (or: make report-check RUN=...)

Checks: the page loads from file:// with no server; it makes no request other than the page itself
(its images are data: URIs) and no request fails; nothing is logged as an error (a blocked script
or request would be, by the page's Content-Security-Policy); every <img> decodes to a picture
(naturalWidth > 0); and a full-page screenshot is not blank.

Why the DevTools protocol over a pipe: `--screenshot` and `--dump-dom` alone cannot see failed
requests or image decoding, and the report runs no script of its own to report them. Chromium's
`--remote-debugging-pipe` speaks the protocol as NUL-terminated JSON on file descriptors 3 and 4,
so the standard library drives the system's Chromium directly: no websocket client, no Playwright
and no browser download. Exit status 0 when every check passes, 1 when one fails, 2 when there is
no Chromium.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe", "--window-size=1200,1600")

# Run in the page after it has loaded: does every image decode, and what does the page hold?
PAGE_CHECK = """(async () => {
  const imgs = Array.from(document.images);
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => i.naturalWidth > 0, () => false)));
  return {images: imgs.length,
          broken: imgs.filter((_, k) => !decoded[k]).map(i => i.alt || i.src.slice(0, 60)),
          scripts: document.scripts.length, sections: document.querySelectorAll("section").length,
          title: document.title, text_chars: document.body.innerText.length};
})()"""


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class DevTools:
    """A headless Chromium and its DevTools protocol over --remote-debugging-pipe."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.timeout, self.next_id, self.events, self.buffer = timeout, 0, [], b""
        self.profile = tempfile.mkdtemp(prefix="jaxvae-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # The child needs them as fds 3 and 4; duplicating them above 10 first means the dup2s
        # below cannot overwrite one another whatever numbers os.pipe handed out.
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))

        def to_fds_3_and_4():
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # 3 and 4 listed so that close_fds, which runs after preexec_fn, keeps them open
            pass_fds=(3, 4, child_in, child_out), preexec_fn=to_fds_3_and_4)
        for fd in (to_browser_r, from_browser_w, child_in, child_out):
            os.close(fd)
        self.write_fd, self.read_fd = to_browser_w, from_browser_r

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for k, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(k)
        while True:
            event = self._receive()
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer in {self.timeout:.0f} s")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it crash?)")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.write_fd, self.read_fd):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def is_blank(png: bytes) -> tuple[bool, float]:
    """(blank?, fraction of pixels that differ from the most common colour) of a screenshot."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    inked = 1.0 - counts.max() / len(pixels)
    return bool(len(colours) < 16 or inked < 0.01), float(inked)


def check(page: str | os.PathLike, binary: str, screenshot: str | os.PathLike | None = None) -> dict:
    """Load `page` in headless Chromium; return what was seen and `problems`, a list of lines."""
    url = Path(page).absolute().as_uri()
    browser = DevTools(binary)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Log", "Runtime"):
            browser.send(f"{domain}.enable", session)
        browser.send("Page.navigate", session, url=url)
        browser.wait_for("Page.loadEventFired")
        seen = browser.send("Runtime.evaluate", session, expression=PAGE_CHECK, awaitPromise=True,
                            returnByValue=True)["result"]["value"]
        size = browser.send("Page.getLayoutMetrics", session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}
        png = base64.b64decode(browser.send("Page.captureScreenshot", session, format="png", clip=clip,
                                            captureBeyondViewport=True)["data"])
        browser.send("Runtime.evaluate", session, expression="0")  # flush events still in flight
    finally:
        browser.close()

    requests, failed, errors = {}, [], []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            requests[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed":
            failed.append(f"{requests.get(params['requestId'], '?')[:80]}: {params.get('errorText')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(params["entry"]["text"])
        elif method == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("text", "exception"))
    external = sorted({u[:80] for u in requests.values() if u != url and not u.startswith("data:")})
    blank, inked = is_blank(png)
    if screenshot:
        Path(screenshot).write_bytes(png)

    problems = [f"request to {u}" for u in external] + [f"failed request {f}" for f in failed]
    problems += [f"console error: {e}" for e in errors]
    problems += [f"image does not decode: {b}" for b in seen["broken"]]
    if seen["images"] == 0:
        problems.append("the page has no images")
    if seen["scripts"]:
        problems.append(f"the page carries {seen['scripts']} script(s)")
    if blank:
        problems.append(f"the screenshot is blank ({inked:.1%} of pixels differ from the background)")
    return {**seen, "requests": len(requests), "external": external, "failed": failed, "errors": errors,
            "inked": inked, "screenshot_px": [int(clip["width"]), int(clip["height"])], "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", help="report.html, or a run directory holding one")
    parser.add_argument("--screenshot", help="also save the full-page screenshot here (PNG)")
    a = parser.parse_args(argv)
    page = Path(a.page) / "report.html" if Path(a.page).is_dir() else Path(a.page)
    if not page.is_file():
        print(f"report_check: error: {page} does not exist (run `jaxvae report RUN` first)", file=sys.stderr)
        return 1
    binary = find_chromium()
    if binary is None:
        print("report_check: error: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    result = check(page, binary, a.screenshot)
    print(f"{page}: {result['images']} images, {result['sections']} sections, {result['requests']} requests "
          f"({len(result['external'])} not data:), {len(result['failed'])} failed, "
          f"{len(result['errors'])} console errors, screenshot {result['screenshot_px'][0]}x"
          f"{result['screenshot_px'][1]} px with {result['inked']:.1%} inked"
          + (f", saved to {a.screenshot}" if a.screenshot else ""))
    for problem in result["problems"]:
        print(f"  FAIL {problem}")
    print("ok" if not result["problems"] else f"{len(result['problems'])} problem(s)")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
