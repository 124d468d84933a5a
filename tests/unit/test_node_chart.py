"""The pure half of tests/node/chart.py: image values, names and the examples/node manifests it rewrites."""

from __future__ import annotations

import pytest

from coursegrader_operator.spec import OperatorDefaults, parse_spec
from tests.node import chart

IMAGES = {name: f"localhost/xqueue-k8s/{name}:abc123" for name in
          ("xqueue-server", "xqueue-operator", "xqueue-grader", "xqueue-grader-demo", "postgresql")}


def test_image_references_become_repository_and_tag() -> None:
    assert chart.split_ref("localhost/xqueue-k8s/xqueue-server:abc") == ("localhost/xqueue-k8s/xqueue-server", "abc")
    assert chart.split_ref("registry:5000/x/y:1.0") == ("registry:5000/x/y", "1.0")
    with pytest.raises(ValueError):
        chart.split_ref("registry:5000/x/y")
    args = chart.helm_image_args(IMAGES)
    assert "server.image.repository=localhost/xqueue-k8s/xqueue-server" in args
    assert "postgresql.image.tag=abc123" in args
    assert "grader.image.repository=localhost/xqueue-k8s/xqueue-grader" in args


def test_names_follow_the_chart() -> None:
    assert chart.fullname("xq-1a2b3c") == "xq-1a2b3c-xqueue"
    assert chart.fullname("xqueue") == "xqueue"  # a release named like the chart is not doubled
    assert chart.server_url("xqueue", "demo") == "http://xqueue-server.demo.svc:18040"


def test_lms_manifests_point_at_the_release_and_at_themselves() -> None:
    service, deployment = chart.lms_manifests("ns1", "xq-1", IMAGES["xqueue-server"], "q1")
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"] == "ns1"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGES["xqueue-server"] and container["imagePullPolicy"] == "Never"
    assert "--server-url=http://xq-1-xqueue-server.ns1.svc:18040" in container["args"]
    assert "--advertise-url=http://lms.ns1.svc:8000" in container["args"] and "--queue=q1" in container["args"]
    # Pod Security "restricted".
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_coursegrader_example_is_a_valid_spec_and_overrides_merge() -> None:
    cg = chart.coursegrader_manifest("ns1", IMAGES["xqueue-grader-demo"], queue="q1",
                                     overrides={"scaling": {"maxReplicas": 5}, "slots": 1})
    assert cg["metadata"]["namespace"] == "ns1" and cg["spec"]["queue"] == "q1"
    assert cg["spec"]["scaling"] == {"minReplicas": 1, "maxReplicas": 5} and cg["spec"]["slots"] == 1
    # The chart's operator supplies the server URL (spec.server.url unset: its own Service).
    spec = parse_spec(cg["spec"], OperatorDefaults(xqueue_url="http://xq-1-xqueue-server.ns1.svc:18040"))
    assert spec.image == IMAGES["xqueue-grader-demo"] and spec.repo.url == "/opt/xqueue/demo-course"


def test_shared_files_volume_is_bound_by_name() -> None:
    pv, pvc = chart.shared_files_manifests("ns1", "xqueue-files-ns1", "/tmp/files")
    assert pv["spec"]["hostPath"]["path"] == "/tmp/files" and pv["metadata"]["name"] == "xqueue-files-ns1"
    assert pvc["spec"]["volumeName"] == "xqueue-files-ns1" and pvc["metadata"]["namespace"] == "ns1"
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert chart.percentile(values, 0.5) == 50 and chart.percentile(values, 0.95) == 95
    assert chart.percentile([3.0], 0.95) == 3.0
    with pytest.raises(ValueError):
        chart.percentile([], 0.5)
