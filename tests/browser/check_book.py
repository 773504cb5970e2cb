"""Load every page of the built book in headless Chromium, offline, and report what a reader sees
wrong.

Usage::

    python tests/browser/check_book.py [BUILD_DIR] [--allow tests/browser/known_defects.txt]

``BUILD_DIR`` (default ``_build/html``) is served from a local ``http.server`` on 127.0.0.1; Chromium
(Debian's ``chromium`` package) runs headless with every host name resolving nowhere and a proxy
that does not exist for everything that is not loopback, so a page that needs the network (MathJax
from a CDN, web fonts) shows it here. Chromium is driven through the DevTools protocol over its
``--remote-debugging-port`` with ``websocket-client``; no browser is downloaded.

Each page is checked, after MathJax has typeset it, for these kinds of defect:

``raw-tex``
    TeX left as text (``$``, ``\\(``, ``\\frac`` ...) outside MathJax's output and code.
``math-error``
    a formula MathJax could not parse (an ``mjx-merror`` element).
``markdown-table``
    a line of text that starts with ``|``: a Markdown table that was not parsed.
``myst-syntax``
    MyST roles or directives shown as text (``{prf:``, ``{cite``, ``{doc}``, a ```` ```{ ````
    fence) or rendered as a code block of that "language".
``figure-number``
    a ``figure`` whose caption has no "Fig. N" number, or a plot shown as a bare cell output.
``output-cut``
    a cell-output ``pre`` wider than its box (``scrollWidth > clientWidth``): a line the reader
    has to scroll to see.
``console-error``
    a JavaScript exception, a ``console.error``, or an error the browser logs (a failed load).
``external-request``
    a request to anything but the local server.

Every defect is printed with its page and kind. The allow-list holds ``page kind`` pairs that are
known today (one a line, ``#`` comments); the run fails (exit 1) on any defect whose pair is not
in it, and says which allowed pairs no longer occur so that they can be removed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

KINDS = ("raw-tex", "math-error", "markdown-table", "myst-syntax", "figure-number", "output-cut",
         "console-error", "external-request")
HERE = Path(__file__).resolve().parent
DEFAULT_ALLOW = HERE / "known_defects.txt"
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}
VIEWPORT = (1280, 900)  # a laptop screen: the width at which output lines are judged cut off

# Runs in the page after load: waits for MathJax, then returns [{kind, detail}, ...].
PAGE_CHECK_JS = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) {}
  }
  const out = [];
  const add = (kind, detail) => out.push({kind: kind, detail: String(detail).slice(0, 160)});
  const root = document.querySelector('article') || document.querySelector('main') || document.body;
  if (!root) return out;  // a redirect page (index.html) with nothing to read
  const SKIP = 'script, style, pre, code, kbd, samp, textarea, mjx-container, .MathJax, math, ' +
               '.highlight, .linenos';
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const tex = /\$|\\[()\[\]]|\\[A-Za-z]{2,}/;
  const myst = /\{(prf:|cite|doc\}|ref\}|numref\}|eq\}|glue|math\}|figure\}|bibliography\})|```/;
  let node;
  while ((node = walker.nextNode())) {
    const el = node.parentElement;
    if (!el || el.closest(SKIP)) continue;
    const text = node.nodeValue;
    if (!text.trim()) continue;
    if (tex.test(text)) add('raw-tex', text.trim());
    if (myst.test(text)) add('myst-syntax', text.trim());
    for (const line of text.split('\n')) {
      if (/^\s*\|.*\S.*\|\s*$/.test(line)) add('markdown-table', line.trim());
    }
  }
  for (const el of root.querySelectorAll('mjx-merror')) {
    add('math-error', el.getAttribute('data-mjx-error') || el.textContent);
  }
  for (const el of root.querySelectorAll('[class*="highlight-{"]')) {
    add('myst-syntax', 'code block of language ' + el.className);
  }
  for (const fig of root.querySelectorAll('figure')) {
    const num = fig.querySelector('figcaption .caption-number');
    if (!num || !/^\s*Fig\.\s*\d/.test(num.textContent)) {
      const cap = fig.querySelector('figcaption');
      add('figure-number', (fig.id ? '#' + fig.id + ' ' : '') + (cap ? cap.textContent.trim() : '(no caption)'));
    }
  }
  for (const img of root.querySelectorAll('.cell_output img, .output img')) {
    if (!img.closest('figure')) add('figure-number', 'a plot shown as a bare cell output, not a numbered figure: ' + (img.getAttribute('src') || ''));
  }
  for (const pre of root.querySelectorAll('.cell_output pre, .output pre')) {
    if (pre.scrollWidth > pre.clientWidth + 1) {
      const lines = pre.textContent.split('\n');
      const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), '');
      add('output-cut', `${pre.scrollWidth}px in a ${pre.clientWidth}px box: ${longest.trim()}`);
    }
  }
  return out;
})()
"""


