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
from vald.outputs import COUNTERFACTUAL, HEATMAP, INDUCED, INPUT, RESULT, UNCERTAINTY_PNG, write_atomic
from vald.render import CAUTION

REPORT = "report.html"
SHOWN_SETTINGS = ("mode", "reference", "strength", "guidance", "steps", "scheduler", "seeds", "backend", "precision")

_STYLE = """
body{font-family:system-ui,sans-serif;background:#111;color:#ddd;margin:1.5em}
.caution{background:#5a4500;color:#ffd54a;padding:.5em 1em;font-weight:bold}
.case{border-top:1px solid #444;padding:1em 0}
.row{display:flex;gap:1em;align-items:flex-start;flex-wrap:nowrap}
figure{margin:0;flex:1 1 0;min-width:0}figcaption{font-size:.85em;color:#aaa}
.stack{position:relative;display:inline-block;max-width:100%}
.stack img{display:block;max-height:420px;max-width:100%}
.stack img.heat{position:absolute;left:0;top:0;width:100%;height:100%}
img.panel{max-height:420px;max-width:100%;display:block}
.scale{display:flex;align-items:center;gap:.4em;font-size:.8em;color:#bbb;margin:.3em 0}
.scale .bar{width:12em;height:.8em;background:linear-gradient(to right,#053061,#4393c3,#f7f7f7,#d6604d,#67001f)}
.facts{font-size:.85em;color:#bbb}
table{border-collapse:collapse;font-size:.85em}td,th{padding:.15em .6em;text-align:left;border-bottom:1px solid #333}
.failed{color:#ff8a80}.status{font-size:.7em;color:#9ccc65;margin-left:.5em}
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
    schedule = result.get("schedule", {})
    if schedule:
        used = schedule.get("used_class", "")
        rows.append(
            (
                "sampler",
                f"{used} (for the folder's {schedule.get('folder_class')})" if schedule.get("substituted") else used,
            )
        )
    rows.append(("model sha256", str(result.get("model_sha256", ""))[:16]))
    rows.append(("vald", result.get("versions", {}).get("vald", "")))
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _meaning(result: dict[str, Any]) -> str:
    """What red and blue mean for this result's map."""
    settings = result.get("settings", {})
    if settings.get("task") == "induce":
        return "M = induced - input: red where the induced image is brighter, blue where it is darker"
    reference = str(settings.get("reference", "input"))
    return (
        f"M = {reference} - counterfactual: red where the {reference} is brighter than its normal counterfactual, "
        f"blue where it is darker"
    )


def _facts(result: dict[str, Any]) -> str:
    """Image facts a reader needs to trust the picture: modality, size, grey-level handling."""
    source = result.get("input", {})
    shape = source.get("shape", [])
    facts = [f"{shape[1]} x {shape[0]} pixels" if len(shape) == 2 else ""]
    dicom = source.get("dicom")
    if dicom:
        display = dicom.get("display", {})
        facts.append(f"{dicom.get('modality', '')} {dicom.get('photometric_interpretation', '')}")
        if display.get("monochrome1_inverted"):
            facts.append("MONOCHROME1, inverted for display")
        window = display.get("window_center_width")
        facts.append(f"window {window[0]:g}/{window[1]:g}" if window else f"grey levels: {display.get('voi', '')}")
    else:
        facts.append("image file (not DICOM)")
    return " · ".join(html.escape(f) for f in facts if f)


def _scale(result: dict[str, Any]) -> str:
    limit = float(result.get("display", {}).get("colour_limit", 0.0))
    return (
        f'<div class="scale"><span>-{limit:.3g}</span><span class="bar"></span><span>+{limit:.3g}</span>'
        f"<span>(colours saturate at ±{limit:.3g}, this input's 99.5th percentile of |M|)</span></div>"
    )


def _case(index: int, key: str, status: str, result: dict[str, Any]) -> str:
    generated = INDUCED if result.get("settings", {}).get("task") == "induce" else COUNTERFACTUAL
    heat_id = f"heat-{index}"
    sha = html.escape(str(result.get("input", {}).get("sha256", ""))[:16])
    note = "done earlier with the same settings" if status == Status.SKIPPED else status
    return f"""
<div class="case" id="case-{index}">
<h2>input #{index} <small>sha256 {sha}…</small><span class="status">{html.escape(note)}</span></h2>
<p class="facts">{_facts(result)}</p>
<div class="row">
<figure><img class="panel" src="{key}/{INPUT}" alt="input"><figcaption>input (as displayed)</figcaption></figure>
<figure><img class="panel" src="{key}/{generated}" alt="generated">
<figcaption>{html.escape(generated[:-4])}</figcaption></figure>
<figure><div class="stack"><img src="{key}/{INPUT}" alt="input"><img class="heat" id="{heat_id}" src="{key}/{HEATMAP}"
 alt="heat map" style="opacity:0.8"></div>
<figcaption>heat map: {html.escape(_meaning(result))}. Opacity
<input type="range" min="0" max="100" value="80" aria-label="heat-map opacity"
 oninput="setOpacity('{heat_id}', this.value)">{_scale(result)}</figcaption></figure>{_uncertainty(key, result)}
</div></div>"""


def _uncertainty(key: str, result: dict[str, Any]) -> str:
    """The uncertainty panel, when the input was averaged over seeds."""
    if "uncertainty" not in result:
        return ""
    seeds = len(result.get("settings", {}).get("seeds", []))
    return (
        f'\n<figure><img class="panel" src="{key}/{UNCERTAINTY_PNG}" alt="uncertainty">'
        f"<figcaption>uncertainty: per-pixel std of the map over {seeds} seeds "
        "(white = the colour limit of the heat map)</figcaption></figure>"
    )


def write_report(out_root: Path, summary: Summary) -> Path:
    """Write ``report.html`` for the summary's inputs (finished ones shown, failed ones listed)."""
    cases, failures, first = [], [], None
    for entry in summary.entries:
        if entry.status in (Status.DONE, Status.SKIPPED) and entry.output:
            try:
                result = json.loads((out_root / entry.output / RESULT).read_text())
            except (OSError, ValueError):
                continue
            first = first or result
            cases.append(_case(entry.index, entry.output, entry.status, result))
        elif entry.status in (Status.FAILED, Status.INTERRUPTED):
            sha = f" (sha256 {html.escape(entry.input_sha256[:12])})" if entry.input_sha256 else ""
            failures.append(f"<li>input #{entry.index}{sha}: {html.escape(entry.error or entry.status)}</li>")
    # one settings table: every case of a run shares the settings hash, so they are the same for all
    settings = f"<h2>Settings</h2>{_settings_table(first)}" if first else ""
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
{settings}
{failed}
{"".join(cases)}
</body></html>
"""
    path = out_root / REPORT
    write_atomic(path, page.encode("utf-8"))
    return path
