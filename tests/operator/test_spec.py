"""The CourseGrader spec parser and the CRD's schema agree and reject what they should."""

from __future__ import annotations

import filecmp
import pathlib
from typing import Any

import pytest
import yaml

from coursegrader_operator import constants as C
from coursegrader_operator.spec import (
    BOUNDS,
    DEFAULTS,
    OperatorDefaults,
    SpecError,
    parse_spec,
    validate_name,
)

CRD_PATH = pathlib.Path(__file__).resolve().parents[2] / "crds" / f"{C.PLURAL}.{C.GROUP}.yaml"


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def spec_schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def problems(raw: dict[str, Any], defaults: OperatorDefaults | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, defaults or OperatorDefaults())
    return info.value.problems


def test_minimal_spec_gets_every_default(raw_spec: dict[str, Any]) -> None:
    spec = parse_spec(raw_spec)
    assert spec.slots == 2
    assert spec.drain_seconds == 60
    assert spec.sandbox.wall_seconds == 10 and spec.sandbox.memory_mb == 256
    assert spec.scaling.min_replicas == 1 and spec.scaling.max_replicas == 10
    assert spec.scaling.scale_down_window == 120 and spec.scaling.scale_up_window == 0
    assert spec.scaling.enabled and not spec.scaling.allow_scale_to_zero
    assert spec.server.username_key == "username" and spec.server.password_key == "password"
    assert spec.network_policy.enabled
    assert spec.server.port == 18040


def test_crd_defaults_match_the_parser_defaults() -> None:
    props = spec_schema()["properties"]
    for section in ("sandbox", "scaling", "storage", "networkPolicy"):
        crd_defaults = {k: v["default"] for k, v in props[section]["properties"].items() if "default" in v}
        assert crd_defaults == DEFAULTS[section], section
        assert props[section]["default"] == {}, f"{section} needs default: {{}} so nested defaults apply"
    for key in ("slots", "drainSeconds", "imagePullPolicy"):
        assert props[key]["default"] == DEFAULTS[key]
    ref = props["server"]["properties"]["credentialsSecretRef"]["properties"]
    assert {k: ref[k]["default"] for k in ("usernameKey", "passwordKey")} == \
        DEFAULTS["server"]["credentialsSecretRef"]


def test_crd_bounds_match_the_parser_bounds() -> None:
    props = spec_schema()["properties"]
    for path, (lo, hi) in BOUNDS.items():
        node = props
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]["properties"]
        assert (node[leaf]["minimum"], node[leaf]["maximum"]) == (lo, hi), path


def test_chart_ships_the_same_crd_as_crds_dir() -> None:
    chart_copy = CRD_PATH.parents[1] / "charts" / "xqueue" / "crds" / CRD_PATH.name
    assert filecmp.cmp(CRD_PATH, chart_copy, shallow=False), \
        "charts/xqueue/crds/ must be a copy of crds/ (cp crds/*.yaml charts/xqueue/crds/)"


def test_crd_has_status_subresource_short_name_and_printer_columns() -> None:
    doc = crd()
    assert doc["spec"]["names"]["shortNames"] == ["cg"]
    assert not doc["spec"]["group"].endswith(".k8s.io") and doc["spec"]["group"] == C.GROUP
    (version,) = doc["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Queue"] == ".spec.queue"
    assert columns["Ready"] == ".status.ready"
    assert columns["Queued"] == ".status.queueLength"
    assert columns["Phase"] == ".status.phase"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_crd_carries_cel_rules_for_cross_field_checks() -> None:
    props = spec_schema()["properties"]
    rules = [r["rule"] for r in props["scaling"]["x-kubernetes-validations"]]
    assert any("self.minReplicas <= self.maxReplicas" in r for r in rules)
    assert any("allowScaleToZero" in r for r in rules)
    assert any("credentialsSecretRef" in r["rule"] for r in props["server"]["x-kubernetes-validations"])


def test_min_above_max_is_rejected(raw_spec: dict[str, Any]) -> None:
    raw_spec["scaling"] = {"minReplicas": 5, "maxReplicas": 2}
    assert any("must not exceed maxReplicas" in p for p in problems(raw_spec))


def test_zero_min_replicas_needs_scale_to_zero(raw_spec: dict[str, Any]) -> None:
    raw_spec["scaling"] = {"minReplicas": 0}
    assert any("allowScaleToZero" in p for p in problems(raw_spec))
    raw_spec["scaling"]["allowScaleToZero"] = True
    assert parse_spec(raw_spec).scaling.min_replicas == 0


def test_drain_shorter_than_two_runs_is_rejected(raw_spec: dict[str, Any]) -> None:
    raw_spec["sandbox"] = {"wallSeconds": 40}
    assert any("drainSeconds" in p for p in problems(raw_spec))
    raw_spec["drainSeconds"] = 80
    assert parse_spec(raw_spec).drain_seconds == 80


