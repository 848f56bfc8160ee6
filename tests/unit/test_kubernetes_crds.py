"""The KEDA and Prometheus Operator objects of deploy/kubernetes: valid against their vendored CRD schemas,
and tied to the code they describe (queues per role, concurrency, SLA), so neither side drifts alone.

Metric names against a live /metrics: tests/integration/test_kubernetes_metrics.py."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema_rs
import pytest

from services.interface.pool_set import Pools
from services.interface.settings import ENDPOINTS, InterfaceSettings
from tests.helpers.kube_objects import (
    CRD_DIR,
    DASHBOARD,
    OWN_FOLDERS,
    crd_objects,
    kubectl,
    load_crds,
    load_dashboard,
    metric_names,
    overlays,
    render,
)

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl (with kustomize) is not installed")

# Role (Deployment suffix) -> the interface pool that calls it (services/interface/pool_set.py).
ROLE_POOLS = {
    "llm": "llm",
    "selfie-feature": "selfie_feature",
    "profile": "profile",
    "chat1to1": "chat1to1",
    "shorts": "shorts",
    "scenes": "scenes",
}
SCALE_TO_ZERO = {"shorts", "scenes"}
FOLDERS = [*OWN_FOLDERS, *overlays()]
CRDS = load_crds()


def schema_errors(obj: dict[str, Any]) -> list[str]:
    group, version = obj["apiVersion"].split("/")
    crd = CRDS.get((group, version, obj["kind"]))
    if crd is None:
        return [f"no vendored CRD for {obj['apiVersion']} {obj['kind']}"]
    validator = jsonschema_rs.Draft4Validator(crd.schema, validate_formats=False)
    return [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(obj)]


def rendered(kind: str, folder: str = "base/autoscaling") -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(folder) if o["kind"] == kind}


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_operator_object_validates_against_its_vendored_crd(folder: str) -> None:
    objects = crd_objects(render(folder))
    for obj in objects:
        errors = schema_errors(obj)
        assert not errors, f"{folder}: {obj['kind']}/{obj['metadata']['name']}: {errors}"
    kinds = {o["kind"] for o in objects}
    if folder == "base/autoscaling":
        assert kinds == {"ScaledObject"} and len(objects) == len(ROLE_POOLS)
    if folder == "base/monitoring":
        assert kinds == {"PodMonitor", "PrometheusRule"}


def test_the_validator_refuses_what_the_api_server_would() -> None:
    """The strict schemas are not vacuous: a misspelt field, a wrong type, a missing required field and an
    unknown enum value each fail, in a ScaledObject and a PodMonitor taken from the package."""
    scaled = rendered("ScaledObject")["img-pod-shorts"]
    assert schema_errors(scaled) == []
    typo = copy.deepcopy(scaled)
    typo["spec"]["minReplicas"] = typo["spec"].pop("minReplicaCount")
    assert any("minReplicas" in e for e in schema_errors(typo))
    wrong_type = copy.deepcopy(scaled)
    wrong_type["spec"]["cooldownPeriod"] = "600"
    assert any("cooldownPeriod" in e for e in schema_errors(wrong_type))
    no_type = copy.deepcopy(scaled)
    del no_type["spec"]["triggers"][0]["type"]
    assert any("type" in e for e in schema_errors(no_type))
    monitor = rendered("PodMonitor", "base/monitoring")["img-pod-workers"]
    assert schema_errors(monitor) == []
    bad_auth = copy.deepcopy(monitor)
    bad_auth["spec"]["podMetricsEndpoints"][0]["authorization"]["credentials"]["secret"] = "x"
    assert schema_errors(bad_auth)
    bad_scheme = copy.deepcopy(monitor)
    bad_scheme["spec"]["podMetricsEndpoints"][0]["scheme"] = "ftp"
    assert schema_errors(bad_scheme)


def test_crds_are_listed_with_their_source() -> None:
    readme = (CRD_DIR / "README.md").read_text()
    for path in CRD_DIR.glob("*.yaml"):
        row = next((line for line in readme.splitlines() if f"`{path.name}`" in line), "")
        assert re.search(r"\| v\d+\.\d+\.\d+ \| `[0-9a-f]{40}` \|", row), f"{path.name}: no source row"


def queues_by_pool() -> dict[str, set[str]]:
    """The queues whose flow calls each pool, from the interface's own wiring (pool_set.Pools.for_queues)."""
    pools = Pools(**{f: f for f in Pools.__dataclass_fields__})  # type: ignore[arg-type]
    pools.selfie = "selfie_feature"  # type: ignore[assignment]
    served: dict[str, set[str]] = {}
    for queue, names in pools.for_queues().items():
        for name in names:
            served.setdefault(str(name), set()).add(queue)
    assert set(pools.for_queues()) == set(ENDPOINTS)
    return served


