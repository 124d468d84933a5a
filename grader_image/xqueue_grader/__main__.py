"""``xqueue-grader``: ``run`` (the daemon), ``fetch-course`` (init step), ``try``, ``features`` and
``selftest``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from xqueue_grader.logs import setup_logging

if TYPE_CHECKING:
    from xqueue_grader.sandbox import SandboxSettings


def _cmd_run(_args: argparse.Namespace) -> int:
    from xqueue_grader.config import ConfigError, load_config
    from xqueue_grader.daemon import serve

    try:
        config = load_config()
    except ConfigError as exc:
        setup_logging()
        print(json.dumps({"level": "error", "msg": f"configuration error: {exc}"}), file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    return asyncio.run(serve(config))


def _cmd_fetch(_args: argparse.Namespace) -> int:
    from xqueue_grader.fetch import FetchError, fetch_course, settings_from_env

    setup_logging()
    try:
        info = fetch_course(settings_from_env(os.environ))
    except FetchError as exc:
        print(json.dumps({"level": "error", "msg": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps({"level": "info", "msg": "course fetched", **info}), file=sys.stderr)
    return 0


def _cmd_try(args: argparse.Namespace) -> int:
    """Grade one submission file locally, in the real sandbox, and print the reply."""
    from xqueue_grader.engine import GradingEngine
    from xqueue_grader.sandbox import Limits, SandboxPool, SandboxSettings

    setup_logging("WARNING")
    code = sys.stdin.read() if args.submission == "-" else open(args.submission, encoding="utf-8").read()
    payload: dict[str, object] = {"grader": args.grader}
    if args.lang:
        payload["lang"] = args.lang
    body = json.dumps({"grader_payload": json.dumps(payload), "student_response": code, "student_info": "{}"})

    async def go() -> dict[str, Any]:
        pool = SandboxPool(SandboxSettings(hidden_paths=[args.grader_root]))
        await pool.start()
        try:
            engine = GradingEngine(pool, args.grader_root, Limits())
            from xqueue_grader.results import make_reply

            return make_reply(await engine.grade_body(body))
        finally:
            await pool.close()

    reply = asyncio.run(go())
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("correct") else 3


def _cmd_features(_args: argparse.Namespace) -> int:
    from xqueue_grader.sandbox import SandboxPool, SandboxSettings

    async def go() -> dict[str, Any]:
        pool = SandboxPool(SandboxSettings())
        try:
            return await pool.start()
        finally:
            await pool.close()

    print(json.dumps(asyncio.run(go()), indent=2, sort_keys=True))
    return 0


def _selftest_settings() -> tuple[SandboxSettings, list[str]]:
    """Sandbox settings of this deployment (its configuration when there is one, else defaults)."""
    from xqueue_grader.config import ConfigError, load_config
    from xqueue_grader.sandbox import SandboxSettings

    try:
        config = load_config()
    except ConfigError:
        # No queue configured (a one-off check): the defaults, hiding the grader root if named.
        root = os.environ.get("XQGRADER_GRADER_ROOT")
        return SandboxSettings(hidden_paths=[root] if root else []), []
    settings = SandboxSettings(
        scratch_root=config.scratch_dir, hidden_paths=[config.grader_root], preload=list(config.preload_modules),
        sandbox_uid=config.sandbox_uid, require_seccomp=config.require_seccomp,
        require_landlock=config.require_landlock,
    )
    required = [name for name, on in (("seccomp", config.require_seccomp), ("landlock", config.require_landlock))
                if on]
    return settings, required


def _cmd_selftest(args: argparse.Namespace) -> int:
    """Start the sandbox as the daemon would, run one job through it, report the active layers."""
    from xqueue_grader.sandbox import SandboxPool, SandboxUnavailable, procstate, report

    setup_logging("WARNING")
    settings, required = _selftest_settings()

    async def go() -> dict[str, Any]:
        pool = SandboxPool(settings)
        try:
            features = await pool.start()
            ok = await pool.self_test()
        except SandboxUnavailable as exc:
            return {"ok": False, "error": str(exc)}
        finally:
            await pool.close()
        layers = report.layers(features)
        gaps = report.missing(layers)
        return {
            "ok": ok and not [name for name in required if name in gaps],
            "self_test": ok,
            "layers": layers,
            "missing": gaps,
            "required": required,
            "daemon": {"uid": os.getuid(), "gid": os.getgid(), "nice": procstate.snapshot()["nice"]},
        }

    result = asyncio.run(go())
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"self-test: {'ok' if result.get('self_test') else 'FAILED'}")
        for name, value in sorted((result.get("layers") or {}).items()):
            print(f"  {name}: {json.dumps(value, sort_keys=True)}")
        if result.get("missing"):
            print("missing: " + ", ".join(result["missing"]))
        if result.get("error"):
            print(f"error: {result['error']}")
    return 0 if result.get("ok") else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xqueue-grader", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the grader daemon (configuration from XQGRADER_* variables)")
    sub.add_parser("fetch-course", help="clone the course grader repository into XQGRADER_GRADER_ROOT")
    try_parser = sub.add_parser("try", help="grade one submission file locally and print the reply")
    try_parser.add_argument("--grader-root", required=True)
    try_parser.add_argument("--grader", required=True, help="grader path relative to the root")
    try_parser.add_argument("--lang", default=None)
    try_parser.add_argument("submission", help="file with the student's code, or - for stdin")
    sub.add_parser("features", help="print the sandbox features detected on this machine")
    selftest = sub.add_parser("selftest", help="start the sandbox, run one job through it and report the "
                              "active isolation layers (exit 1 when the job fails or a required layer is off)")
    selftest.add_argument("--json", action="store_true", help="one JSON document instead of text")
    args = parser.parse_args(argv)
    handlers = {"run": _cmd_run, "fetch-course": _cmd_fetch, "try": _cmd_try, "features": _cmd_features,
                "selftest": _cmd_selftest}
    sys.exit(handlers[args.command](args))


if __name__ == "__main__":
    main()