@dataclass(frozen=True)
class Defect:
    """One thing wrong on one page."""

    page: str
    kind: str
    detail: str

    @property
    def key(self) -> Tuple[str, str]:
        return (self.page, self.kind)


# ------------------------------------------------------------------------------------------------
# the allow-list
# ------------------------------------------------------------------------------------------------

def parse_allow_list(text: str) -> Set[Tuple[str, str]]:
    """The ``(page, kind)`` pairs of an allow-list: one ``page kind`` pair a line.

    Args:
        text: the file's text; ``#`` starts a comment, blank lines are ignored.

    Returns:
        The set of pairs.

    Raises:
        ValueError: on a line that is not two fields or names an unknown kind.

    >>> sorted(parse_allow_list("# known\\nintro.html raw-tex  # a dollar\\n\\n"))
    [('intro.html', 'raw-tex')]
    """
    pairs = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"allow-list line {n}: expected 'page kind', got {line!r}")
        if fields[1] not in KINDS:
            raise ValueError(f"allow-list line {n}: unknown kind {fields[1]!r} (one of {KINDS})")
        pairs.add((fields[0], fields[1]))
    return pairs


def judge(defects: Iterable[Defect], allowed: Set[Tuple[str, str]]
          ) -> Tuple[List[Defect], List[Defect], Set[Tuple[str, str]]]:
    """Split defects into new and known ones, and find allowed pairs that no longer occur.

    Args:
        defects: every defect found.
        allowed: the allow-list's ``(page, kind)`` pairs.

    Returns:
        ``(new, known, stale)``: the defects whose pair is not allowed, those whose pair is, and
        the allowed pairs with no defect.

    >>> d = [Defect("a.html", "raw-tex", "$x$"), Defect("b.html", "output-cut", "...")]
    >>> new, known, stale = judge(d, {("b.html", "output-cut"), ("c.html", "raw-tex")})
    >>> [x.page for x in new], [x.page for x in known], sorted(stale)
    (['a.html'], ['b.html'], [('c.html', 'raw-tex')])
    """
    defects = list(defects)
    new = [d for d in defects if d.key not in allowed]
    known = [d for d in defects if d.key in allowed]
    stale = set(allowed) - {d.key for d in defects}
    return new, known, stale


REDIRECT = re.compile(r"<meta[^>]+http-equiv=[\"']?refresh", re.IGNORECASE)


def write_allow_list(path: Path, defects: Iterable[Defect]) -> None:
    """Write the ``(page, kind)`` pairs of ``defects`` as an allow-list, keeping its header."""
    header = []
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
    pairs = sorted({d.key for d in defects})
    path.write_text("\n".join(header + [f"{p} {k}" for p, k in pairs]) + "\n")


def pages(build_dir: Path) -> List[str]:
    """Every HTML page of a Sphinx build, as paths relative to it (``chapters/x.html``).

    Redirect pages (Jupyter Book's ``index.html``) are left out: the page they lead to is checked.
    """
    found = []
    for path in sorted(build_dir.rglob("*.html")):
        rel = path.relative_to(build_dir)
        if rel.parts[0] in SKIP_DIRS or REDIRECT.search(path.read_text(errors="replace")[:4096]):
            continue
        found.append(rel.as_posix())
    return found


# ------------------------------------------------------------------------------------------------
# Chromium over the DevTools protocol
# ------------------------------------------------------------------------------------------------

def find_chromium() -> Optional[str]:
    """The Chromium executable on PATH (``$CHROMIUM`` first), or None."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the page loads are reported by the browser instead
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class DevTools:
    """A minimal DevTools-protocol client for one page target."""

    def __init__(self, ws_url: str, timeout: float):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: List[dict] = []

    def send(self, method: str, params: Optional[dict] = None, timeout: float = 30.0) -> dict:
        """Call ``method`` and return its result, keeping the events that arrive meanwhile."""
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(deadline)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float) -> bool:
        """Wait for an event ``method`` (kept events count); False on timeout."""
        deadline = time.monotonic() + timeout
        if any(e["method"] == method for e in self.events):
            return True
        while time.monotonic() < deadline:
            try:
                msg = self._recv(deadline)
            except TimeoutError:
                return False
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return True
        return False

    def drain(self, seconds: float) -> None:
        """Collect the events of the next ``seconds``."""
        self.wait_for("-none-", seconds)

    def _recv(self, deadline: float) -> dict:
        import websocket

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.ws.settimeout(remaining)
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            raise TimeoutError from None

    def close(self) -> None:
        self.ws.close()


@contextlib.contextmanager
def chromium(executable: str, timeout: float = 30.0) -> Iterator[DevTools]:
    """Start headless Chromium with the network off; yield a DevTools client on its page."""
    profile = tempfile.mkdtemp(prefix="book-chromium-")
    args = [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--disable-default-apps", "--mute-audio",
            # offline: no name resolves, and anything not loopback goes to a proxy that is not there
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
            f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
            "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}", "about:blank"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        client = DevTools(page["webSocketDebuggerUrl"], timeout)
        for domain in ("Page", "Runtime", "Log", "Network"):
            client.send(f"{domain}.enable")
        client.send("Emulation.setDeviceMetricsOverride",
                    {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1,
                     "mobile": False})
        yield client
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _event_defects(page: str, events: Sequence[dict], base: str) -> List[Defect]:
    """The console errors and non-local requests among one page's DevTools events."""
    found = []
    for e in events:
        method, p = e["method"], e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "exception")
            found.append(Defect(page, "console-error", text.splitlines()[0]))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            found.append(Defect(page, "console-error", f"console.{p['type']}: {args}"))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            if entry.get("url", "") == base + "favicon.ico":
                continue  # the browser's own request; a book has no favicon
            found.append(Defect(page, "console-error",
                                f"{entry.get('text', '')} {entry.get('url', '')}".strip()))
        elif method == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not (url.startswith(base) or url.startswith(("data:", "blob:", "about:"))):
                found.append(Defect(page, "external-request", url))
    return found


