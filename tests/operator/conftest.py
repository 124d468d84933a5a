"""Shared builders for the operator's unit tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from coursegrader_operator.resources import Owner
from coursegrader_operator.spec import CourseGraderSpec, parse_spec

BASE_SPEC: dict[str, Any] = {
    "queue": "MITx-6.00x",
    "server": {"url": "http://xqueue.xqueue.svc:18040", "credentialsSecretRef": {"name": "grader-login"}},
    "repo": {"url": "https://git.example.org/course/graders.git", "ref": "main", "subPath": "graders"},
    "image": "registry.example.org/xqueue-grader:1.0",
}


@pytest.fixture
def raw_spec() -> dict[str, Any]:
    return copy.deepcopy(BASE_SPEC)


@pytest.fixture
def spec(raw_spec: dict[str, Any]) -> CourseGraderSpec:
    return parse_spec(raw_spec)


@pytest.fixture
def owner() -> Owner:
    return Owner(name="course-a", namespace="courses", uid="0b7d6a38-1111-2222-3333-444455556666")
