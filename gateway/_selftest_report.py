"""The commissioning self-test's records and how they are shown: pure, no I/O.

A :class:`SelftestReport` holds one :class:`CheckResult` per check (``gateway._selftest`` runs
them). It renders three ways:

- :func:`render_text` — for the terminal, each check with its Chinese and English label,
  columns aligned by display width (a Chinese character takes two columns);
- :func:`render_json` — the enterprise's record, every measured value included;
- :func:`render_html` — the printable 调试报告: one self-contained file (inline CSS, no
  scripts, no external assets), every text escaped with ``html.escape``; each check is a table
  row ``<tr id="check-<id>" data-status="pass|warn|fail">``.
"""

from __future__ import annotations

import html
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from protocol import CST

__all__ = ["CheckResult", "SelftestReport", "Status", "render_html", "render_json",
           "render_text"]


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 - a status word, not a password
    WARN = "warn"          # passed, with something the technician should know (counts as passed)
    FAIL = "fail"


_WORDS = {Status.PASS: ("PASS", "通过"), Status.WARN: ("WARN", "注意"),
          Status.FAIL: ("FAIL", "失败")}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome. ``measured``: the values it saw (JSON-able: numbers, text, lists,
    objects), e.g. ``{"free_bytes": …}`` or a meter's point values by code."""

    id: str
    label_zh: str
    label_en: str
    status: Status
    detail: str
    measured: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label_zh": self.label_zh, "label_en": self.label_en,
                "status": self.status.value, "detail": self.detail,
                "measured": dict(self.measured), "seconds": round(self.seconds, 3)}


@dataclass(frozen=True, slots=True)
class SelftestReport:
    """A whole self-test run. Times are Unix seconds."""

    gateway: str
    unit: str
    config: str
    host: str
    version: str
    started: float
    finished: float
    checks: Sequence[CheckResult]

    @property
    def passed(self) -> bool:
        """True when no check failed (warnings do not fail a self-test)."""
        return all(c.status is not Status.FAIL for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(c.status is s for c in self.checks) for s in Status}

    def to_json_dict(self) -> dict[str, Any]:
        return {"kind": "kemon.selftest", "gateway": self.gateway, "unit": self.unit,
                "config": self.config, "host": self.host, "version": self.version,
                "started": _utc(self.started), "started_cst": _cst(self.started),
                "seconds": round(self.finished - self.started, 3),
                "passed": self.passed, "counts": self.counts(),
                "checks": [c.to_json_dict() for c in self.checks]}


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _cst(t: float) -> str:
    return datetime.fromtimestamp(t, CST).isoformat(timespec="seconds")


def render_json(report: SelftestReport) -> str:
    return json.dumps(report.to_json_dict(), ensure_ascii=False, indent=2) + "\n"


# --- text ---------------------------------------------------------------------------------

def _width(text: str) -> int:
    """Terminal columns ``text`` takes: wide and full-width characters (Chinese) take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, columns: int) -> str:
    return text + " " * max(0, columns - _width(text))


def render_text(report: SelftestReport) -> str:
    """The terminal report: a header, one line per check (status, label 中文 / English,
    detail) and the verdict."""
    when = datetime.fromtimestamp(report.started, CST).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"Kemon 网关调试自检 gateway selftest — {report.gateway} "
             f"(unit {report.unit})",
             f"{when} CST · {report.host} · kemon {report.version} · {report.config}", ""]
    labels = [f"{c.label_zh} {c.label_en}" for c in report.checks]
    columns = min(max((_width(t) for t in labels), default=0), 48)
    for check, label in zip(report.checks, labels, strict=True):
        en, zh = _WORDS[check.status]
        lines.append(f"{en} {zh}  {_pad(label, columns)}  {check.detail}")
    n = report.counts()
    verdict = "PASSED 通过" if report.passed else "FAILED 未通过"
    lines += ["", f"Result 结果: {verdict} — {n['pass']} passed 通过, {n['warn']} warnings 注意, "
                  f"{n['fail']} failed 失败 ({report.finished - report.started:.1f} s)"]
    return "\n".join(lines) + "\n"


# --- HTML ---------------------------------------------------------------------------------

_CSS = """
body{font-family:"Noto Sans CJK SC","Microsoft YaHei",system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em;margin-bottom:.2em}
table{border-collapse:collapse;width:100%;margin-top:1em}
th,td{border:1px solid #bbb;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#eee}
td.status{font-weight:bold;white-space:nowrap}
tr[data-status=pass] td.status{color:#176117}
tr[data-status=warn] td.status{color:#8a5a00;background:#fff6dd}
tr[data-status=fail] td.status{color:#a01010;background:#fde8e8}
.verdict{font-size:1.2em;font-weight:bold;padding:.4em .6em;display:inline-block}
.verdict.pass{background:#e3f4e3;color:#176117}
.verdict.fail{background:#fde8e8;color:#a01010}
table.kv{margin:0;width:auto;font-size:.85em;font-family:monospace}
table.kv th,table.kv td{border:none;padding:0 .6em 0 0;background:none;font-weight:normal}
table.kv th{color:#555}
table.kv table.kv{font-size:1em}
.meta td{border:none;padding:.1em .6em .1em 0}
.sign{margin-top:3em}
.sign span{display:inline-block;width:18em;border-top:1px solid #444;margin-right:3em;
 padding-top:.2em}
@media print{body{margin:1cm}}
"""


def _value_html(value: Any) -> str:
    if isinstance(value, Mapping):
        return '<table class="kv">' + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{_value_html(v)}</td></tr>"
            for k, v in value.items()) + "</table>"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "—"}[value]
    if isinstance(value, list | tuple):
        return html.escape(", ".join(str(v) for v in value))
    return html.escape(str(value))


def render_html(report: SelftestReport) -> str:
    """The 调试报告 as one self-contained HTML file."""
    e = html.escape
    n = report.counts()
    ok = report.passed
    rows = []
    for c in report.checks:
        en, zh = _WORDS[c.status]
        rows.append(
            f'<tr id="check-{e(c.id)}" data-status="{e(c.status.value)}">'
            f'<td class="status">{e(zh)} {e(en)}</td>'
            f"<td>{e(c.label_zh)}<br>{e(c.label_en)}</td>"
            f"<td>{e(c.detail)}</td>"
            f"<td>{_value_html(c.measured) if c.measured else ''}</td></tr>")
    meta = [("网关 Gateway", report.gateway), ("用能单位 Unit", report.unit),
            ("时间 Time", f"{_cst(report.started)} (UTC {_utc(report.started)})"),
            ("主机 Host", report.host), ("软件版本 Version", f"kemon {report.version}"),
            ("配置 Configuration", report.config)]
    verdict = ("通过 PASSED" if ok else "未通过 FAILED")
    return f"""<!DOCTYPE html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<title>{e(f"调试报告 Commissioning report — {report.gateway}")}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>网关调试报告 Gateway commissioning report</h1>
<table class="meta">
{"".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in meta)}
</table>
<p class="verdict {"pass" if ok else "fail"}">{e(verdict)}</p>
<p>{n["pass"]} 通过 passed · {n["warn"]} 注意 warnings · {n["fail"]} 失败 failed ·
{report.finished - report.started:.1f} s</p>
<table class="checks">
<thead><tr><th>结果 Result</th><th>检查项 Check</th><th>说明 Detail</th>
<th>测量值 Measured</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<p class="sign"><span>调试人员 Technician</span><span>企业确认 Enterprise</span></p>
</body>
</html>
"""
