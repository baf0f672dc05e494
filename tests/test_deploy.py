"""deploy/k8s/ and the Dockerfiles against Kubernetes' schemas and against the code.

Offline: the Kubernetes JSON schemas ship inside the pinned `kubernetes-validate`
package. Its schemas do not cover KServe's InferenceService, so that file is
checked against tests/schemas/kserve-inferenceservice.schema.json (the fields
it uses, written from KServe's CRD) and its pod fields against Kubernetes'
PodSpec. Then, consistency: every environment variable a manifest sets is a
documented setting, probe paths answer 200 on a real app, ports agree, and
the termination grace period covers the server's drain.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

import predictor.config
from predictor.config import Settings
from predictor.http.app import create_app
from predictor.runtime.model import Detector
from tests.conftest import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
KSERVE_FILE = K8S / "kserve-inferenceservice.yaml"
KSERVE_SCHEMA = REPO_ROOT / "tests" / "schemas" / "kserve-inferenceservice.schema.json"
KUSTOMIZATION = K8S / "kustomization.yaml"
# The oldest Kubernetes release the manifests claim, and the newest the pinned
# kubernetes-validate knows.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())

# Variables KServe itself reads from a custom predictor container.
KSERVE_VARIABLES = {"PROTOCOL"}
# What the manifests assume when SHUTDOWN_GRACE_S is neither set nor in Settings yet.
ASSUMED_SHUTDOWN_GRACE_S = 30.0

Manifest = dict[str, Any]
ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def load(path: Path) -> list[Manifest]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert all(isinstance(doc, dict) for doc in docs), path
    return cast(list[Manifest], docs)


def kubernetes_files() -> list[Path]:
    """The manifests of Kubernetes' own kinds: all but the kustomization and KServe."""
    return sorted(p for p in K8S.glob("*.yaml") if p not in (KSERVE_FILE, KUSTOMIZATION))


def one(kind: str, path: Path | None = None) -> Manifest:
    """The one resource of ``kind`` (in ``path``, else in the kustomization's files)."""
    files = [path] if path else [K8S / name for name in load(KUSTOMIZATION)[0]["resources"]]
    found = [doc for f in files for doc in load(f) if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} resources in {files}"
    return found[0]


def containers(resource: Manifest) -> list[Manifest]:
    if resource["kind"] == "InferenceService":
        return cast(list[Manifest], resource["spec"]["predictor"]["containers"])
    return cast(list[Manifest], resource["spec"]["template"]["spec"]["containers"])


def pod_spec(resource: Manifest) -> Manifest:
    if resource["kind"] == "InferenceService":
        return cast(Manifest, resource["spec"]["predictor"])
    return cast(Manifest, resource["spec"]["template"]["spec"])


def env_of(container: Manifest) -> dict[str, str]:
    env = container.get("env", [])
    assert all("value" in item for item in env), "only literal values are used here"
    return {item["name"]: item["value"] for item in env}


def documented_settings() -> set[str]:
    """The variables of predictor/config.py's documented table, each read in its code."""
    doc = predictor.config.__doc__ or ""
    names = set(re.findall(r"^([A-Z][A-Z0-9_]{2,})\s{2,}", doc, flags=re.MULTILINE))
    source = Path(predictor.config.__file__).read_text(encoding="utf-8")
    assert {"REST_PORT", "MODEL_CONTEXT_GPU"} <= names, "the table was not found"
    unread = sorted(name for name in names if f'"{name}"' not in source)
    assert not unread, f"documented but never read: {unread}"
    return names


def shutdown_grace_s(env: dict[str, str]) -> float:
    """SHUTDOWN_GRACE_S as the server will see it: the manifest's, else the default."""
    if "SHUTDOWN_GRACE_S" in env:
        return float(env["SHUTDOWN_GRACE_S"])
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    if "shutdown_grace_s" in fields:
        return float(cast(float, fields["shutdown_grace_s"].default))
    return ASSUMED_SHUTDOWN_GRACE_S