def concurrency_of(pool: str) -> int:
    field = {"llm": "llm_concurrency", "selfie_feature": "selfie_concurrency"}.get(
        pool, "per_worker_concurrency"
    )
    return int(InterfaceSettings.model_fields[field].default)


def queue_matchers(query: str) -> list[set[str]]:
    return [set(m.split("|")) for m in re.findall(r'queue=~?"([^"]*)"', query)]


def test_each_role_scales_on_the_queues_that_call_its_pool() -> None:
    scaled = rendered("ScaledObject")
    assert set(scaled) == {f"img-pod-{role}" for role in ROLE_POOLS}
    served = queues_by_pool()
    for role, pool in ROLE_POOLS.items():
        spec = scaled[f"img-pod-{role}"]["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"img-pod-{role}",
        }
        backlog = next(t for t in spec["triggers"] if t["name"].endswith("-backlog"))
        assert metric_names(backlog["metadata"]["query"]) == {"imgpod_queue_depth", "imgpod_queue_in_flight"}
        assert queue_matchers(backlog["metadata"]["query"]) == [served[pool]] * 2, role
        # One replica asked for per worker's worth of the interface's concurrent calls to it.
        assert float(backlog["metadata"]["threshold"]) == concurrency_of(pool), role
        assert spec["maxReplicaCount"] > max(spec["minReplicaCount"], 1)
        if role in SCALE_TO_ZERO:
            assert spec["minReplicaCount"] == 0
            # With no pod, admission refuses (503) instead of queueing: the refusals must wake the role.
            wake = [t for t in spec["triggers"] if "no_worker" in t["metadata"]["query"]]
            assert len(wake) == 1 and queue_matchers(wake[0]["metadata"]["query"]) == [served[pool]]
            assert float(wake[0]["metadata"]["activationThreshold"]) < 1
        else:
            assert spec["minReplicaCount"] >= 1


@pytest.mark.parametrize("overlay", overlays())
def test_every_scaled_deployment_exists_in_the_overlay(overlay: str) -> None:
    objects = render(overlay)
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            assert obj["spec"]["scaleTargetRef"]["name"] in deployments, obj["metadata"]["name"]


def test_the_sla_alert_uses_the_interface_sla() -> None:
    rule = rendered("PrometheusRule", "base/monitoring")["img-pod-alerts"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    sla_s = InterfaceSettings.model_fields["queue_sla_ms"].default / 1000
    threshold = float(alerts["ImgPodQueueWaitOverSLA"]["expr"].rsplit(">", 1)[1])
    assert threshold == sla_s
    assert f"{sla_s:g} s" in alerts["ImgPodQueueWaitOverSLA"]["annotations"]["summary"]
    # No pool that may scale to zero pages for being empty; each one has the "stuck at zero" alert instead.
    assert not {"shorts", "scenes"} & set(
        re.search(r'pool=~"([^"]*)"', alerts["ImgPodPoolNoHealthyWorker"]["expr"]).group(1).split("|")  # type: ignore[union-attr]
    )


def test_the_dashboard_ships_as_a_configmap_grafana_picks_up() -> None:
    maps = rendered("ConfigMap", "base/monitoring")
    data = maps["img-pod-dashboard"]["data"]
    assert maps["img-pod-dashboard"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(data["img-pod.json"]) == json.loads(DASHBOARD.read_text())
    targets = [t for p in load_dashboard()["panels"] for t in p.get("targets", [])]
    assert targets and all(t["expr"].strip() for t in targets)


def test_podmonitors_scrape_every_role_with_the_secret_it_accepts() -> None:
    monitors = rendered("PodMonitor", "base/monitoring")
    workers = monitors["img-pod-workers"]["spec"]
    roles = next(
        e for e in workers["selector"]["matchExpressions"] if e["key"] == "app.kubernetes.io/component"
    )
    assert set(roles["values"]) == set(ROLE_POOLS)
    keys = {
        name: m["spec"]["podMetricsEndpoints"][0]["authorization"]["credentials"]
        for name, m in monitors.items()
    }
    assert keys == {
        "img-pod-interface": {"name": "img-pod-secrets", "key": "metrics-api-key"},
        "img-pod-workers": {"name": "img-pod-secrets", "key": "internal-token"},
    }


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        '(max by (pool) (a_healthy{pool=~"x|y"}) == 0) and on (pool) label_replace('
        'sum by (queue) (increase(b_total{reason="no_worker"}[10m])) > 0, "pool", "$1", "queue", "(.*)")'
        " / clamp_min(c_count offset 5m, 1e-9) + histogram_quantile(0.95, rate(d_bucket[5m]))"
    )
    assert metric_names(expr) == {"a_healthy", "b_total", "c_count", "d_bucket"}