def test_credentials_and_provision_are_exclusive(raw_spec: dict[str, Any]) -> None:
    raw_spec["server"]["provision"] = True
    assert any("not both" in p for p in problems(raw_spec))
    del raw_spec["server"]["credentialsSecretRef"]
    assert parse_spec(raw_spec).server.provision
    raw_spec["server"]["provision"] = False
    assert any("provision: true" in p for p in problems(raw_spec))


def test_every_problem_is_reported_at_once(raw_spec: dict[str, Any]) -> None:
    raw_spec["queue"] = ""
    raw_spec["slots"] = 0
    raw_spec["server"]["url"] = "ftp://nope"
    found = problems(raw_spec)
    assert len(found) == 3
    assert any("spec.queue is required" in p for p in found)
    assert any("spec.slots" in p for p in found)
    assert any("http(s) URL" in p for p in found)


def test_operator_defaults_fill_url_and_image(raw_spec: dict[str, Any]) -> None:
    del raw_spec["server"]["url"]
    del raw_spec["image"]
    assert len(problems(raw_spec)) == 2
    spec = parse_spec(raw_spec, OperatorDefaults(xqueue_url="http://xq:80", grader_image="img:1"))
    assert spec.server.url == "http://xq:80" and spec.image == "img:1"


@pytest.mark.parametrize("value", ["../etc", "a/../../b", "/abs"])
def test_sub_path_must_stay_inside_the_repository(raw_spec: dict[str, Any], value: str) -> None:
    raw_spec["repo"]["subPath"] = value
    assert any("subPath" in p for p in problems(raw_spec))


def test_bad_resource_quantity_is_rejected(raw_spec: dict[str, Any]) -> None:
    raw_spec["resources"] = {"limits": {"memory": "lots"}}
    assert any("not a valid quantity" in p for p in problems(raw_spec))
    raw_spec["resources"] = {"limits": {"memory": "1Gi", "cpu": 2}}
    assert parse_spec(raw_spec).resources == {"limits": {"memory": "1Gi", "cpu": "2"}}


def test_repo_port_follows_the_url_scheme(raw_spec: dict[str, Any]) -> None:
    for url, port in [("https://h/r.git", 443), ("ssh://git@h:2222/r.git", 2222),
                      ("git@github.com:org/r.git", 22), ("/srv/course", None), ("file:///srv/c", None)]:
        raw_spec["repo"]["url"] = url
        assert parse_spec(raw_spec).repo.port == port, url


def test_names_that_do_not_fit_derived_objects_are_rejected() -> None:
    assert validate_name("course-a") == []
    assert validate_name("x" * 50)
    assert validate_name("Course_A")


GOOD_REPO_URLS = ["https://git.example.org/course/graders.git", "http://10.0.0.5:3000/c.git",
                  "ssh://git@h:2222/r.git", "git://git.example.org/c", "https://[::1]:8443/c.git",
                  "git@github.com:org/r.git", "/opt/xqueue/demo-course", "/srv/course",
                  "file:///srv/c", "file:///opt/courses/6.00x/"]
BAD_REPO_URLS = ["not a url; rm -rf /", "file:///etc/passwd", "github.com/org/repo", "/etc/shadow",
                 "relative/path", "https://", "https://h/r.git; curl evil", "ftp://h/r.git",
                 "/opt/../etc", "--upload-pack=touch /tmp/x", "https://h/../../x", "git@h:-oProxy=x"]


@pytest.mark.parametrize("url", GOOD_REPO_URLS)
def test_clonable_repo_urls_and_image_paths_are_accepted(raw_spec: dict[str, Any], url: str) -> None:
    raw_spec["repo"]["url"] = url
    assert parse_spec(raw_spec).repo.url == url


@pytest.mark.parametrize("url", BAD_REPO_URLS)
def test_repo_urls_that_cannot_be_cloned_are_rejected(raw_spec: dict[str, Any], url: str) -> None:
    """spec.repo.url accepted anything and reported SpecValid=True (issue 12)."""
    raw_spec["repo"]["url"] = url
    found = problems(raw_spec)
    assert len(found) == 1 and found[0].startswith("spec.repo.url must be") and "/opt/" in found[0]


def test_crd_repo_url_rule_uses_the_parser_expressions() -> None:
    from coursegrader_operator import spec as S
    url = spec_schema()["properties"]["repo"]["properties"]["url"]
    (rule,) = url["x-kubernetes-validations"]
    for pattern in (S.REPO_DOTDOT_RE, S.REPO_REMOTE_RE, S.REPO_SCP_RE, S.REPO_IMAGE_PATH_RE):
        assert f'self.matches(r"{pattern.pattern}")' in rule["rule"]
    assert "/opt/" in url["description"] and "/opt/" in rule["message"]
