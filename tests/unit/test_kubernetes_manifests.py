"""deploy/kubernetes/ and docker/: proved without a cluster or a registry.

Each overlay is rendered with the real ``kubectl kustomize``; every core object is validated against the
Kubernetes API schemas of ``K8S_VERSION`` (kubernetes-validate, offline, strict: unknown fields fail); the
CRD kinds (KEDA, Prometheus Operator) are validated by tests/unit/test_kubernetes_crds.py against their
vendored CRDs. Then the cross-checks that would otherwise drift: env vars against each service's settings
class, probe paths against each service's app, ports against scripts/lib/services.sh, stop grace against
the drain timeout, secrets only from Secrets, and the Dockerfiles against the files and requirement lists
the deploy scripts use.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from pydantic_settings import BaseSettings
from starlette.routing import Match

from devtools.service_process import SHUTDOWN_TIMEOUT_S, ServiceProcess, free_port
from shared.edge_limits import EdgeLimits
from shared.tiny_models.build import BUILDERS

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
OVERLAYS = ("local-cpu", "gpu")
# The oldest minor release still supported upstream when this was written; kubectl here is v1.32 too.
K8S_VERSION = "1.32.0"
# Objects of these API groups are custom resources: their schemas are the vendored CRDs (K3's tests).
CRD_GROUPS = ("keda.sh", "monitoring.coreos.com")
WORKERS = ("llm", "selfie-feature", "profile", "chat1to1", "shorts", "scenes")
# component label -> service name of scripts/lib/services.sh
SERVICE_OF = {"interface": "interface", "selfie-feature": "selfie_feature"} | {
    c: c for c in WORKERS if c != "selfie-feature"
}
GPU_LIMIT = "nvidia.com/gpu"
MODEL_VARS = ("_MODEL_ID", "_VLM_MODEL")

# Env vars that are not img_pod settings, each read by something named here.
NOT_SETTINGS = {
    "IMG_POD_SERVICE": "docker/entrypoint.sh: which service the container runs",
    "IMG_POD_FETCH_MODELS": "docker/entrypoint.sh: preflight + model fetch before serving",
    "HOME": "every library cache that follows the home directory (on the /tmp emptyDir)",
    "XDG_CACHE_HOME": "caches that follow the XDG layout",
    "HF_HOME": "huggingface_hub: where the model cache is",
    "HF_TOKEN": "huggingface_hub: gated models (optional Secret key)",
    "HF_HUB_OFFLINE": "huggingface_hub: no hub access (local-cpu)",
    "TRANSFORMERS_OFFLINE": "transformers: no hub access (local-cpu)",
    "TRITON_CACHE_DIR": "triton's kernel cache",
    "TORCHINDUCTOR_CACHE_DIR": "torch.compile's cache",
    "MPLCONFIGDIR": "matplotlib (imported by ultralytics)",
    "YOLO_CONFIG_DIR": "ultralytics' settings folder (shared/ultralytics_env.py)",
    "YOLO_OFFLINE": "ultralytics: no downloads",
    "YOLO_AUTOINSTALL": "ultralytics: no pip installs",
    "VLLM_CACHE_ROOT": "vLLM's compile and kernel caches",
    "REDIS_PASSWORD": "the Redis container's requirepass, expanded into its args",
}
SECRET_NAME = re.compile(r"(KEY|KEYS|TOKEN|PASSWORD|SECRET|REDIS_URL|STORAGE_URI)$")


def settings_class(component: str) -> type[BaseSettings]:
    if component == "interface":
        from services.interface.settings import InterfaceSettings

        return InterfaceSettings
    if component == "llm":
        from services.llm_service.settings import LlmSettings

        return LlmSettings
    if component == "selfie-feature":
        from services.selfie_feature_worker.settings import SelfieSettings

        return SelfieSettings
    from services.image_worker.settings import ImageSettings

    return ImageSettings


def env_prefix(cls: type[BaseSettings]) -> str:
    return str(cls.model_config.get("env_prefix", ""))


def setting_names(cls: type[BaseSettings]) -> set[str]:
    """Env var names the class reads: prefix + field name, or a field's own alias."""
    prefix = env_prefix(cls)
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        names.add((prefix + name).upper())
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                names.add(alias.upper())
    return names


