"""The built website as a reader meets it: every page of the table of contents, opened in headless
Chromium from a loopback HTTP server, checked for what shows broken in a browser.

A page fails, at 1280 or 1920 px, when an image did not load (naturalWidth 0), Markdown table syntax
(`|---|`) shows as text, a literal backtick or Markdown emphasis (`**x**`, `*x*`) shows outside code,
a formula shows as plain text (`log2(`, `e^`, a product `400*400` rendered as italics), a table is
wider than the page (columns clipped or behind a sideways scrollbar), a Python traceback shows, a
formula is left unrendered by MathJax, a link inside the site points at a missing file or anchor, or the page requests anything
outside the site (the book must read offline). One screenshot per page is written beside the site.
Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out),
so nothing but the Debian package `chromium` is needed.

Entry points: `check_site(html_dir, pages=None, screenshots=None)`, `toc_pages`, `find_chromium`.
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kn.errors import DataError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]
WIDTHS, HEIGHT, MAX_SHOT = (1280, 1920), 900, 16000   # viewports checked (screenshots at the first), CSS pixels
TIMEOUT = 60.0                               # seconds for one page to load and be checked

# Runs in the page after its load event; resolves to {problems: [...], links: [...]}.
CHECK_JS = r"""
(async () => {
  const problems = [];
  const timeout = new Promise(r => setTimeout(() => r("timeout"), 20000));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise)
    if (await Promise.race([MathJax.startup.promise.then(() => "ok"), timeout]) === "timeout")
      problems.push("MathJax did not finish typesetting in 20 s");
  await Promise.race([timeout, Promise.all([...document.images].map(i => i.complete ? 0 :
    new Promise(r => { i.addEventListener("load", r); i.addEventListener("error", r); })))]);
  for (const img of document.images)
    if (img.naturalWidth === 0) problems.push(`image not loaded: ${img.getAttribute("src")}`);
  const article = document.querySelector("article") || document.body;
  const text = article.innerText;
  if (/\|\s*:?-{3,}:?\s*\|/.test(text)) problems.push("Markdown table syntax (|---|) shown as text");
  const tb = text.indexOf("Traceback");
  if (tb >= 0) problems.push(`traceback shown: ${text.slice(tb, tb + 80)}`);
  const code = "code, script, style, textarea, .cell_input, div[class*='highlight-']:not([class*='myst-ansi'])";
  const walk = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode())
    if (n.nodeValue.includes("`") && !n.parentElement.closest(code))
      problems.push(`literal backtick: ${n.nodeValue.trim().slice(0, 80)}`);
  const plain = "code, script, style, textarea, pre, .cell_input, .math, mjx-container, div[class*='highlight-']";
  const walk2 = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let n = walk2.nextNode(); n; n = walk2.nextNode()) {
    if (n.parentElement.closest(plain)) continue;
    const v = n.nodeValue;
    if (/\*\*\S/.test(v) || /(^|[\s(])\*[^\s*][^*]*\*(?=[\s).,;:]|$)/.test(v))
      problems.push(`literal Markdown emphasis: ${v.trim().slice(0, 80)}`);
    if (/\blog_?2\s*\(|\\frac|\\log|\be\^[({\w]/.test(v))
      problems.push(`formula as plain text: ${v.trim().slice(0, 80)}`);
  }
  for (const em of article.querySelectorAll("em"))
    if (/^\d[\d,.]*$/.test(em.textContent) && /\d$/.test(em.previousSibling?.textContent || ""))
      problems.push(`a product written with * shown as italics: ...${(em.previousSibling.textContent || "").slice(-12)}${em.textContent}...`);
  for (const t of article.querySelectorAll("table")) {
    const box = t.parentElement;
    if (t.scrollWidth > article.clientWidth + 2 || box.scrollWidth > box.clientWidth + 2)
      problems.push(`table wider than the page at ${window.innerWidth} px (${t.scrollWidth} > ${article.clientWidth}): ` +
                    `columns clipped: ${t.innerText.slice(0, 40).replace(/\s+/g, " ")}`);
  }
  const math = [...article.querySelectorAll(".math")];
  for (const m of math)
    if (!m.querySelector("mjx-container") && !m.closest("mjx-container"))
      problems.push(`formula not rendered: ${m.textContent.trim().slice(0, 60)}`);
  const links = [...document.querySelectorAll("a[href]")].map(a => a.href);
  return {problems, links};
})()
"""


def find_chromium() -> str | None:
    """The Chromium executable on PATH (Debian: chromium), or None."""
    return next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)


def toc_pages(root: Path) -> list[str]:
    """HTML paths (relative to the site) of the pages named in root/_toc.yml, in order."""
    pages = []
    for line in (Path(root) / "_toc.yml").read_text().splitlines():
        line = line.strip()
        if line.startswith(("- file:", "root:")):
            pages.append(line.split(":", 1)[1].strip() + ".html")
    return pages


class Browser:
    """Headless Chromium over the DevTools protocol on a pipe (JSON messages ending in NUL)."""

    def __init__(self, exe: str, user_data_dir: str):
        to_r, self._w = os.pipe()
        self._r, from_w = os.pipe()

        def fds():   # the child reads commands on fd 3 and answers on fd 4
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=fds, close_fds=False)
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = TIMEOUT) -> dict:
        """Call one protocol method and wait for its result; events that arrive meanwhile are kept."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, name: str, session: str, timeout: float = TIMEOUT) -> dict:
        """The first event `name` of `session` (kept or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.get("method") == name and e.get("sessionId") == session:
                    return e
            self.events.append(self._next(deadline))

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


@functools.cache
def _ids(path: Path) -> frozenset:
    return frozenset(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))


def link_problems(links: list[str], base: str, html_dir: Path) -> list[str]:
    """Links into the site (under `base`) whose file or #anchor does not exist."""
    bad = []
    for link in sorted(set(links)):
        if not link.startswith(base):
            continue
        parts = urlsplit(link)
        rel = unquote(parts.path)[len(urlsplit(base).path):]
        target = html_dir / (rel or "index.html")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            bad.append(f"broken link: {rel}")
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _ids(target):
            bad.append(f"broken anchor: {rel}#{parts.fragment}")
    return bad


def check_page(browser: Browser, base: str, page: str, html_dir: Path, shot: Path | None) -> list[str]:
    """Every problem of one page at each of WIDTHS (each named once), with a screenshot at the first."""
    problems = []
    for i, width in enumerate(WIDTHS):
        problems += [p for p in _check_at(browser, base, page, html_dir, shot if i == 0 else None, width)
                     if p not in problems]
    return problems


def _check_at(browser: Browser, base: str, page: str, html_dir: Path, shot: Path | None, width: int) -> list[str]:
    """Load one page in a new tab `width` px wide, check it, optionally save a full-page screenshot."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        for method in ("Page.enable", "Network.enable"):
            browser.send(method, session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": HEIGHT,
                                                            "deviceScaleFactor": 1, "mobile": False}, session)
        nav = browser.send("Page.navigate", {"url": base + page}, session)
        if nav.get("errorText"):
            return [f"page did not load: {nav['errorText']}"]
        browser.wait_event("Page.loadEventFired", session)
        res = browser.send("Runtime.evaluate", {"expression": CHECK_JS, "awaitPromise": True,
                                                "returnByValue": True}, session)
        if "exceptionDetails" in res:
            return [f"check script failed: {res['exceptionDetails'].get('text')}"]
        found = res["result"]["value"]
        problems = found["problems"] + link_problems(found["links"], base, html_dir)
        problems += [f"request outside the site: {e['params']['request']['url'][:100]}" for e in browser.events
                     if e.get("sessionId") == session and e.get("method") == "Network.requestWillBeSent"
                     and not e["params"]["request"]["url"].startswith((base, "data:", "blob:", "about:"))]
        if shot is not None:
            size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": width, "height": min(size["height"], MAX_SHOT), "scale": 1}
            png = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                          "clip": clip}, session)["data"]
            shot.parent.mkdir(parents=True, exist_ok=True)
            shot.write_bytes(base64.b64decode(png))
        return problems
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
        browser.events = [e for e in browser.events if e.get("sessionId") != session]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def check_site(html_dir: Path, pages: list[str] | None = None, screenshots: Path | None = None) -> dict[str, list[str]]:
    """Problems per page of the built site (all pages of _toc.yml by default; [] where a page is fine).
    Screenshots go to `screenshots` (default: _build/screenshots beside html_dir) as <page>.png."""
    html_dir = Path(html_dir).resolve()
    if not (html_dir / "index.html").is_file():
        raise DataError(f"site: no index.html in {html_dir}; build the book first (`kn book`)")
    exe = find_chromium()
    if exe is None:
        raise DataError("site: chromium not found on PATH; install the Debian package `chromium`")
    pages = pages or toc_pages(html_dir.parent.parent)
    screenshots = Path(screenshots) if screenshots else html_dir.parent / "screenshots"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(html_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    _ids.cache_clear()
    with tempfile.TemporaryDirectory(prefix="kn-chromium-") as profile:
        browser = Browser(exe, profile)
        try:
            return {p: check_page(browser, base, p, html_dir, screenshots / p.replace("/", "_").replace(".html", ".png"))
                    for p in pages}
        finally:
            browser.close()
            server.shutdown()
            server.server_close()