def prestop_sleep_s(container: Manifest) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if not command:
        return 0.0
    assert command[0] == "sleep" and len(command) == 2, command
    return float(command[1])


def workloads() -> Iterator[Manifest]:
    yield one("Deployment")
    yield one("InferenceService", KSERVE_FILE)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", kubernetes_files(), ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes_strictly(path: Path, version: str) -> None:
    for resource in load(path):
        kubernetes_validate.validate(resource, version, strict=True)


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The validator is not a rubber stamp (its command line only warns on unknown kinds)."""
    deployment = one("Deployment")
    broken = json.loads(json.dumps(deployment))
    pod_spec(broken)["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_the_kubernetes_manifests() -> None:
    kustomization = load(KUSTOMIZATION)[0]
    listed = [K8S / name for name in kustomization["resources"]]
    assert all(p.is_file() for p in listed), listed
    # The alternative HPA is the only file left out, and it replaces hpa.yaml.
    assert set(kubernetes_files()) - set(listed) == {K8S / "hpa-queue-depth.yaml"}
    assert (
        load(K8S / "hpa-queue-depth.yaml")[0]["metadata"]
        == one("HorizontalPodAutoscaler")["metadata"]
    )
    images = {image["name"] for image in kustomization["images"]}
    assert images == {c["image"].split(":")[0] for c in containers(one("Deployment"))}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kserve_inference_service_matches_its_schema_and_podspec(version: str) -> None:
    service = one("InferenceService", KSERVE_FILE)
    schema = json.loads(KSERVE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(service, schema, cls=jsonschema.Draft202012Validator)
    predictor_spec = service["spec"]["predictor"]
    assert predictor_spec["minReplicas"] <= predictor_spec["maxReplicas"]
    # KServe's predictor inlines a PodSpec: those fields go to Kubernetes' schema.
    extension = {
        "minReplicas",
        "maxReplicas",
        "scaleMetric",
        "scaleMetricType",
        "scaleTarget",
        "deploymentStrategy",
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": service["metadata"]["name"]},
        "spec": {k: v for k, v in predictor_spec.items() if k not in extension},
    }
    kubernetes_validate.validate(pod, version, strict=True)


def test_kserve_example_speaks_v2_on_its_default_container() -> None:
    service = one("InferenceService", KSERVE_FILE)
    (container,) = containers(service)
    assert container["name"] == "kserve-container"  # the container KServe routes to
    assert env_of(container)["PROTOCOL"] == "v2"
    # The name KServe's clients put in /v2/models/NAME/infer is the server's MODEL_NAME.
    settings = Settings.from_env(environ={"MODEL_NAME": env_of(container)["MODEL_NAME"]})
    assert settings.served_model_name == env_of(container)["MODEL_NAME"]
    probes = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    assert probes == {"/v2/health/ready", "/v2/health/live"}


# ------------------------------------------------------------------ manifests vs code


@pytest.mark.parametrize("resource", list(workloads()), ids=lambda r: r["kind"])
def test_environment_variables_are_settings_with_valid_values(resource: Manifest) -> None:
    documented = documented_settings()
    own = KSERVE_VARIABLES if resource["kind"] == "InferenceService" else set()
    for container in containers(resource):
        env = env_of(container)
        unknown = sorted(set(env) - documented - own)
        assert not unknown, f"not settings of the server: {unknown}"
        # The values parse: the server would start with them.
        known = {name: value for name, value in env.items() if name in documented}
        settings = Settings.from_env(environ=known)
        gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
        assert len(settings.devices.gpus) == int(gpus), "one model replica per GPU of the pod"
        assert settings.preprocess_workers <= float(container["resources"]["requests"]["cpu"])


@pytest.mark.parametrize("resource", list(workloads()), ids=lambda r: r["kind"])
def test_ports_agree(resource: Manifest) -> None:
    exposed = {
        int(args.split("/")[0])
        for word, args in final_stage(REPO_ROOT / "Dockerfile.runtime")
        if word == "EXPOSE"
    }
    for container in containers(resource):
        port = Settings.from_env(environ={"REST_PORT": env_of(container)["REST_PORT"]}).port
        declared = {p.get("name"): p["containerPort"] for p in container["ports"]}
        assert list(declared.values()) == [port] and exposed == {port}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe_port = container[probe]["httpGet"]["port"]
            assert declared.get(probe_port, probe_port) == port, probe
    if resource["kind"] == "Deployment":
        annotations = resource["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == port
        assert annotations["prometheus.io/path"] == "/metrics"
        (service_port,) = one("Service")["spec"]["ports"]
        assert declared[service_port["targetPort"]] == port


async def test_probe_paths_answer_200(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await aiohttp_client(create_app(small_settings, detectors))
    for resource in workloads():
        for container in containers(resource):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                path = container[probe]["httpGet"]["path"]
                async with client.get(path) as response:
                    assert response.status == 200, f"{resource['kind']} {probe} {path}"
    # Liveness must not depend on the model: /health, not /ready.
    deployment_probes = containers(one("Deployment"))[0]
    assert deployment_probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert deployment_probes["readinessProbe"]["httpGet"]["path"] == "/ready"


@pytest.mark.parametrize("resource", list(workloads()), ids=lambda r: r["kind"])
def test_termination_grace_covers_prestop_and_drain(resource: Manifest) -> None:
    grace = pod_spec(resource)["terminationGracePeriodSeconds"]
    for container in containers(resource):
        needed = prestop_sleep_s(container) + shutdown_grace_s(env_of(container))
        assert grace >= needed + 5, f"{grace} s leaves no margin over {needed} s"


def test_rollout_keeps_capacity_and_selectors_agree() -> None:
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    kserve = one("InferenceService", KSERVE_FILE)["spec"]["predictor"]
    assert kserve["deploymentStrategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for kind in ("Service", "PodDisruptionBudget"):
        spec = one(kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= pod_labels.items(), kind
    for path in (K8S / "hpa.yaml", K8S / "hpa-queue-depth.yaml"):
        target = one("HorizontalPodAutoscaler", path)["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("resource", list(workloads()), ids=lambda r: r["kind"])
def test_pods_run_as_the_image_user(resource: Manifest) -> None:
    (user,) = [
        args for word, args in final_stage(REPO_ROOT / "Dockerfile.runtime") if word == "USER"
    ]
    uid, gid = (int(part) for part in user.split(":"))
    context = pod_spec(resource)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)


# ------------------------------------------------------------------ the image recipe


def test_the_image_check_runs_with_the_image_environment() -> None:
    """docker/check-install.sh gives the entrypoint every variable the image's ENV sets."""
    names = set()
    for word, args in final_stage(REPO_ROOT / "Dockerfile.runtime"):
        if word == "ENV":
            names |= {item.split("=", 1)[0] for item in shlex.split(args)}
    script = (REPO_ROOT / "docker" / "check-install.sh").read_text(encoding="utf-8")
    block = re.search(r"^image_env=\((.*?)^\)", script, flags=re.MULTILINE | re.DOTALL)
    assert block, "image_env=( ... ) not found"
    given = set(re.findall(r"^\s+([A-Z_]+)=", block[1], flags=re.MULTILINE))
    assert names and names <= given, f"missing in check-install.sh: {sorted(names - given)}"


def test_the_runtime_image_is_checked_by_the_servers_own_healthcheck() -> None:
    stage = final_stage(REPO_ROOT / "Dockerfile.runtime")
    (healthcheck,) = [args for word, args in stage if word == "HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    # `predictor healthcheck`: GET /health on REST_PORT, from the image's virtualenv.
    venv = next(
        item.split("=", 1)[1]
        for word, args in stage
        if word == "ENV"
        for item in shlex.split(args)
        if item.startswith("PREDICTOR_VENV=")
    )
    assert command == [f"{venv}/bin/predictor", "healthcheck"]
    (entrypoint,) = [args for word, args in stage if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/usr/local/bin/entrypoint.sh"]
    copied = " ".join(args for word, args in stage if word == "COPY")
    assert "docker/entrypoint.sh" in copied and "/dist/models" in copied
