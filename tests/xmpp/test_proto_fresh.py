"""The checked-in protobuf modules match what scripts/gen_proto.py generates now.

Regenerate with ``python scripts/gen_proto.py`` after editing ``proto/``. The
output embeds the protoc version, so the ``test`` extra pins grpcio-tools.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import mls_xmpp

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_proto.py"
#: The package under test: the checkout, or the installed wheel (bin/test).
PACKAGE = Path(mls_xmpp.__file__ or "").resolve().parent
CHECKED_IN = PACKAGE / "_proto"
SCHEMAS = ("envelope", "content", "keypackage")

try:
    importlib.import_module("grpc_tools.protoc")
    HAVE_GRPC_TOOLS = True
except ImportError:
    HAVE_GRPC_TOOLS = False

needs_grpc_tools = pytest.mark.skipif(
    not HAVE_GRPC_TOOLS, reason="grpcio-tools is not installed (pip install -e .[test])"
)


def _generated(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.name.endswith(("_pb2.py", "_pb2.pyi"))
    }


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@needs_grpc_tools
def test_checked_in_modules_are_byte_for_byte_fresh(tmp_path: Path) -> None:
    result = _run("--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    fresh = _generated(tmp_path)
    checked_in = _generated(CHECKED_IN)
    assert sorted(fresh) == sorted(checked_in), "run: python scripts/gen_proto.py"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"stale generated modules {stale}; run: python scripts/gen_proto.py"


@needs_grpc_tools
def test_check_mode_reports_fresh_and_stale(tmp_path: Path) -> None:
    assert _run("--check", "--out", str(CHECKED_IN)).returncode == 0
    assert _run("--out", str(tmp_path)).returncode == 0
    victim = tmp_path / "mls_xmpp" / "v1" / "envelope_pb2.py"
    victim.write_bytes(victim.read_bytes() + b"# edited\n")
    result = _run("--check", "--out", str(tmp_path))
    assert result.returncode == 1
    assert "differs: mls_xmpp/v1/envelope_pb2.py" in result.stderr


def test_every_schema_has_a_module_and_a_stub() -> None:
    names = set(_generated(CHECKED_IN))
    for schema in SCHEMAS:
        assert f"mls_xmpp/v1/{schema}_pb2.py" in names
        assert f"mls_xmpp/v1/{schema}_pb2.pyi" in names
        assert (ROOT / "proto" / "mls_xmpp" / "v1" / f"{schema}.proto").is_file()


def test_generated_modules_import_cleanly_with_installed_runtime() -> None:
    """A fresh interpreter imports them with warnings as errors (runtime/gencode skew)."""
    code = (
        "from mls_xmpp._proto.mls_xmpp.v1 import content_pb2, envelope_pb2, keypackage_pb2\n"
        "assert envelope_pb2.Envelope.DESCRIPTOR.full_name == 'mls_xmpp.v1.Envelope'\n"
        "assert content_pb2.Content.DESCRIPTOR.full_name == 'mls_xmpp.v1.Content'\n"
        "kp = keypackage_pb2.KeyPackageItem\n"
        "assert kp.DESCRIPTOR.full_name == 'mls_xmpp.v1.KeyPackageItem'\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_core_does_not_import_protobuf_or_slixmpp() -> None:
    sources = sorted((PACKAGE / "core").rglob("*.py"))
    assert len(sources) > 20  # the whole core, not an empty directory
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in sources
        for line in p.read_text(encoding="utf-8").splitlines()
        if line.lstrip().startswith(("import ", "from "))
        and any(name in line for name in ("google.protobuf", "slixmpp", "_proto"))
    ]
    assert not offenders
