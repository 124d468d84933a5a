"""Pure parts of storage.py: signed file URLs."""

from __future__ import annotations

from xqueue_server.storage import check_signature, sign


def test_file_url_signatures() -> None:
    key = "0" * 32
    signature = sign("k", key, 2000)
    assert check_signature("k", key, "2000", signature, now=1000)
    assert not check_signature("k", key, "2000", signature, now=2001)  # expired
    assert not check_signature("other", key, "2000", signature, now=1000)
    assert not check_signature("k", "../etc/passwd", "2000", signature, now=1000)
    assert not check_signature("k", key, "soon", signature, now=1000)
