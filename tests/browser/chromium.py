"""Find the Chromium the browser tests drive, installing Debian's when a machine has none.

Playwright normally runs browsers it downloads itself (``playwright install``). That
download is not possible on the machines this project is built and tested on: they
reach package registries and nothing else. Debian's ``chromium`` package is a real,
current Chromium, and Playwright's driver (inside the ``playwright`` wheel) drives it
through ``executable_path``. CI machines start as fresh Debian boxes with only Python
and pip, so the suite installs the package itself when it is missing and it may (root,
``apt-get``); anywhere else it skips with the command that would install it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

PACKAGES = ("chromium", "chromium-driver")
"""Debian's browser and its WebDriver (for Selenium users; Playwright needs only the first)."""
SYSTEM_PATH = "/usr/bin/chromium"
ENV = "VOXSERVE_CHROMIUM"
INSTALL_HINT = (
    "the browser tests need Chromium: as root on Debian or Ubuntu run "
    "`apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver`, "
    f"or point {ENV} at a Chromium or Chrome binary"
)
LOCK = Path(tempfile.gettempdir()) / "voxserve-chromium-install.lock"


def installed() -> str | None:
    """The system Chromium's path, or ``None`` when there is none."""
    found = shutil.which("chromium")
    if found:
        return found
    return SYSTEM_PATH if os.access(SYSTEM_PATH, os.X_OK) else None


def find_chromium() -> str:
    """The Chromium binary to launch: ``$VOXSERVE_CHROMIUM``, else the system one.

    Installs Debian's package when it is missing and this process may (root, with
    ``apt-get``), under a file lock so that parallel test runs install it once; otherwise
    the calling test is skipped with the command that would install it.
    """
    chosen = os.environ.get(ENV)
    if chosen:
        if not os.access(chosen, os.X_OK):
            pytest.fail(f"{ENV}={chosen} is not an executable file")
        return chosen
    found = installed()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip(f"no Chromium here and no way to install it ({_why_not(apt)}): {INSTALL_HINT}")
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing it right now
        found = installed()
        if found is None:
            _apt_install(apt)
            found = installed()
    if found is None:
        pytest.fail(f"apt-get installed {' '.join(PACKAGES)} but there is still no chromium")
    return found


def _why_not(apt: str | None) -> str:
    return "no apt-get" if apt is None else "not root"


def _apt_install(apt: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = (
        [apt, "update"],
        # Recommends would bring a desktop's worth (notification daemon, printing, upower).
        [apt, "install", "-y", "--no-install-recommends", *PACKAGES],
    )
    for command in commands:
        log.warning("installing Chromium for the browser tests: %s", " ".join(command))
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stdout[-2000:]}"
                f"\n{result.stderr[-2000:]}\n{INSTALL_HINT}"
            )
