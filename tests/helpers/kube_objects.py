"""The Kubernetes package as the tests read it: rendered with ``kubectl kustomize``, the vendored CRD schemas,
and the metric names inside the PromQL of the ScaledObjects, alert rules and Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devtools.service_process import REPO_ROOT

KUBE_DIR = REPO_ROOT / "deploy" / "kubernetes"
CRD_DIR = KUBE_DIR / "crds"
DASHBOARD = KUBE_DIR / "dashboards" / "img-pod.json"
# Folders K3 owns, renderable on their own before (and besides) the overlays.
OWN_FOLDERS = ("base/autoscaling", "base/monitoring")
CRD_GROUPS = ("keda.sh", "monitoring.coreos.com")


def kubectl() -> str | None:
    return shutil.which("kubectl")


def overlays() -> list[str]:
    """The overlays that exist now (K1 writes them; until then only the own folders render)."""
    root = KUBE_DIR / "overlays"
    return (
        sorted(f"overlays/{p.name}" for p in root.iterdir() if (p / "kustomization.yaml").is_file())
        if root.is_dir()
        else []
    )


def render(folder: str) -> list[dict[str, Any]]:
    """Every object ``kubectl kustomize`` makes of ``folder`` (relative to deploy/kubernetes)."""
    binary = kubectl()
    assert binary is not None, "kubectl is needed to render the kustomize package"
    out = subprocess.run(
        [binary, "kustomize", str(KUBE_DIR / folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, f"kubectl kustomize {folder} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


# --- CRD schemas --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CrdVersion:
    group: str
    kind: str
    version: str
    schema: dict[str, Any]


def load_crds() -> dict[tuple[str, str, str], CrdVersion]:
    """(group, version, kind) -> the version's schema, made strict (see ``strict``)."""
    found: dict[tuple[str, str, str], CrdVersion] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            found[(group, version["name"], kind)] = CrdVersion(group, kind, version["name"], schema)
    return found


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural OpenAPI v3 schema as JSON Schema, as strict as the API server's field validation.

    The server rejects (kubectl's default strict field validation) a field its schema does not name unless
    the schema preserves unknown fields; JSON Schema allows extra properties unless told not to, so every
    object with ``properties`` gets ``additionalProperties: false`` here. ``nullable`` and
    ``x-kubernetes-int-or-string`` are OpenAPI spellings with JSON Schema equivalents.
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(sub) for sub in value]
        elif key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        elif key == "pattern":
            # Go's RE2 inline flag (one Prometheus Operator pattern is case-insensitive) is no ECMA regex:
            # without it the check is stricter than the server's, never looser.
            out[key] = value.replace("(?i)", "")
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("apiVersion", "").split("/")[0] in CRD_GROUPS]


# --- PromQL -------------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# by (...), without (...), on (...), ignoring (...), group_left (...), group_right (...): label lists.
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?")
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label names or
    parts of string literals, durations and label lists."""
    text = _STRING.sub('""', expr)
    text = _SELECTOR.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def selectors(expr: str) -> list[Selector]:
    """``name{...}`` selectors with their label matchers (those written with a metric name in front)."""
    found = []
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*(\{[^{}]*\})", expr):
        matchers = tuple((label, op, value) for label, op, value in _MATCHER.findall(match.group(2)))
        found.append(Selector(match.group(1), matchers))
    return found


def queries(objects: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every ScaledObject prometheus trigger and every alert or recording rule."""
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "ScaledObject":
            for trigger in obj["spec"]["triggers"]:
                if trigger["type"] == "prometheus":
                    yield f"{name} trigger {trigger.get('name')}", trigger["metadata"]["query"]
        elif obj["kind"] == "PrometheusRule":
            for group in obj["spec"]["groups"]:
                for rule in group["rules"]:
                    yield f"{name} {rule.get('alert') or rule.get('record')}", str(rule["expr"])


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"dashboard panel {panel['title']!r}", target["expr"]


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_queries() -> list[tuple[str, str]]:
    """Every PromQL the package ships, from the own folders rendered (the overlays patch no query)."""
    objects = [o for folder in OWN_FOLDERS for o in render(folder)]
    return [*queries(objects), *dashboard_queries(load_dashboard())]


def kube_path(relative: str) -> Path:
    return KUBE_DIR / relative
