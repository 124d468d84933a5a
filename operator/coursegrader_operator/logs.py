"""The operator's JSON logs in the shape every part of the project writes (xqueue_common.jsonlog).

kopf configures logging itself (``--log-format``); its JSON formatter writes other keys (``message``,
``timestamp``, ``severity``). With ``--log-format json`` the startup handler swaps that formatter for
the shared one, adding kopf's object reference under ``object`` (the key kopf uses), so log queries
work the same for the server, the grader and the operator. The few lines kopf writes before the startup
handler runs keep kopf's shape.
"""

from __future__ import annotations

import json
import logging

from xqueue_common.jsonlog import JsonFormatter, log_entry, safe_default

# The key kopf's own JSON formatter puts the object reference under.
OBJECT_KEY = "object"


class OperatorJsonFormatter(JsonFormatter):
    """The shared shape plus ``object``: the namespace/name/kind of the resource a kopf record is about."""

    def format(self, record: logging.LogRecord) -> str:
        entry = log_entry(record)
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry.setdefault(OBJECT_KEY, ref)
        return json.dumps(entry, default=safe_default)


def _is_kopf_json(formatter: logging.Formatter | None) -> bool:
    # By class name: kopf's formatter classes live in a private module, and a kopf that renames them
    # should leave its own format in place rather than fail the start-up.
    return formatter is not None and any(cls.__name__ == "ObjectJsonFormatter" for cls in type(formatter).__mro__)


def use_shared_json_shape(logger: logging.Logger | None = None) -> int:
    """Replace kopf's JSON formatter on ``logger``'s handlers (default: root); returns how many."""
    target = logger or logging.getLogger()
    swapped = 0
    for handler in target.handlers:
        if _is_kopf_json(handler.formatter):
            handler.setFormatter(OperatorJsonFormatter())
            swapped += 1
    return swapped
