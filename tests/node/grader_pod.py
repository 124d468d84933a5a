"""Grader pods exactly as the operator renders them, for tests that run things inside a real pod.

The manifests come from the operator's own pure builders (coursegrader_operator.resources), so a
test pod has the grader Deployment's security settings, volumes and resources by construction, not
by a copy that could drift. Without an operator running, the objects carry no ownerReferences (the
garbage collector would delete objects whose owner does not exist).
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from coursegrader_operator.config import OperatorConfig
from coursegrader_operator.resources import Owner, build_objects
from coursegrader_operator.spec import parse_spec

# The example course inside the xqueue-grader-demo image (grader_image/Dockerfile, target demo).
DEMO_COURSE = "/opt/xqueue/demo-course"


def coursegrader_spec(image: str, *, queue: str, server_url: str, secret: str,
                      **extra: Any) -> dict[str, Any]:
    """A CourseGrader `.spec` for the demo image with small resources (one node with 2 CPUs)."""
    spec: dict[str, Any] = {
        "queue": queue,
        "server": {"url": server_url, "credentialsSecretRef": {"name": secret}},
        "repo": {"url": DEMO_COURSE},
        "image": image,
        "imagePullPolicy": "Never",
        "slots": 2,
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "768Mi"}},
    }
    spec.update(extra)
    return spec


def operator_objects(name: str, namespace: str, spec: dict[str, Any], *, replicas: int = 1,
                     config: OperatorConfig | None = None) -> dict[str, dict[str, Any]]:
    """What the operator would apply for this CourseGrader, keyed by kind, ready to `kubectl apply`."""
    objects = build_objects(Owner(name=name, namespace=namespace, uid=""), parse_spec(spec), replicas,
                            config or OperatorConfig())
    for body in objects.values():
        body["metadata"].pop("ownerReferences", None)
    return objects


def credentials_secret(name: str, namespace: str, username: str, password: str) -> dict[str, Any]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/basic-auth", "data": {"username": b64(username), "password": b64(password)}}


def idle_pod(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """A bare Pod with the grader Deployment's pod spec whose grader container only waits.

    Same image, security contexts (the course's own uid included), resources and volumes; no probes,
    no daemon, and no fetch-course init container (what runs here brings its own files).
    """
    template = copy.deepcopy(deployment["spec"]["template"])
    spec = template["spec"]
    container = spec["containers"][0]
    spec.pop("initContainers", None)
    for key in ("startupProbe", "livenessProbe", "readinessProbe", "envFrom", "env", "ports"):
        container.pop(key, None)
    container["env"] = [{"name": "HOME", "value": "/tmp"}]
    # The daemon's place is taken by a process that waits (tini stays PID 1 as in the image).
    container["command"] = ["/usr/bin/tini", "--", "sleep", "3600"]
    container.pop("args", None)
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "credentials"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "credentials"]
    spec["terminationGracePeriodSeconds"] = 1
    labels = dict(template["metadata"].get("labels") or {})
    # Not one of the Deployment's pods: keep its selector labels off.
    labels = {k: v for k, v in labels.items() if not k.startswith("app.kubernetes.io/instance")}
    labels["app.kubernetes.io/instance"] = name
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": deployment["metadata"]["namespace"], "labels": labels},
            "spec": {**spec, "restartPolicy": "Never"}}
