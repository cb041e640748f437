"""Headless Chromium for the tests that check what a person sees: pages DVC writes, the
MLflow UI. Loopback only; a fresh profile per call; no background network traffic."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    """Chromium's executable; skips the test, saying how to install it, when absent."""
    for name in _NAMES:
        if found := shutil.which(name):
            return found
    pytest.skip("headless Chromium not found: `apt-get install chromium` (Debian; .ci/run "
                "installs it)")


def render(url: str, *, offline: bool = False, screenshot: Path | None = None,
           window: tuple[int, int] = (1600, 1200), budget_ms: int = 20000) -> str:
    """The page's DOM after its scripts ran for `budget_ms` of virtual time.

    Args:
        offline: every host name fails to resolve, as on a machine with no network
            (loopback addresses still work).
        screenshot: also save a PNG of the window there.
    """
    with tempfile.TemporaryDirectory(prefix="imgpipe-chromium-") as profile:
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-background-networking", "--disable-component-update",
                   "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                   f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
                   f"--virtual-time-budget={budget_ms}"]
        if offline:
            command.append("--host-resolver-rules=MAP * ~NOTFOUND")
        if screenshot is not None:
            subprocess.run([*command, f"--screenshot={screenshot}", url], check=True,
                           capture_output=True, timeout=180)
        result = subprocess.run([*command, "--dump-dom", url], check=True,
                                capture_output=True, text=True, timeout=180)
    return result.stdout


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(backend_uri: str, log: Path,
                  artifacts: Path | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over `backend_uri` (artifacts served from `artifacts`
    when given); yields its URL."""
    port = free_port()
    extra = [] if artifacts is None else ["--artifacts-destination", str(artifacts)]
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(port), "--backend-store-uri", backend_uri, "--workers", "1", *extra],
            stdout=subprocess.DEVNULL, stderr=stream)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # up to 2 minutes to start
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(log.read_text()) from None
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not start in 2 minutes")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
