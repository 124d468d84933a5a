"""Clients that behave like the real ones, for black-box tests over HTTP.

``LMSClient`` follows edx-platform's ``XQueueInterface``: a ``requests`` session that follows the 302
to ``/xqueue/login/``, sees ``login_required``, logs in and retries once. ``GraderClient`` follows the
classic xqueue-watcher: ``allow_redirects=False`` and a re-login on 301/302.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import requests

from xqueue_server.testing import ServerThread


class LMSClient:
    def __init__(self, server: ServerThread, username: str | None = None, password: str | None = None) -> None:
        self.url = server.url
        self.username = username or server.lms.username
        self.password = password or server.lms.password
        self.session = requests.Session()

    def _login(self) -> dict[str, Any]:
        response = self.session.post(f"{self.url}/xqueue/login/",
                                     data={"username": self.username, "password": self.password}, timeout=10)
        return response.json()

    def send(self, header: dict[str, Any] | str, body: str, files: dict[str, bytes] | None = None) -> tuple[int, Any]:
        payload = {"xqueue_header": header if isinstance(header, str) else json.dumps(header), "xqueue_body": body}
        for _attempt in range(2):
            response = self.session.post(f"{self.url}/xqueue/submit/", data=payload, files=files, timeout=10)
            assert response.status_code == 200, response.text
            reply = response.json()
            if reply["return_code"] == 1 and reply["content"] == "login_required":
                self._login()
                continue
            return reply["return_code"], reply["content"]
        raise AssertionError("could not log in")

    def submit(self, queue: str, callback_url: str, body: dict[str, Any] | str = "", lms_key: str | None = None,
               files: dict[str, bytes] | None = None) -> tuple[str, tuple[int, Any]]:
        key = lms_key or uuid.uuid4().hex
        header = {"lms_callback_url": callback_url, "lms_key": key, "queue_name": queue}
        text = body if isinstance(body, str) else json.dumps(body)
        return key, self.send(header, text, files)


class GraderClient:
    def __init__(self, server: ServerThread, username: str | None = None, password: str | None = None) -> None:
        self.url = server.url
        self.username = username or server.grader.username
        self.password = password or server.grader.password
        self.session = requests.Session()
        self.login()

    def login(self) -> dict[str, Any]:
        response = self.session.post(f"{self.url}/xqueue/login/",
                                     data={"username": self.username, "password": self.password}, timeout=10)
        return response.json()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for _attempt in range(2):
            response = self.session.request(method, f"{self.url}{path}", allow_redirects=False, timeout=30, **kwargs)
            if response.status_code in (301, 302, 401, 403):
                self.login()
                continue
            assert response.status_code == 200, (response.status_code, response.text)
            return response.json()
        raise AssertionError("re-login did not help")

    def get_submission(self, queue: str, **params: Any) -> dict[str, Any]:
        return self._request("GET", "/xqueue/get_submission/", params={"queue_name": queue, **params})

    def pull(self, queue: str, **params: Any) -> dict[str, Any] | None:
        reply = self.get_submission(queue, **params)
        if reply["return_code"] != 0:
            return None
        return json.loads(reply["content"])

    def put_result(self, xqueue_header: str, body: dict[str, Any] | str) -> dict[str, Any]:
        text = body if isinstance(body, str) else json.dumps(body)
        return self._request("POST", "/xqueue/put_result/", data={"xqueue_header": xqueue_header,
                                                                  "xqueue_body": text})

    def queue_length(self, queue: str) -> dict[str, Any]:
        return self._request("GET", "/xqueue/get_queuelen/", params={"queue_name": queue})


GRADE = {"correct": True, "score": 1, "msg": "<p>Good job</p>"}