def check_page(client: DevTools, base: str, page: str, timeout: float) -> List[Defect]:
    """Load one page and return its defects."""
    # Every page is judged as a reader's first visit: no state left by the pages before it.
    client.send("Storage.clearDataForOrigin", {"origin": base.rstrip("/"), "storageTypes": "all"})
    client.events.clear()
    client.send("Page.navigate", {"url": base + page})
    if not client.wait_for("Page.loadEventFired", timeout):
        return [Defect(page, "console-error", f"page did not load within {timeout} s")]
    result = client.send("Runtime.evaluate", {"expression": PAGE_CHECK_JS, "awaitPromise": True,
                                              "returnByValue": True}, timeout=timeout)
    client.drain(0.3)  # late errors (deferred scripts)
    found = _event_defects(page, client.events, base)
    if "exceptionDetails" in result:
        found.append(Defect(page, "console-error",
                            f"the page check itself failed: {result['exceptionDetails']}"))
    else:
        for item in result.get("result", {}).get("value", []) or []:
            found.append(Defect(page, item["kind"], item["detail"]))
    return found


def check_book(build_dir: Path, executable: str, timeout: float = 60.0) -> List[Defect]:
    """Every defect of every page of the built book at ``build_dir``."""
    defects: List[Defect] = []
    with serve(build_dir) as base, chromium(executable) as client:
        for page in pages(build_dir):
            defects += check_page(client, base, page, timeout)
    return defects


def report(defects: Sequence[Defect], allowed: Set[Tuple[str, str]], out=sys.stdout) -> int:
    """Print every defect per page, marked new or known; return the exit status."""
    new, known, stale = judge(defects, allowed)
    new_keys = {d.key for d in new}
    by_page: Dict[str, List[Defect]] = {}
    for d in defects:
        by_page.setdefault(d.page, []).append(d)
    for page in sorted(by_page):
        print(f"{page}:", file=out)
        for d in by_page[page]:
            mark = "NEW  " if d.key in new_keys else "known"
            print(f"  {mark} {d.kind:16s} {d.detail}", file=out)
    if stale:
        print("no longer found (remove from the allow-list):", file=out)
        for page, kind in sorted(stale):
            print(f"  {page} {kind}", file=out)
    if new:
        print(f"browser check: {len(new)} new defect(s) on {len({d.page for d in new})} page(s); "
              "add a line 'page kind' to the allow-list only for a defect you mean to fix later:",
              file=out)
        for page, kind in sorted(new_keys):
            print(f"  {page} {kind}", file=out)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--allow", type=Path, default=DEFAULT_ALLOW,
                        help="allow-list of known 'page kind' pairs")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per page")
    parser.add_argument("--write-allow", action="store_true",
                        help="rewrite the allow-list with the (page, kind) pairs found now")
    args = parser.parse_args(argv)
    if not (args.build_dir / "index.html").exists():
        parser.error(f"{args.build_dir} is not a built book (no index.html)")
    executable = find_chromium()
    if executable is None:
        print("browser check: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    allowed = parse_allow_list(args.allow.read_text()) if args.allow.exists() else set()
    start = time.monotonic()
    defects = check_book(args.build_dir, executable, args.timeout)
    n = len(pages(args.build_dir))
    if args.write_allow:
        write_allow_list(args.allow, defects)
        allowed = parse_allow_list(args.allow.read_text())
    status = report(defects, allowed)
    print(f"browser check: {n} pages, {len(defects)} defect(s), "
          f"{time.monotonic() - start:.1f} s ({'failed' if status else 'passed'})")
    return status


if __name__ == "__main__":
    sys.exit(main())
