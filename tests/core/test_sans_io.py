"""The core is sans-IO: no transport, no processes, threads, environment or exit hooks.

Two proofs: the source of every module under ``mls_xmpp/core`` imports none of
the forbidden modules and touches none of the process-wide ``os`` functions;
and importing every core module in a fresh interpreter loads none of them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mls_xmpp.core

CORE = Path(mls_xmpp.core.__file__).parent

#: Never imported by a core module (checked in the source).
FORBIDDEN_IMPORTS = frozenset({
    "asyncio", "atexit", "concurrent", "google", "multiprocessing", "selectors", "signal",
    "slixmpp", "socket", "sqlite3", "subprocess", "threading", "_thread",
})
#: Never loaded by importing the whole core (checked in a fresh interpreter).
FORBIDDEN_LOADED = ("asyncio", "slixmpp", "google.protobuf", "subprocess", "multiprocessing",
                    "concurrent.futures", "atexit", "selectors", "socket", "sqlite3",
                    "mls_xmpp.xmpp", "mls_xmpp.storage", "mls_xmpp.workers")
#: ``os`` attributes that read the environment or act on processes.
FORBIDDEN_OS = frozenset({
    "environ", "environb", "getenv", "putenv", "unsetenv", "fork", "forkpty",
    "register_at_fork", "system", "popen", "kill", "killpg", "execv", "execve", "execl",
    "spawnv", "spawnve", "posix_spawn", "posix_spawnp", "wait", "waitpid", "getpid",
})


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in FORBIDDEN_IMPORTS:
                out.append(f"{path.name}:{node.lineno}: imports {name}")
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "os" and node.attr in FORBIDDEN_OS):
            out.append(f"{path.name}:{node.lineno}: uses os.{node.attr}")
    return out


def test_core_sources_do_no_io_of_their_own() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 30
    found = [v for f in files for v in _violations(f)]
    assert found == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom concurrent.futures import ProcessPoolExecutor\n"
                   "import atexit\nx = os.environ.get('X')\n")
    assert len(_violations(bad)) == 3


def test_importing_the_core_loads_no_io_module() -> None:
    # ``import mls_xmpp`` registers the slixmpp plugin (the package's __init__,
    # as users expect); what is checked here is the core's own imports, so the
    # package shell is stood in for and its __init__ does not run.
    script = (
        "import importlib, importlib.util, pkgutil, sys, types\n"
        "spec = importlib.util.find_spec('mls_xmpp')\n"
        "shell = types.ModuleType('mls_xmpp')\n"
        "shell.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['mls_xmpp'] = shell\n"
        "import mls_xmpp.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'mls_xmpp.core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(','.join(m for m in {FORBIDDEN_LOADED!r} if m in sys.modules))\n"
    )
    root = str(CORE.parents[1])
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": root}, check=True)
    assert done.stdout.strip() == ""