@cache
def services_table(func: str, name: str) -> str:
    """One answer of scripts/lib/services.sh, the table every deploy script reads."""
    out = subprocess.run(
        ["bash", "-c", f'source scripts/lib/services.sh && {func} "$1"', "_", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays cannot be rendered here")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def workloads(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(component, pod spec) of every Deployment and StatefulSet."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            yield labels["app.kubernetes.io/component"], doc["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def by_component(docs: tuple[dict[str, Any], ...], component: str) -> dict[str, Any]:
    pods = [pod for comp, pod in workloads(docs) if comp == component]
    assert len(pods) == 1, component
    return pods[0]


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    return render(request.param)


# --- rendering and schemas ---------------------------------------------------------------------------


def test_every_core_object_validates_against_the_kubernetes_schema(docs: tuple[dict[str, Any], ...]) -> None:
    import kubernetes_validate

    core = [d for d in docs if d["apiVersion"].split("/")[0] not in CRD_GROUPS]
    errors = []
    for doc in core:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, errors
    assert len(core) >= 20  # namespace, 7 Deployments, 8 Services, StatefulSet, PDB, 2 NetworkPolicies


def test_every_object_is_named_and_labelled_for_img_pod(docs: tuple[dict[str, Any], ...]) -> None:
    for doc in docs:
        meta = doc["metadata"]
        assert meta["name"].startswith("img-pod"), meta["name"]
        assert meta.get("labels", {}).get("app.kubernetes.io/name") == "img-pod", meta["name"]
    names = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    assert names == {"img-pod-interface", *(f"img-pod-{c}" for c in WORKERS)}
    assert [d["metadata"]["name"] for d in of_kind(docs, "StatefulSet")] == ["img-pod-redis"]


# --- settings, probes, ports --------------------------------------------------------------------------


def test_every_env_var_is_a_setting_of_its_service(docs: tuple[dict[str, Any], ...]) -> None:
    for component, pod in workloads(docs):
        if component == "redis":
            continue
        cls = settings_class(component)
        known = setting_names(cls) | setting_names(EdgeLimits)
        for container in containers(pod):
            for var in container.get("env", []):
                name = var["name"]
                assert name in known or name in NOT_SETTINGS, (
                    f"{component}/{container['name']}: {name} is neither a setting of {cls.__name__} "
                    f"({env_prefix(cls)}*) nor a known non-setting variable"
                )


def test_each_pods_settings_parse(docs: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch) -> None:
    # What the pod's service would read at start: the manifest's literals, and stand-ins for the Secret keys.
    stand_in = {
        "internal-token": "k8s-test-internal-token-0123456789abcdef",
        "api-keys": "k8s-test-api-key-0123456789abcdef",
        "jobs-redis-url": "redis://:pw@img-pod-redis:6379/1",
        "rate-limit-storage-uri": "redis://:pw@img-pod-redis:6379/2",
    }
    for component, pod in workloads(docs):
        if component == "redis":
            continue
        cls = settings_class(component)
        main = pod["containers"][0]
        with monkeypatch.context() as env:
            for var in main.get("env", []):
                if "value" in var:
                    env.setenv(var["name"], var["value"])
                elif var["valueFrom"]["secretKeyRef"]["key"] in stand_in:
                    env.setenv(var["name"], stand_in[var["valueFrom"]["secretKeyRef"]["key"]])
            cls()


@cache
def app_for(component: str) -> FastAPI:
    cls = settings_class(component)
    if component == "interface":
        from services.interface.app import create_app

        app = create_app(cls())
    elif component == "llm":
        from services.llm_service.app import create_app as create_llm

        app = create_llm(cls())
    elif component == "selfie-feature":
        from services.selfie_feature_worker.app import create_app as create_selfie

        app = create_selfie(cls())
    else:
        from services.image_worker.app import create_app as create_image

        app = create_image(role=component)  # type: ignore[arg-type]
    return app


def serves_get(app: FastAPI, path: str) -> bool:
    """Whether the app's own router sends GET ``path`` to a route (FastAPI's matching, not a path list)."""
    scope = {
        "type": "http",
        "path": path,
        "method": "GET",
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


def test_every_probe_path_is_served_by_its_service(docs: tuple[dict[str, Any], ...]) -> None:
    for component, pod in workloads(docs):
        if component == "redis":
            continue
        app = app_for(component)
        for container in pod["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                path = container[probe]["httpGet"]["path"]
                assert serves_get(app, path), f"{component} {probe}: GET {path} is not a route of its app"
    assert not serves_get(app_for("interface"), "/no-such-probe")


def test_container_ports_are_the_services_ports(docs: tuple[dict[str, Any], ...]) -> None:
    for component, pod in workloads(docs):
        if component == "redis":
            continue
        ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        assert ports == {"http": int(services_table("service_port", SERVICE_OF[component]))}, component


def test_service_target_ports_name_ports_of_the_selected_pods(docs: tuple[dict[str, Any], ...]) -> None:
    pods = list(workloads(docs))
    for svc in of_kind(docs, "Service"):
        selector = svc["spec"]["selector"]
        selected = [pod for comp, pod in pods if comp == selector["app.kubernetes.io/component"]]
        assert len(selected) == 1, svc["metadata"]["name"]
        named = {p["name"]: p["containerPort"] for c in selected[0]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in named, (svc["metadata"]["name"], port)
            assert port["port"] == named[port["targetPort"]], (svc["metadata"]["name"], port)


def test_workers_have_headless_services_that_the_interface_resolves(docs: tuple[dict[str, Any], ...]) -> None:
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for component in WORKERS:
        svc = services[f"img-pod-{component}"]
        # One virtual IP would make the interface's pool see one worker.
        assert svc["spec"]["clusterIP"] == "None"
        assert [p["name"] for p in svc["spec"]["ports"]] == ["http"]
    interface = by_component(docs, "interface")["containers"][0]
    urls = {k: v for k, v in literal_env(interface).items() if k.endswith("_URLS")}
    assert set(urls) == {
        f"INTERFACE_{p}_URLS"
        for p in (
            *("LLM", "SELFIE_FEATURE_WORKER", "PROFILE_WORKER", "CHAT1TO1_WORKER"),
            *("SHORTS_WORKER", "SCENES_WORKER", "TEXT2IMG_WORKER"),
        )
    }
    for var, value in urls.items():
        for entry in value.split(","):
            match = re.fullmatch(r"dns://([a-z0-9-]+):(\d+)", entry)
            assert match, f"{var}: {entry} is not dns://<headless service>:<port>"
            svc = services[match.group(1)]
            assert svc["spec"]["clusterIP"] == "None", entry
            assert int(match.group(2)) == svc["spec"]["ports"][0]["port"], entry


def test_stop_grace_outlasts_prestop_and_drain(docs: tuple[dict[str, Any], ...]) -> None:
    for component, pod in workloads(docs):
        if component == "redis":
            continue
        cls = settings_class(component)
        main = pod["containers"][0]
        override = literal_env(main).get(f"{env_prefix(cls)}DRAIN_TIMEOUT_S")
        drain = float(override) if override else cls.model_fields["drain_timeout_s"].default
        pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        assert pod["terminationGracePeriodSeconds"] >= drain + float(pre_stop[1]), component
        # /livez keeps answering while draining, so liveness never kills a pod that finishes its requests.
        assert main["livenessProbe"]["httpGet"]["path"] == "/livez", component
        assert main["readinessProbe"]["httpGet"]["path"] == "/healthz", component


# --- secrets and pod security ---------------------------------------------------------------------------


def test_secret_looking_env_comes_only_from_secrets(docs: tuple[dict[str, Any], ...]) -> None:
    for component, pod in workloads(docs):
        for container in containers(pod):
            assert "envFrom" not in container, component
            for var in container.get("env", []):
                if SECRET_NAME.search(var["name"]):
                    ref = var.get("valueFrom", {})
                    assert set(ref) == {"secretKeyRef"}, f"{component}: {var['name']} must come from a Secret"
                    assert ref["secretKeyRef"]["name"] == "img-pod-secrets"
                elif "value" in var:
                    # No credentials inside a literal URL either.
                    assert not re.search(r"://[^/@\s]*@", var["value"]), f"{component}: {var['name']}"
    for config in of_kind(docs, "ConfigMap"):
        for key in config.get("data", {}):
            assert not SECRET_NAME.search(key.upper().replace("-", "_")), key
    # The Secret itself is created beside the package (docs), never committed in it.
    assert not of_kind(docs, "Secret")


def secret_keys(node: Any) -> Iterator[str]:
    """Every key of img-pod-secrets an object reads (env refs, a PodMonitor's credentials, ...)."""
    if isinstance(node, dict):
        if node.get("name") == "img-pod-secrets" and "key" in node:
            yield node["key"]
        for value in node.values():
            yield from secret_keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from secret_keys(value)


def test_every_secret_key_used_is_documented(docs: tuple[dict[str, Any], ...]) -> None:
    guide = (REPO / "docs" / "kubernetes.md").read_text()
    used = set(secret_keys(list(docs)))
    assert {"internal-token", "api-keys", "jobs-redis-url", "redis-password"} <= used
    for key in used:
        assert f"`{key}`" in guide, f"docs/kubernetes.md does not say how to set {key}"


def test_pods_run_non_root_with_a_read_only_root(docs: tuple[dict[str, Any], ...]) -> None:
    namespace = of_kind(docs, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for component, pod in workloads(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, component
        assert pod["securityContext"]["runAsUser"] != 0, component
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", component
        assert pod["automountServiceAccountToken"] is False, component
        mounts_tmp = any(v["name"] == "tmp" for v in pod.get("volumes", [])) or component == "redis"
        assert mounts_tmp, component
        for container in containers(pod):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, component
            assert ctx["readOnlyRootFilesystem"] is True, component
            assert ctx["capabilities"]["drop"] == ["ALL"], component


def test_network_policies_admit_only_the_interface_and_prometheus() -> None:
    docs = render("gpu")
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(docs, "NetworkPolicy")}
    workers = policies["img-pod-workers"]
    selected = next(e for e in workers["podSelector"]["matchExpressions"] if e["key"].endswith("component"))
    assert sorted(selected["values"]) == sorted(WORKERS)
    [rule] = workers["ingress"]
    peers = rule["from"]
    assert peers[0] == {"podSelector": {"matchLabels": by_component_labels("interface")}}
    assert peers[1]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert len(peers) == 2
    [redis_rule] = policies["img-pod-redis"]["ingress"]
    assert redis_rule["from"] == [{"podSelector": {"matchLabels": by_component_labels("interface")}}]


def by_component_labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "img-pod", "app.kubernetes.io/component": component}


# --- what the overlays change ----------------------------------------------------------------------------


def test_gpu_overlay_gives_each_worker_one_gpu_on_gpu_nodes() -> None:
    docs = render("gpu")
    for component in WORKERS:
        pod = by_component(docs, component)
        main = pod["containers"][0]
        assert main["resources"]["limits"][GPU_LIMIT] == 1, component
        assert pod["nodeSelector"], component
        assert any(t["key"] == GPU_LIMIT for t in pod["tolerations"]), component
        cache_volume = next(v for v in pod["volumes"] if v["name"] == "model-cache")
        assert cache_volume == {
            "name": "model-cache",
            "persistentVolumeClaim": {"claimName": "img-pod-model-cache"},
        }
        assert literal_env(main)["IMG_POD_FETCH_MODELS"] == "1"
    assert GPU_LIMIT not in str(by_component(docs, "interface"))
    # Production model ids: the settings' own defaults (DEPLOYMENT.md's table), not the tiny ones.
    for component in WORKERS:
        env = literal_env(by_component(docs, component)["containers"][0])
        assert not any(v.startswith("/models/") and "tiny" in v for v in env.values()), component


def parse_quantity_gib(value: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    for unit, factor in units.items():
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value) / 2**30


def test_gpu_worker_memory_holds_the_preflight_budget() -> None:
    # Weights are read into host memory on their way to the GPU: each pod's memory request is at least the
    # role's GPU peak from the preflight (the numbers of `python -m scripts.preflight --table`).
    from scripts.preflight import Sizer

    sizer = Sizer({})
    docs = render("gpu")
    for component in WORKERS:
        peak = sizer.report(SERVICE_OF[component], 80.0).peak_gib
        resources = by_component(docs, component)["containers"][0]["resources"]
        request = parse_quantity_gib(resources["requests"]["memory"])
        assert request >= peak, f"{component}: {request:.1f} GiB requested, preflight peak {peak:.1f} GiB"
        assert parse_quantity_gib(resources["limits"]["memory"]) >= request


def test_local_cpu_overlay_runs_tiny_models_without_gpus() -> None:
    docs = render("local-cpu")
    assert GPU_LIMIT not in yaml.safe_dump(list(docs))
    assert by_component(docs, "interface")
    deployments = {d["metadata"]["name"]: d["spec"]["replicas"] for d in of_kind(docs, "Deployment")}
    assert deployments.pop("img-pod-interface") >= 2  # replicas share Redis in every overlay
    assert set(deployments.values()) == {1}
    tiny = {sub for sub, _ in BUILDERS.values()}
    for component in WORKERS:
        pod = by_component(docs, component)
        [init] = pod["initContainers"]
        assert init["command"][:4] == ["python", "-m", "shared.tiny_models", "--out"]
        out = init["command"][4]
        assert {"name": "model-cache", "mountPath": out} in init["volumeMounts"]
        env = literal_env(pod["containers"][0])
        models = {k: v for k, v in env.items() if k.endswith(MODEL_VARS)}
        assert models, component
        for var, value in models.items():
            # A folder the builder writes there (shared/tiny_models/build.py BUILDERS).
            assert value.removeprefix(out + "/") in tiny, f"{component}: {var}={value}"
    assert not of_kind(docs, "ScaledObject")


# --- images ---------------------------------------------------------------------------------------------


def dockerfile(name: str) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    text = (REPO / "docker" / name).read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [ins.strip() for ins in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if ins.strip()]


def pip_requirement_files(instructions: list[str]) -> list[str]:
    return [f for ins in instructions if ins.startswith("RUN") for f in re.findall(r"-r (\S+)", ins)]


@pytest.mark.parametrize("name", ["Dockerfile.interface", "Dockerfile.gpu"])
def test_dockerfile_copies_only_what_exists_and_runs_the_entrypoint(name: str) -> None:
    instructions = dockerfile(name)
    base = [ins.split()[1] for ins in instructions if ins.startswith("FROM")]
    assert base and all(re.search(r":\d+\.\d+\.\d+", b) for b in base), base  # pinned, never :latest
    for ins in instructions:
        if ins.startswith("COPY"):
            *sources, _dest = ins.split()[1:]
            for src in sources:
                assert (REPO / src).exists(), f"{name}: COPY source {src} does not exist"
    pins = [ins for ins in instructions if "apt-get install" in ins]
    assert all("tini=" in p for p in pins), name
    [user] = [ins.split()[1] for ins in instructions if ins.startswith("USER")]
    assert user.isdigit() and int(user) != 0
    assert int(user) == by_component(render("gpu"), "interface")["securityContext"]["runAsUser"]
    [entry] = [ins for ins in instructions if ins.startswith("ENTRYPOINT")]
    script = yaml.safe_load(entry.removeprefix("ENTRYPOINT"))[-1].removeprefix("/app/")
    assert (REPO / script).is_file() and (REPO / script).stat().st_mode & 0o111, script
    # Every file pip installs from is copied first.
    copied = {src for ins in instructions if ins.startswith("COPY") for src in ins.split()[1:-1]}
    assert set(pip_requirement_files(instructions)) <= copied


def test_dockerfiles_install_the_requirements_the_deploy_scripts_use() -> None:
    interface = pip_requirement_files(dockerfile("Dockerfile.interface"))
    assert interface == services_table("service_requirements", "interface").split()
    gpu = set(pip_requirement_files(dockerfile("Dockerfile.gpu")))
    wanted = {
        f
        for svc in ("llm", "selfie_feature", "profile")
        for f in services_table("service_requirements", svc).split()
    }
    # Plus ultralytics --no-deps (deploy_service.sh) and vLLM's own venv (start_vllm.sh).
    assert gpu == wanted | {"requirements.nodeps.txt", "requirements.llm.txt"}
    assert "--no-deps -r requirements.nodeps.txt" in " ".join(dockerfile("Dockerfile.gpu"))


def test_entrypoint_is_shellcheck_clean_and_knows_every_service() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    out = subprocess.run(
        [str(shellcheck), "-x", "docker/entrypoint.sh"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for service in SERVICE_OF.values():
        # The module the entrypoint would exec for each role imports and has the factory.
        module = services_table("service_module", service)
        assert __import__(module, fromlist=["create_app"]).create_app


class EntrypointProcess(ServiceProcess):
    """The service started the way the images start it: docker/entrypoint.sh with IMG_POD_SERVICE."""

    def command(self) -> list[str]:
        return ["bash", "docker/entrypoint.sh"]


def test_entrypoint_starts_the_service_with_the_probes_the_manifests_use() -> None:
    port = free_port()
    env = {
        "IMG_POD_SERVICE": "interface",
        "PORT": str(port),
        # `python` in the entrypoint is the image's venv; here, this interpreter's.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    pod = by_component(render("local-cpu"), "interface")["containers"][0]
    with EntrypointProcess("services.interface.main", env=env, port=port) as svc:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            answer = httpx.get(svc.url + pod[probe]["httpGet"]["path"], timeout=5)
            assert answer.status_code == 200, (probe, answer.text)
        # exec: SIGTERM reaches the service itself, which drains (nothing in flight: it exits at once).
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGTERM)
        # uvicorn ends a clean shutdown by re-raising the signal it caught: -SIGTERM, after the drain.
        assert svc.proc.wait(SHUTDOWN_TIMEOUT_S) in (0, -signal.SIGTERM), svc.logs()[-2000:]
        assert '"msg": "drained"' in svc.logs()
