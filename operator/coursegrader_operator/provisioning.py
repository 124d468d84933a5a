"""The grader account: check a given Secret, or provision queue + account through the admin API.

XQueue failures are reported in the Provisioned condition, never raised: the Deployment is still
applied and the graders start as soon as the account works.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import constants as C
from .config import OperatorConfig
from .kube import KubeClient
from .resources import build_credentials_secret, credentials_secret_name, grader_username
from .spec import CourseGraderSpec
from .state import Course
from .status import Condition
from .xqueue import Auth, XQueueClient, XQueueError

log = logging.getLogger(__name__)

PROVISION_REFRESH = 3600.0  # seconds between re-assertions of a provisioned queue and account
Record = Callable[..., None]  # (course, reason, message, warning=False)


def decode(data: Mapping[str, Any], key: str) -> str | None:
    raw = data.get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def secret_digest(body: Mapping[str, Any] | None) -> str:
    """A digest of a Secret's data: tells a real change from a re-listed, unchanged Secret."""
    data = (body or {}).get("data") or {}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class Provisioner:
    def __init__(self, config: OperatorConfig, kube: KubeClient, xq: XQueueClient, record: Record,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.kube = kube
        self.xq = xq
        self.admin = Auth(username=config.admin_username, password=config.admin_password,
                          token=config.admin_token)
        self._record = record
        self._clock = clock

    def dial_url(self, spec: CourseGraderSpec) -> str:
        return self.config.xqueue_url_override or spec.server.url

    async def check(self, c: Course, spec: CourseGraderSpec) -> bool:
        """Set the Provisioned condition and credentials; returns whether to look again soon."""
        condition, retry = await self._check(c, spec)
        c.provision.condition = condition
        return retry

    async def _check(self, c: Course, spec: CourseGraderSpec) -> tuple[Condition, bool]:
        p = c.provision
        owner = c.owner
        ns = owner.namespace
        if not spec.server.provision:
            name = spec.server.credentials_secret or ""
            secret = await self.kube.get("v1", "Secret", ns, name)
            if secret is None:
                return Condition(C.COND_PROVISIONED, False, "SecretNotFound",
                                 f"Secret {name} (spec.server.credentialsSecretRef) not found"), True
            data = secret.get("data") or {}
            username = decode(data, spec.server.username_key)
            password = decode(data, spec.server.password_key)
            if not username or password is None:
                return Condition(C.COND_PROVISIONED, False, "SecretKeyMissing",
                                 f"Secret {name} lacks key {spec.server.username_key!r} or "
                                 f"{spec.server.password_key!r}"), True
            p.creds = Auth(username=username, password=password)
            return Condition(C.COND_PROVISIONED, True, "CredentialsFound",
                             f"graders log in as {username} (Secret {name})"), False
        if not self.config.has_admin:
            return Condition(C.COND_PROVISIONED, False, "NoAdminCredentials",
                             "spec.server.provision needs XQueue admin credentials in the operator "
                             "(XQOP_ADMIN_USERNAME/PASSWORD or XQOP_ADMIN_TOKEN)"), False
        username = grader_username(owner, spec)
        name = credentials_secret_name(owner, spec)
        secret = await self.kube.get("v1", "Secret", ns, name)
        data = (secret or {}).get("data") or {}
        password = decode(data, "password")
        if secret is None or decode(data, "username") != username or not password:
            password = secrets.token_urlsafe(32)
            secret = await self.kube.apply(build_credentials_secret(owner, username, password))
            self._record(c, "CredentialsCreated", f"generated a password for {username} in Secret {name}")
        p.secret_digest = secret_digest(secret)
        # Setting a password costs the server a deliberately slow hash, so the account is only
        # (re)written when something changed: the spec, the Secret, a failure, or once an hour.
        key = (c.generation, secret.get("metadata", {}).get("resourceVersion", ""))
        now = self._clock()
        stored: Mapping[str, Any] = next((cond for cond in (c.body.get("status") or {}).get("conditions", [])
                       if cond.get("type") == C.COND_PROVISIONED), {})
        if p.key is None and stored.get("status") == "True" \
                and stored.get("observedGeneration") == c.generation:
            # Operator restart: the previous run provisioned this generation; trust it until the
            # next refresh instead of re-hashing 1,000 passwords at start-up.
            p.key, p.at = key, now
        ok = Condition(C.COND_PROVISIONED, True, "Provisioned",
                       f"queue {spec.queue} and account {username} exist on the XQueue server")
        if p.key == key and now - p.at < PROVISION_REFRESH and (p.condition is None or p.condition.status):
            p.creds = Auth(username=username, password=password)
            return ok, False
        url = self.dial_url(spec)
        try:
            created = await self.xq.ensure_queue(url, spec.queue, self.admin)
            await self.xq.ensure_user(url, username, password, [spec.queue], self.admin)
        except XQueueError as e:
            return Condition(C.COND_PROVISIONED, False, "ProvisioningFailed", str(e)), True
        if created:
            self._record(c, "QueueCreated", f"created queue {spec.queue} on the XQueue server")
        p.creds = Auth(username=username, password=password)
        if p.key is not None and p.key[1] != key[1]:
            self._record(c, "AccountUpdated", f"account {username} now uses the password in Secret {name}")
        p.key, p.at = key, now
        if not (p.condition is not None and p.condition.status):
            self._record(c, "Provisioned", f"queue {spec.queue} and account {username} are ready")
        return ok, False

    async def delete_account(self, url: str, username: str, still_used: Callable[[str], bool]) -> None:
        """Best effort: the account is useless without its CourseGrader. The queue stays (it holds
        submissions and their history); there is no finalizer, so a deletion while the operator is
        down leaves the account behind."""
        if still_used(username):
            return  # re-created under the same name meanwhile: the account is in use again
        try:
            await self.xq.delete_user(url, username, self.admin)
        except XQueueError as e:
            log.warning("could not delete grader account %s: %s", username, e)
        else:
            log.info("deleted grader account %s (its CourseGrader is gone)", username)
