"""The grading machinery of a daemon (sandbox pool + gradelib engines) in a process of its own,
driven over stdin/stdout with one JSON document per line.

The abuse tests start it through ``as_user.py`` under an unprivileged uid, so the "daemon" (this
process), the zygote and student code share that uid as they do in a restricted pod, while the
test process itself stays root and can look at everything from outside.

Requests: ``{"id": n, "op": "grade", "course": name, "body": text}``, ``{"op": "info"}``,
``{"op": "self_test"}``.  Replies carry the same id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from typing import Any

from xqueue_grader.engine import GradingEngine
from xqueue_grader.sandbox import Limits, SandboxPool, SandboxSettings, prctl


class Host:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.limits = Limits.from_dict(spec["limits"])
        self.pool = SandboxPool(SandboxSettings(
            scratch_root=spec.get("scratch_root"),
            hidden_paths=list(spec["courses"].values()),
            disable=tuple(spec.get("disable") or ()),
        ))
        self.engines = {name: GradingEngine(self.pool, root, self.limits) for name, root in spec["courses"].items()}
        self.write_lock = asyncio.Lock()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "grade":
            result = await self.engines[request["course"]].grade_body(request["body"])
            return {"result": dataclasses.asdict(result)}
        if op == "self_test":
            return {"ok": await self.pool.self_test()}
        if op == "info":
            return {"pid": os.getpid(), "uid": os.getuid(), "zygote_pid": self.pool.zygote_pid,
                    "scratch": self.pool.scratch, "healthy": self.pool.healthy, "usable": self.pool.usable,
                    "replacements": self.pool.replacements, "features": self.pool.features}
        raise ValueError(f"unknown op {op!r}")

    async def answer(self, request: dict[str, Any], out: Any) -> None:
        try:
            reply = {"id": request.get("id"), **await self.handle(request)}
        except Exception as exc:
            reply = {"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"}
        async with self.write_lock:
            out.write(json.dumps(reply) + "\n")
            out.flush()


async def serve(spec: dict[str, Any]) -> None:
    # As the daemon does: processes of our uid can neither ptrace us nor read our /proc files.
    prctl.set_dumpable(False)
    host = Host(spec)
    await host.pool.start()
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            task = asyncio.create_task(host.answer(json.loads(line), out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await host.pool.close()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.argv[1])))
