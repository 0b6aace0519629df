"""The ``voxserve`` command as a shell user meets it: run as a real process each time.

``--version``, a bare ``voxserve``, plain-text help, and ``voxserve models list --json
| head``: the reader goes away after a few bytes and the command ends quietly.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from server.__main__ import BROKEN_PIPE_STATUS
from tests.patience import PATIENCE_S

ROOT = Path(__file__).resolve().parents[2]
PIPE_BYTES = 4096
"""The pipe's capacity in the broken-pipe test: one page, the least Linux allows."""


def environment(cache: Path) -> dict[str, str]:
    """This environment with no voxserve settings but a private model cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXSERVE_")}
    return {**env, "VOXSERVE_MODEL_CACHE_DIR": str(cache)}


def voxserve(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=environment(cache),
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
        check=False,
    )


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    result = voxserve("--version", cache=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"voxserve {version('voxserve')}\n",
        "",
    )


@pytest.mark.parametrize(
    ("args", "lists"),
    [((), ("serve", "models", "--version")), (("models",), ("list", "pull"))],
    ids=["voxserve", "voxserve-models"],
)
def test_a_command_group_alone_prints_its_help_and_exits_0(
    tmp_path: Path, args: tuple[str, ...], lists: tuple[str, ...]
) -> None:
    result = voxserve(*args, cache=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: voxserve") and result.stderr == ""
    assert all(word in result.stdout for word in lists)
    assert "required" not in result.stdout


def test_the_help_is_plain_text(tmp_path: Path) -> None:
    result = voxserve("--help", cache=tmp_path)
    assert result.returncode == 0
    assert "OpenAI-compatible" in result.stdout
    assert "``" not in result.stdout and ":class:" not in result.stdout


def test_a_reader_that_goes_away_ends_the_listing_quietly(tmp_path: Path) -> None:
    """``voxserve models list --json | head -c 100``, with a pipe smaller than the output.

    The listing (about 13 kB) cannot all fit in a one-page pipe, so whatever the timing
    the command is still writing when the reader closes its end: it must meet the
    broken pipe, every time, and end with 141 and nothing on stderr.
    """
    complete = voxserve("models", "list", "--json", cache=tmp_path)
    assert complete.returncode == 0 and len(complete.stdout) > 2 * PIPE_BYTES
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    with subprocess.Popen(
        [sys.executable, "-m", "server", "models", "list", "--json"],
        cwd=ROOT,
        env=environment(tmp_path),
        stdout=write_end,
        stderr=subprocess.PIPE,
    ) as process:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            assert reader.read(100) == complete.stdout.encode()[:100]
        _, stderr = process.communicate(timeout=PATIENCE_S)
    assert b"Traceback" not in stderr and b"BrokenPipeError" not in stderr, stderr.decode()
    assert stderr == b""
    assert process.returncode == BROKEN_PIPE_STATUS
