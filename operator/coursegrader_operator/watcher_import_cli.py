"""`coursegrader-import-watcher`: read an xqueue-watcher config, write CourseGrader YAML, report.

The conversion itself is watcher_import.convert (pure); this module reads the files and writes the
output. Exit codes: 0 every queue converted, 1 some queues could not be converted (the others are
written, the report says why), 2 the input could not be read or the arguments are wrong.

The watcher's passwords are read (they sit next to the usernames in the JSON) but never written:
the YAML names Secrets, and the report prints the kubectl command with the password as a variable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from .watcher_import import SPECIAL_FILES, ImportOptions, ImportResult, WatcherConfigError, convert, report_lines


class InputError(Exception):
    """The watcher configuration cannot be read; the message says which file and why."""


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc.__class__.__name__}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def load_watcher_config(path: Path, servers_file: Path | None = None
                        ) -> tuple[dict[str, Any], Any | None, Any | None]:
    """(queue files by name, xqueue_servers.json or None, codejail.json or None) from a folder or file.

    A folder is either conf.d itself or the watcher's config folder holding conf.d/ (newer layout,
    with xqueue_servers.json next to conf.d/).
    """
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_file():
        files = {path.name: _load_json(path)}
        folder = path.parent
        confd = folder
    elif path.is_dir():
        confd = path / "conf.d" if (path / "conf.d").is_dir() else path
        folder = path
        try:
            names = sorted(p for p in confd.glob("*.json") if p.name not in SPECIAL_FILES)
        except OSError as exc:
            raise InputError(f"cannot list {confd}: {exc.__class__.__name__}") from None
        if not names:
            raise InputError(f"{confd} holds no queue configuration "
                             f"(*.json besides {', '.join(sorted(SPECIAL_FILES))})")
        files = {p.name: _load_json(p) for p in names}
    else:
        raise InputError(f"{path} is neither a file nor a folder")
    servers_path = servers_file or _first(folder / "xqueue_servers.json", confd / "xqueue_servers.json",
                                          confd.parent / "xqueue_servers.json")
    if servers_file is not None and not servers_file.is_file():
        raise InputError(f"{servers_file} does not exist")
    servers = _load_json(servers_path) if servers_path else None
    codejail_path = _first(confd / "codejail.json", folder / "codejail.json")
    codejail = _load_json(codejail_path) if codejail_path else None
    return files, servers, codejail


def write_output(result: ImportResult, out_dir: Path | None) -> list[str]:
    """Write one YAML file per CourseGrader into out_dir (or all to stdout); returns what was written."""
    written: list[str] = []
    docs: list[str] = []
    for item in result.converted:
        header = [f"# CourseGrader for queue {item.queue!r}, converted from xqueue-watcher {item.source}"]
        header += [f"# note: {note}" for note in item.notes]
        text = "\n".join(header) + "\n" + yaml.safe_dump(item.obj, sort_keys=False, default_flow_style=False)
        if out_dir is None:
            docs.append(text)
        else:
            target = out_dir / f"{item.obj['metadata']['name']}.yaml"
            target.write_text(text, encoding="utf-8")
            written.append(str(target))
    if out_dir is None and docs:
        sys.stdout.write("---\n".join(docs))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coursegrader-import-watcher",
        description="Turn an xqueue-watcher conf.d (queues, servers, handlers) into CourseGrader YAML, one per "
                    "queue, and report what could not be mapped. Passwords are never copied.")
    parser.add_argument("config", type=Path, help="the watcher's conf.d folder, its config folder, or one JSON file")
    parser.add_argument("--repo-url", required=True, help="git URL of the course repository holding the graders")
    parser.add_argument("--repo-ref", default="", help="branch, tag or commit of the repository")
    parser.add_argument("--repo-root", default="",
                        help="where that repository is checked out on the watcher host: grader_root paths "
                             "under it become spec.repo.subPath")
    parser.add_argument("--repo-secret", default="", help="Secret with the repository credentials (spec.repo)")
    parser.add_argument("--servers-file", type=Path, default=None,
                        help="xqueue_servers.json for SERVER_REF (default: found next to conf.d)")
    parser.add_argument("--namespace", "-n", default="", help="namespace of the CourseGraders")
    parser.add_argument("--server-url", default="", help="XQueue URL the graders use (default: the operator's)")
    parser.add_argument("--keep-server-url", action="store_true",
                        help="keep the watcher's SERVER as spec.server.url (graders pull from the old XQueue)")
    parser.add_argument("--provision", action="store_true",
                        help="let the operator create the queue and a grader account instead of naming a Secret")
    parser.add_argument("--container-as-pipeline", action="store_true",
                        help="convert ContainerGrader queues to the built-in Python pipeline")
    parser.add_argument("--image", default="", help="grader image (default: the operator's)")
    parser.add_argument("--out", "-o", type=Path, default=None,
                        help="folder for the YAML files (created); default: all documents on stdout")
    args = parser.parse_args(argv)
    options = ImportOptions(
        repo_url=args.repo_url, repo_ref=args.repo_ref, repo_root=args.repo_root,
        repo_credentials_secret=args.repo_secret, namespace=args.namespace, server_url=args.server_url.rstrip("/"),
        keep_server_url=args.keep_server_url, provision=args.provision,
        container_as_pipeline=args.container_as_pipeline, image=args.image)
    try:
        files, servers, codejail = load_watcher_config(args.config, args.servers_file)
        result = convert(files, options, servers=servers, codejail=codejail)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
        written = write_output(result, args.out)
    except (InputError, WatcherConfigError) as exc:
        print(f"coursegrader-import-watcher: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"coursegrader-import-watcher: error: cannot write output: {exc.__class__.__name__}", file=sys.stderr)
        return 2
    for line in [*(f"wrote {path}" for path in written), *report_lines(result, args.namespace)]:
        print(line, file=sys.stderr)
    return 1 if result.unmapped or (not result.converted) else 0


if __name__ == "__main__":
    sys.exit(main())
