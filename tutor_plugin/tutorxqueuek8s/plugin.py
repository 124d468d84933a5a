"""The xqueue-k8s Tutor plugin: registers config, templates, patches, images and the init task.

What it deploys (templates and patches next to this file):

* ``tutor k8s``: the XQueue server (Deployment + Service ``xqueue-server``), a small PostgreSQL
  unless ``XQUEUE_K8S_DATABASE_URL`` names an external one, the CourseGrader CRD, and the operator
  with its ServiceAccount and least-privilege RBAC (watching the Open edX namespace, or every
  namespace with ``XQUEUE_K8S_OPERATOR_CLUSTER_WIDE``).
* ``tutor local``: the server and PostgreSQL as compose services (no operator: graders there are
  ``xqueue-grader`` processes or pods elsewhere).
* LMS and CMS settings: ``XQUEUE_INTERFACE`` pointing at ``xqueue-server`` with the LMS account.
  They are set in the LMS/CMS-specific settings patches, which come after the common one that
  tutor-xqueue uses, so this plugin wins even if both are enabled (which it warns about).
* ``tutor ... do init``: migrates the database and creates (or resets) the LMS account and the
  operator's admin account with ``xqueue-admin``; passwords travel through stdin, never argv.
"""

from __future__ import annotations

import os
from glob import glob
from importlib import resources
from typing import Any

from tutor import fmt, hooks
from tutor import plugins as tutor_plugins

from .__about__ import __version__

PACKAGE = resources.files("tutorxqueuek8s")
TEMPLATES = str(PACKAGE / "templates")
PATCHES = str(PACKAGE / "patches")

# Project images (charts/xqueue/values.yaml uses the same repositories), tagged with this version.
CONFIG_DEFAULTS: dict[str, Any] = {
    "VERSION": __version__,
    "SERVER_IMAGE": "ghcr.io/xqueue-k8s/xqueue-server:{{ XQUEUE_K8S_VERSION }}",
    "OPERATOR_IMAGE": "ghcr.io/xqueue-k8s/xqueue-operator:{{ XQUEUE_K8S_VERSION }}",
    "GRADER_IMAGE": "ghcr.io/xqueue-k8s/xqueue-grader:{{ XQUEUE_K8S_VERSION }}",
    "POSTGRESQL_IMAGE": "docker.io/library/postgres:17.7-bookworm",
    "IMAGE_PULL_POLICY": "IfNotPresent",
    "PORT": 18040,
    # The LMS's account on the server (XQUEUE_INTERFACE.django_auth); tutor-xqueue used "lms" too.
    "LMS_USERNAME": "lms",
    # Where the server posts grades back: the LMS Service inside the cluster / compose network.
    "LMS_CALLBACK_URL": "http://lms:8000",
    # The account the operator reads queue lengths and provisions grader accounts with.
    "ADMIN_USERNAME": "coursegrader-operator",
    # An external PostgreSQL (postgresql://user:password@host:5432/db) instead of the bundled one.
    "DATABASE_URL": "",
    "POSTGRESQL_DATABASE": "xqueue",
    "POSTGRESQL_USERNAME": "xqueue",
    "POSTGRESQL_STORAGE_SIZE": "8Gi",
    # Uploaded submission files (local storage; one server replica).
    "FILES_STORAGE_SIZE": "2Gi",
    "CALLBACK_VERIFY_TLS": True,
    "RUN_OPERATOR": True,
    # False: the operator manages CourseGraders in the Open edX namespace only (RoleBinding there).
    # True: in every namespace (ClusterRoleBinding).
    "OPERATOR_CLUSTER_WIDE": False,
}

CONFIG_UNIQUE: dict[str, Any] = {
    "LMS_PASSWORD": "{{ 24|random_string }}",
    "ADMIN_PASSWORD": "{{ 24|random_string }}",
    "POSTGRESQL_PASSWORD": "{{ 24|random_string }}",
}

hooks.Filters.CONFIG_DEFAULTS.add_items([(f"XQUEUE_K8S_{key}", value) for key, value in CONFIG_DEFAULTS.items()])
hooks.Filters.CONFIG_UNIQUE.add_items([(f"XQUEUE_K8S_{key}", value) for key, value in CONFIG_UNIQUE.items()])

# Templates: the CRD, RBAC and Secret are whole files under env/plugins/xqueue-k8s/k8s/ (listed in
# the kustomization by the kustomization-resources patch); workloads go into Tutor's own k8s files.
hooks.Filters.ENV_TEMPLATE_ROOTS.add_item(TEMPLATES)
hooks.Filters.ENV_TEMPLATE_TARGETS.add_items([("xqueue-k8s/k8s", "plugins")])

for path in sorted(glob(os.path.join(PATCHES, "*"))):
    with open(path, encoding="utf-8") as patch_file:
        hooks.Filters.ENV_PATCHES.add_item((os.path.basename(path), patch_file.read()))

with open(os.path.join(TEMPLATES, "xqueue-k8s", "tasks", "xqueue-server", "init"), encoding="utf-8") as task_file:
    INIT_TASK = task_file.read()
hooks.Filters.CLI_DO_INIT_TASKS.add_item(("xqueue-server", INIT_TASK))

hooks.Filters.IMAGES_PULL.add_items([
    ("xqueue-server", "{{ XQUEUE_K8S_SERVER_IMAGE }}"),
    ("xqueue-operator", "{{ XQUEUE_K8S_OPERATOR_IMAGE }}"),
    ("xqueue-grader", "{{ XQUEUE_K8S_GRADER_IMAGE }}"),
])


@hooks.Actions.PLUGINS_LOADED.add()
def _warn_about_tutor_xqueue() -> None:
    # tutor-xqueue deploys upstream XQueue under the name "xqueue" and sets XQUEUE_INTERFACE too.
    if tutor_plugins.is_loaded("xqueue"):
        fmt.echo_alert("Both xqueue-k8s and tutor-xqueue (xqueue) are enabled: the LMS talks to xqueue-k8s. "
                       "Disable the old one once its queues are drained: tutor plugins disable xqueue")
