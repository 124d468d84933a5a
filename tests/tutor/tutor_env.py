"""Render a Tutor environment with the xqueue-k8s plugin through the real `tutor` command.

``render(root, settings)`` enables the plugin in a fresh TUTOR_ROOT and runs ``tutor config save``
with the given ``--set`` values; the helpers read what Tutor wrote (env/k8s, env/local, the LMS
settings) and the rendered init task, the way ``tutor k8s|local`` would use them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TUTOR = BIN / "tutor"
PLUGIN = "xqueue-k8s"
PLUGIN_DIR = ROOT / "tutor_plugin"


def tutor_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUTOR_")}
    # Plugins of this machine's user must not leak in; only entry-point plugins (ours) are found.
    env.update(TUTOR_ROOT=str(root), TUTOR_PLUGINS_ROOT=str(root / "plugins-root"))
    return env


def run_tutor(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(TUTOR), *args], env=tutor_env(root), capture_output=True, text=True,
                          timeout=180, check=False)
    if done.returncode != 0:
        raise AssertionError(f"tutor {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def render(root: Path, settings: dict[str, str] | None = None, also_enable: tuple[str, ...] = ()) -> Path:
    """Enable the plugin (and `also_enable`) in a fresh TUTOR_ROOT and save the config; the output of
    the last `tutor config save` is kept in root/config-save.log."""
    root.mkdir(parents=True, exist_ok=True)
    listed = run_tutor(root, "plugins", "list").stdout
    if PLUGIN not in listed:
        raise AssertionError(f"the {PLUGIN} plugin is not installed in this venv (pip install -e {PLUGIN_DIR}; "
                             f"`make setup` does it):\n{listed}")
    run_tutor(root, "plugins", "enable", PLUGIN, *also_enable)
    sets: list[str] = []
    for key, value in (settings or {}).items():
        sets += ["--set", f"{key}={value}"]
    done = run_tutor(root, "config", "save", *sets)
    (root / "config-save.log").write_text(done.stdout + done.stderr)
    return root


def config(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "config.yml").read_text())


def k8s_objects(root: Path) -> list[dict[str, Any]]:
    """Every object of the files the kustomization lists: what `tutor k8s start` applies (before kustomize)."""
    env = root / "env"
    resources = yaml.safe_load((env / "kustomization.yml").read_text())["resources"]
    docs: list[dict[str, Any]] = []
    for resource in resources:
        docs += [d for d in yaml.safe_load_all((env / resource).read_text()) if d]
    return docs


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def settings_value(path: Path, name: str) -> Any:
    """The last literal assigned to `name` in a rendered Django settings file (parsed, not executed)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    value: Any = None
    found = False
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value, found = ast.literal_eval(node.value), True
    assert found, f"{name} is not set in {path}"
    return value


def compose(root: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load((root / "env" / "local" / name).read_text())


_INIT_TASKS = """
import json, sys
from tutor import config as tutor_config, env as tutor_env, hooks
root = sys.argv[1]
hooks.Actions.CORE_READY.do()
hooks.Actions.PROJECT_ROOT_READY.do(root)
config = tutor_config.load(root)
print(json.dumps([(s, tutor_env.render_str(config, t)) for s, t in hooks.Filters.CLI_DO_INIT_TASKS.iterate()]))
"""


def init_tasks(root: Path) -> list[tuple[str, str]]:
    """The rendered init tasks as `tutor ... do init` would run them: (service, shell script)."""
    done = subprocess.run([sys.executable, "-c", _INIT_TASKS, str(root)], env=tutor_env(root), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [(s, t) for s, t in json.loads(done.stdout.strip().splitlines()[-1])]
