"""``mls-xmpp doctor``'s verdict and report, from given results (no server).

The checks themselves run against real servers in tests/integration/test_doctor.py.
"""

from __future__ import annotations

import json
from typing import Any, cast

from mls_xmpp.doctor import (
    CHECKS,
    CheckResult,
    DoctorOptions,
    exit_status,
    render_json,
    render_table,
)

OPTIONS = DoctorOptions(account="a@example.org", password="pw", host="xmpp.example.org",
                        port=5222)


def _results(**outcomes: str) -> list[CheckResult]:
    """Every check passed, except ``name=result`` overrides (``fail``/``skip``)."""
    out = []
    for spec in CHECKS:
        result = outcomes.get(spec.name.replace("-", "_"), "pass")
        out.append(CheckResult(spec.name, spec.title, spec.required, cast(Any, result),
                               f"detail of {spec.name}",
                               None if result == "pass" else spec.fix))
    return out


def test_every_check_has_a_fix_for_both_servers() -> None:
    assert len({spec.name for spec in CHECKS}) == len(CHECKS)
    for spec in CHECKS:
        assert spec.fix.prosody and spec.fix.ejabberd, spec.name


def test_a_missing_recommended_feature_warns_and_exits_0() -> None:
    results = _results(stream_management="fail", http_upload="fail")
    assert exit_status(results) == 0
    text = render_table(OPTIONS, results)
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():  # the table's rows (the fixes below repeat the names)
        if line.split()[:1] and line.split()[0] in {s.name for s in CHECKS}:
            rows.setdefault(line.split()[0], line.split())
    assert rows["stream-management"][1:3] == ["recommended", "WARN"]
    assert rows["http-upload"][1:3] == ["recommended", "WARN"]
    assert "mod_stream_mgmt" in text and "http_file_share" in text  # the fixes are shown
    assert "recommended but missing: stream-management, http-upload" in text
    assert text.splitlines()[-1] == "doctor: OK"


def test_a_failed_or_skipped_required_check_exits_1_and_is_named() -> None:
    results = _results(muc_mam="fail", pep="fail", pep_max_items="skip")
    assert exit_status(results) == 1
    text = render_table(OPTIONS, results)
    assert text.splitlines()[-1] == "doctor: FAILED (required: muc-mam, pep, pep-max-items)"
    assert "muc_mam" in text and 'plugins: ["flat", "pep"]' in text
    report = json.loads(render_json(OPTIONS, results, ["an upload stays"]))
    assert report["ok"] is False and report["left_behind"] == ["an upload stays"]
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["muc-mam"]["label"] == "FAIL"
    assert by_name["pep-max-items"]["label"] == "SKIP"
    assert by_name["login"]["fix"] is None


def test_all_passed_exits_0_without_fixes() -> None:
    results = _results()
    assert exit_status(results) == 0
    text = render_table(OPTIONS, results)
    assert "To fix:" not in text
    required = sum(spec.required for spec in CHECKS)
    assert f"{required}/{required} required checks passed" in text
    assert json.loads(render_json(OPTIONS, results))["ok"] is True
