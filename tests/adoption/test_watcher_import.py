"""Importing an xqueue-watcher conf.d: valid CourseGraders, no copied passwords, unmapped parts reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from coursegrader_operator.spec import OperatorDefaults, parse_spec, validate_name
from coursegrader_operator.watcher_import import (
    CONTAINER,
    JAILED,
    ImportOptions,
    WatcherConfigError,
    convert,
    resource_name,
    scaling_for,
)
from coursegrader_operator.watcher_import_cli import main

REPO = "https://git.example.org/mitx/6.00x-graders.git"
DEFAULTS = OperatorDefaults(xqueue_url="http://xqueue-server.openedx.svc:18040",
                            grader_image="ghcr.io/xqueue-k8s/xqueue-grader:0.1.0")
SERVER_PASSWORD = "Srv-pw-4f1a9c"     # in xqueue_servers.json
INLINE_PASSWORD = "Inline-pw-8b2e77"  # inline AUTH in a conf.d file


def jailed(grader_root: str, **extra: Any) -> dict[str, Any]:
    return {"HANDLER": JAILED, "KWARGS": {"grader_root": grader_root, "codejail_python": "python"}, **extra}


def watcher_config(root: Path) -> Path:
    """A watcher config folder in the newer layout: conf.d/ plus xqueue_servers.json beside it."""
    confd = root / "conf.d"
    confd.mkdir(parents=True)
    (root / "xqueue_servers.json").write_text(json.dumps(
        {"default": {"SERVER": "http://xqueue.example.org:18040", "AUTH": ["watcher", SERVER_PASSWORD]}}))
    (confd / "600.json").write_text(json.dumps({
        "MITx-6.00x": {
            "SERVER_REF": "default",
            "CONNECTIONS": 10,
            "HANDLERS": [jailed("/edx/data/6.00x/graders/",
                                CODEJAIL={"name": "python", "bin_path": "/sandbox/bin/python",
                                          "limits": {"CPU": 2, "REALTIME": 45, "VMEM": 536870912,
                                                     "NPROC": 15, "FSIZE": 1048576}})],
        },
    }))
    (confd / "inline.json").write_text(json.dumps({
        "course_b": {
            "SERVER": "http://xqueue.example.org:18040",
            "AUTH": ["course-b-grader", INLINE_PASSWORD],
            "HANDLERS": [jailed("6.00x/other")],
        },
    }))
    (confd / "container.json").write_text(json.dumps({
        "containers-101": {
            "SERVER_REF": "default",
            "CONNECTIONS": 2,
            "HANDLERS": [{"HANDLER": CONTAINER, "KWARGS": {
                "grader_root": "/edx/data/6.00x/graders/", "image": "registry.example.com/c101:latest",
                "backend": "kubernetes", "memory_limit": "512Mi", "timeout": 30}}],
        },
    }))
    (confd / "custom.json").write_text(json.dumps({
        "java-queue": {"SERVER_REF": "default",
                       "HANDLERS": [{"HANDLER": "mycourse.grading.JavaGrader", "KWARGS": {"grader_root": "/x"}}]},
    }))
    # Not queue files: must be skipped as such (codejail.json still feeds the limits).
    (confd / "logging.json").write_text(json.dumps({"version": 1}))
    (confd / "codejail.json").write_text(json.dumps({"python": {"python_bin": "/sb/python",
                                                                "limits": {"CPU": 3, "REALTIME": 20}}}))
    return root


def test_jailed_grader_queues_become_coursegraders_the_operator_accepts(tmp_path: Path) -> None:
    from coursegrader_operator.watcher_import_cli import load_watcher_config

    files, servers, codejail = load_watcher_config(watcher_config(tmp_path))
    assert sorted(files) == ["600.json", "container.json", "custom.json", "inline.json"]
    result = convert(files, ImportOptions(repo_url=REPO, repo_ref="main", repo_root="/edx/data", namespace="courses"),
                     servers=servers, codejail=codejail)

    by_queue = {c.queue: c.obj for c in result.converted}
    assert sorted(by_queue) == ["MITx-6.00x", "course_b"]
    for obj in by_queue.values():
        assert obj["apiVersion"] == "grading.xqueue-k8s.io/v1alpha1" and obj["kind"] == "CourseGrader"
        assert validate_name(obj["metadata"]["name"]) == []
        assert obj["metadata"]["namespace"] == "courses"
        parse_spec(obj["spec"], DEFAULTS)  # raises SpecError listing every problem

    big = parse_spec(by_queue["MITx-6.00x"]["spec"], DEFAULTS)
    assert big.queue == "MITx-6.00x"
    assert big.repo.url == REPO and big.repo.ref == "main" and big.repo.sub_path == "6.00x/graders"
    assert big.server.credentials_secret == "xqueue-grader-default" and not big.server.provision
    # The handler's own CODEJAIL limits win over codejail.json: 2 s CPU, 45 s wall, 512 MiB, ...
    assert (big.sandbox.cpu_seconds, big.sandbox.wall_seconds, big.sandbox.memory_mb,
            big.sandbox.processes, big.sandbox.file_size_kb) == (2, 45, 512, 15, 1024)
    assert big.drain_seconds >= 2 * big.sandbox.wall_seconds
    # 10 watcher threads: 4 slots x 3 pods at least, bursts up to 12 pods.
    assert (big.slots, big.scaling.min_replicas, big.scaling.max_replicas) == (4, 3, 12)

    small = parse_spec(by_queue["course_b"]["spec"], DEFAULTS)
    assert small.repo.sub_path == "6.00x/other"          # relative grader_root, under --repo-root
    assert (small.sandbox.cpu_seconds, small.sandbox.wall_seconds) == (3, 20)  # from codejail.json
    assert small.server.credentials_secret == f"{by_queue['course_b']['metadata']['name']}-xqueue"
    assert (small.slots, small.scaling.min_replicas) == (1, 1)
    # The server URL is left to the operator (the new XQueue), not the watcher's old server.
    assert "url" not in by_queue["course_b"]["spec"]["server"]

    secrets = {s.name: s for s in result.secrets}
    assert secrets["xqueue-grader-default"].username == "watcher"
    assert secrets["xqueue-grader-default"].used_by == (by_queue["MITx-6.00x"]["metadata"]["name"],)


def test_cli_writes_yaml_without_passwords_and_reports_what_it_could_not_map(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main([str(watcher_config(tmp_path / "watcher")), "--repo-url", REPO, "--repo-root", "/edx/data",
                 "-n", "courses", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1, "some queues were not converted: exit code 1"
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 2
    everything = captured.out + captured.err + "".join(p.read_text() for p in out.iterdir())
    assert SERVER_PASSWORD not in everything and INLINE_PASSWORD not in everything
    # The report says how to create each Secret, with the username and the password as a variable.
    assert ("kubectl -n courses create secret generic xqueue-grader-default --from-literal=username=watcher "
            '--from-literal=password="$GRADER_PASSWORD"') in captured.err
    assert "--from-literal=username=course-b-grader" in captured.err
    # What could not be mapped is named with the reason.
    assert "NOT CONVERTED: queue 'containers-101' (container.json)" in captured.err
    assert "ContainerGrader" in captured.err and "--container-as-pipeline" in captured.err
    assert "NOT CONVERTED: queue 'java-queue' (custom.json)" in captured.err
    assert "custom handler 'mycourse.grading.JavaGrader'" in captured.err
    assert "2 converted, 2 not converted" in captured.err
    for path in out.iterdir():
        obj = yaml.safe_load(path.read_text())
        assert path.name == f"{obj['metadata']['name']}.yaml"
        parse_spec(obj["spec"], DEFAULTS)


def test_container_grader_converts_on_request_with_its_limits() -> None:
    files = {"c.json": {"containers-101": {
        "SERVER": "http://xq:18040", "AUTH": ["u", "p"], "CONNECTIONS": 2,
        "HANDLERS": [{"HANDLER": CONTAINER, "KWARGS": {
            "grader_root": "/graders/", "image": "reg/c101:1", "memory_limit": "512Mi", "timeout": 40,
            "cpu_limit": "500m"}}]}}}
    refused = convert(files, ImportOptions(repo_url=REPO, repo_root="/graders"))
    assert not refused.converted and "ContainerGrader" in refused.unmapped[0].reasons[0]

    result = convert(files, ImportOptions(repo_url=REPO, repo_root="/graders", container_as_pipeline=True,
                                          provision=True, server_url="http://xqueue-server:18040"))
    (item,) = result.converted
    spec = parse_spec(item.obj["spec"], DEFAULTS)
    assert (spec.sandbox.wall_seconds, spec.sandbox.memory_mb) == (40, 512)
    assert spec.drain_seconds == 80   # twice the wall limit, so a scale-down never cuts a run short
    assert spec.server.provision and spec.server.url == "http://xqueue-server:18040"
    assert result.secrets == []        # provisioned accounts need no Secret
    assert any("image 'reg/c101:1' is not used" in note for note in item.notes)
    assert any("cpu_limit" in note for note in item.notes)


@pytest.mark.parametrize(("handler", "reason"), [
    ({"HANDLER": "xqueue_watcher.grader.Grader", "KWARGS": {"grader_root": "/g", "gradepy": "/g/grade.py"}},
     "abstract base class"),
    ({"HANDLER": "my.Grader"}, "custom handler 'my.Grader'"),
    ({"KWARGS": {}}, "no HANDLER"),
    ({"HANDLER": JAILED, "KWARGS": {"grader_root": "/elsewhere/g"}}, "is not inside --repo-root"),
    ({"HANDLER": JAILED, "KWARGS": {}}, "no grader_root"),
])
def test_handlers_that_cannot_be_mapped_are_reported(handler: dict[str, Any], reason: str) -> None:
    result = convert({"q.json": {"q1": {"SERVER": "http://x", "AUTH": ["u", "p"], "HANDLERS": [handler]}}},
                     ImportOptions(repo_url=REPO, repo_root="/data"))
    assert result.converted == []
    (item,) = result.unmapped
    assert item.queue == "q1" and any(reason in r for r in item.reasons), item.reasons


def test_queue_level_problems_are_reported() -> None:
    files = {
        "a.json": {"dup": {"AUTH": ["u", "p"], "HANDLERS": [jailed("/data/a")]},
                   "two": {"HANDLERS": [jailed("/data/a"), jailed("/data/b")]},
                   "none": {"HANDLERS": []},
                   "ref": {"SERVER_REF": "missing", "HANDLERS": [jailed("/data/a")]},
                   "bad auth": {"AUTH": "u:p", "HANDLERS": [jailed("/data/a")]}},
        "b.json": {"dup": {"HANDLERS": [jailed("/data/a")]}},
        "c.json": ["not", "an", "object"],
    }
    result = convert(files, ImportOptions(repo_url=REPO, repo_root="/data"), servers={})
    reasons = {u.queue: " ".join(u.reasons) for u in result.unmapped}
    assert [c.queue for c in result.converted] == ["dup"]
    assert "already defined in a.json" in reasons["dup"]
    assert "2 handlers" in reasons["two"]
    assert "no HANDLERS" in reasons["none"]
    assert "'missing' is not defined in xqueue_servers.json" in reasons["ref"]
    assert "not a valid XQueue queue name" in reasons["bad auth"]
    assert "c.json: not a JSON object of queues (skipped)" in result.warnings


def test_unknown_keys_and_unmappable_settings_become_notes() -> None:
    files = {"a.json": {"q": {"AUTH": ["u", "p"], "CLASS": "XQueueClientProcess", "POLL": 3,
                              "HANDLERS": [{**jailed("/data/q"), "SANDBOX": "/usr/bin/python-sandbox",
                                            "CODEJAIL": {"limits": {"CPU": 0, "PROXY": 1, "REALTIME": 99999}}}]}}}
    (item,) = convert(files, ImportOptions(repo_url=REPO, repo_root="/data")).converted
    notes = "\n".join(item.notes)
    assert "unknown key 'POLL' ignored" in notes
    assert "CLASS 'XQueueClientProcess' ignored" in notes
    assert "SANDBOX" in notes
    assert "PROXY has no CourseGrader equivalent" in notes
    assert "CPU=0 (unlimited)" in notes
    assert "outside the CourseGrader range" in notes   # REALTIME 99999 s clamped to the CRD maximum
    parse_spec(item.obj["spec"], DEFAULTS)


def test_resource_names_are_valid_and_distinct() -> None:
    taken: set[str] = set()
    queues = ["MITx-6.00x", "mitx-6.00x", "MITx_6.00x", "a" * 128, "a" * 127 + "b", "test-123", "@@@"]
    names = [resource_name(q, taken) for q in queues]
    assert len(set(names)) == len(names)
    assert all(validate_name(n) == [] for n in names), names
    assert names[5] == "test-123"      # a queue that is already a valid name keeps it


@pytest.mark.parametrize(("connections", "expected"), [
    (1, (1, 1, 4)), (2, (2, 1, 4)), (4, (4, 1, 4)), (5, (4, 2, 8)), (10, (4, 3, 12)), (1000, (4, 250, 1000)),
])
def test_scaling_keeps_the_watchers_capacity(connections: int, expected: tuple[int, int, int]) -> None:
    slots, scaling = scaling_for(connections)
    assert (slots, scaling["minReplicas"], scaling["maxReplicas"]) == expected
    assert slots * scaling["minReplicas"] >= connections


def test_repository_url_is_required() -> None:
    with pytest.raises(WatcherConfigError, match="repository URL is required"):
        convert({}, ImportOptions(repo_url=""))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coursegrader_operator.watcher_import_cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_unreadable_input_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    missing = run_cli(str(tmp_path / "nope"), "--repo-url", REPO)
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    (tmp_path / "empty").mkdir()
    empty = run_cli(str(tmp_path / "empty"), "--repo-url", REPO)
    assert empty.returncode == 2 and "holds no queue configuration" in empty.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "q.json").write_text('{"q": {"AUTH": ["u", "Secret-in-broken-file"],')
    bad = run_cli(str(broken), "--repo-url", REPO)
    assert bad.returncode == 2
    assert f"{broken / 'q.json'} is not valid JSON" in bad.stderr and "line 1" in bad.stderr
    assert "Secret-in-broken-file" not in bad.stderr and "Traceback" not in bad.stderr

    (broken / "q.json").write_bytes(b'{"q": "\xff"}')
    assert "is not UTF-8 text" in run_cli(str(broken), "--repo-url", REPO).stderr

    no_repo = run_cli(str(broken))
    assert no_repo.returncode == 2 and "--repo-url" in no_repo.stderr


def test_single_file_to_stdout_exit_0(tmp_path: Path) -> None:
    conf = tmp_path / "600.json"
    conf.write_text(json.dumps({"test-123": {"SERVER": "http://127.0.0.1:18040", "CONNECTIONS": 1,
                                             "AUTH": ["lms", "lms"],
                                             "HANDLERS": [jailed("../data/6.00x/graders/")]}}))
    done = run_cli(str(conf), "--repo-url", REPO, "--repo-root", "..", "--keep-server-url")
    assert done.returncode == 0, done.stderr
    (obj,) = list(yaml.safe_load_all(done.stdout))
    assert obj["spec"]["server"]["url"] == "http://127.0.0.1:18040"
    assert obj["spec"]["repo"]["subPath"] == "data/6.00x/graders"
    assert "1 converted, 0 not converted" in done.stderr
    parse_spec(obj["spec"], DEFAULTS)
