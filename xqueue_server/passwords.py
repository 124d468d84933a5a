"""Django password hashes, as upstream XQueue stores them in ``auth_user.password``.

Accounts imported from upstream (``xqueue-admin import-xqueue``) keep their Django hash, so the LMS and
the graders log in with their old passwords; the first successful login replaces it with our own
scrypt hash (``auth.Authenticator``). Only the PBKDF2 formats are verified: they are what every Django
since 1.4 writes by default. Anything else (bcrypt, argon2, the unsalted legacy digests) is reported by
the import as needing a new password rather than half-supported here.

Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

# Django algorithm name -> hashlib digest name.
PBKDF2_ALGORITHMS = {"pbkdf2_sha256": "sha256", "pbkdf2_sha1": "sha1"}
# Bounds on the iteration count written in a hash: below Django 1.4's first default (10 000) a hash
# is not a real Django one; above the bound a single verification would hold a thread for minutes.
MIN_ITERATIONS = 1_000
MAX_ITERATIONS = 10_000_000


def django_algorithm(encoded: str) -> str:
    """The algorithm name a Django hash starts with ('' when the value has no ``$`` at all).

    Django marks an account without a usable password with a value starting with ``!``."""
    if encoded.startswith("!"):
        return "unusable"
    head, sep, _ = encoded.partition("$")
    return head if sep else ""


def is_django_hash(encoded: str) -> bool:
    return django_algorithm(encoded) in PBKDF2_ALGORITHMS


def unsupported_reason(encoded: str) -> str | None:
    """Why a stored upstream password cannot be carried over, or None when it can."""
    algorithm = django_algorithm(encoded)
    if algorithm == "unusable":
        return "the upstream account has no usable password (Django marks it with '!')"
    if algorithm not in PBKDF2_ALGORITHMS:
        shown = algorithm or "unrecognised"
        return f"password hash format {shown!r} is not supported (pbkdf2_sha256 and pbkdf2_sha1 are)"
    if _parse(encoded) is None:
        return f"malformed {algorithm} password hash"
    return None


def _parse(encoded: str) -> tuple[str, int, str, bytes] | None:
    """(hashlib name, iterations, salt, expected digest) or None when malformed."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] not in PBKDF2_ALGORITHMS:
        return None
    algorithm, iterations_text, salt, digest_b64 = parts
    if not iterations_text.isdigit() or not salt:
        return None
    iterations = int(iterations_text)
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        return None
    try:
        expected = base64.b64decode(digest_b64, validate=True)
    except ValueError:
        return None
    if not expected:
        return None
    return PBKDF2_ALGORITHMS[algorithm], iterations, salt, expected


def verify_django_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches a Django PBKDF2 hash; False for any other or malformed value."""
    parsed = _parse(encoded)
    if parsed is None:
        return False
    digest_name, iterations, salt, expected = parsed
    try:
        digest = hashlib.pbkdf2_hmac(digest_name, password.encode(), salt.encode(), iterations, len(expected))
    except (UnicodeEncodeError, ValueError):  # lone surrogates in a password typed by a client
        return False
    return hmac.compare_digest(digest, expected)


def make_django_password(password: str, salt: str, iterations: int = 600_000,
                         algorithm: str = "pbkdf2_sha256") -> str:
    """A hash in Django's format, as Django's own hasher would write it (tests build upstream data with it)."""
    digest = hashlib.pbkdf2_hmac(PBKDF2_ALGORITHMS[algorithm], password.encode(), salt.encode(), iterations)
    return f"{algorithm}${iterations}${salt}${base64.b64encode(digest).decode()}"
