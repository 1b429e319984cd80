"""A static HTML report of a run: per input, input | counterfactual | heat map with an opacity slider.

One self-contained page beside the outputs: no network, no external scripts or styles (a Content
Security Policy forbids any), images referenced by relative paths into each output folder.  Inputs
are named by index and hash, as in the summary.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from vald.batch import Status, Summary
from vald.outputs import COUNTERFACTUAL, HEATMAP, INDUCED, INPUT, RESULT, write_atomic
from vald.render import CAUTION

REPORT = "report.html"
SHOWN_SETTINGS = ("mode", "reference", "strength", "guidance", "steps", "scheduler", "seeds", "backend", "precision")

_STYLE = """
body{font-family:system-ui,sans-serif;background:#111;color:#ddd;margin:1.5em}
.caution{background:#5a4500;color:#ffd54a;padding:.5em 1em;font-weight:bold}
.case{border-top:1px solid #444;padding:1em 0}
.row{display:flex;gap:1em;align-items:flex-start;flex-wrap:wrap}
figure{margin:0}figcaption{font-size:.85em;color:#aaa}
.stack{position:relative;display:inline-block}
.stack img{display:block;max-height:420px}
.stack img.heat{position:absolute;left:0;top:0;width:100%;height:100%}
img.panel{max-height:420px;display:block}
table{border-collapse:collapse;font-size:.85em}td,th{padding:.15em .6em;text-align:left;border-bottom:1px solid #333}
.failed{color:#ff8a80}
"""

_SCRIPT = """
function setOpacity(id, value){document.getElementById(id).style.opacity = value / 100;}
window.addEventListener('load', function(){
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""


def _settings_table(result: dict[str, Any]) -> str:
    settings = result.get("settings", {})
    rows = [(k, settings[k]) for k in SHOWN_SETTINGS if k in settings]
    rows.append(("model sha256", str(result.get("model_sha256", ""))[:16]))
    rows.append(("vald", result.get("versions", {}).get("vald", "")))
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _case(index: int, key: str, result: dict[str, Any]) -> str:
    generated = INDUCED if result.get("settings", {}).get("task") == "induce" else COUNTERFACTUAL
    heat_id = f"heat-{index}"
    sha = html.escape(str(result.get("input", {}).get("sha256", ""))[:16])
    return f"""
<div class="case" id="case-{index}">
<h2>input #{index} <small>sha256 {sha}…</small></h2>
<div class="row">
<figure><img class="panel" src="{key}/{INPUT}" alt="input"><figcaption>input (as displayed)</figcaption></figure>
<figure><img class="panel" src="{key}/{generated}" alt="generated">
<figcaption>{html.escape(generated[:-4])}</figcaption></figure>
<figure><div class="stack"><img src="{key}/{INPUT}" alt="input"><img class="heat" id="{heat_id}" src="{key}/{HEATMAP}"
 alt="heat map" style="opacity:0.8"></div>
<figcaption>heat map (red: brighter in the input) - opacity
<input type="range" min="0" max="100" value="80" aria-label="heat-map opacity"
 oninput="setOpacity('{heat_id}', this.value)"></figcaption></figure>
{_settings_table(result)}
</div></div>"""


def write_report(out_root: Path, summary: Summary) -> Path:
    """Write ``report.html`` for the summary's inputs (finished ones shown, failed ones listed)."""
    cases, failures = [], []
    for entry in summary.entries:
        if entry.status in (Status.DONE, Status.SKIPPED) and entry.output:
            try:
                result = json.loads((out_root / entry.output / RESULT).read_text())
            except (OSError, ValueError):
                continue
            cases.append(_case(entry.index, entry.output, result))
        elif entry.status in (Status.FAILED, Status.INTERRUPTED):
            failures.append(f"<li>input #{entry.index}: {html.escape(entry.error or entry.status)}</li>")
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts().items())
    ended = "interrupted (run the same command again to resume)" if summary.interrupted else "finished"
    failed = f'<h2 class="failed">Failed</h2><ul class="failed">{"".join(failures)}</ul>' if failures else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>vald report</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head>
<body>
<p class="caution">{html.escape(CAUTION)}. Research software: the maps show what the model changed, not a diagnosis.</p>
<h1>vald run</h1>
<p>started {html.escape(summary.started)}, {ended} {html.escape(summary.finished or "(running)")}: {counts}.
settings sha256 {html.escape(summary.settings_sha256[:16])}</p>
{failed}
{"".join(cases)}
</body></html>
"""
    path = out_root / REPORT
    write_atomic(path, page.encode("utf-8"))
    return path
