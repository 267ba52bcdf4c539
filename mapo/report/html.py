"""HTML for the static report: one self-contained ``index.html`` (inline CSS and JS).

Safety rules, because every string here may come from a model or a dataset:

- All text goes through :func:`esc` (``html.escape`` with quotes), in element
  content and in attribute values alike.
- The inline script never contains data. Filters read ``data-*`` attributes whose
  values were escaped like any other attribute.
- A Content-Security-Policy meta tag allows only our own script (by its SHA-256
  hash), images from files next to the page, and inline styles. If escaping were
  ever missed, an injected ``<script>`` or ``onerror=`` still would not run, and
  the page cannot fetch anything from the network.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mapo.metrics.records import PredictionRecord

# Colours of the zoom boxes, by turn index; the same palette is used by the PIL
# drawing code so that a turn's row and its box match.
BOX_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]
TARGET_COLOUR = "#ffe119"


def esc(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


@dataclass
class CardImages:
    """Asset paths (relative to index.html) for one trajectory card."""

    thumb: str | None = None  # input image with every box drawn
    crops: list[str | None] = field(default_factory=list)  # one per turn


@dataclass
class Figure:
    """One PNG on the page."""

    src: str  # path relative to index.html
    title: str  # what it shows, in words
    key: str = ""  # the logged metric key, shown in small print under the title (empty for histograms)


@dataclass
class Comparison:
    """Held-out evaluations before and after RL, as ``mapo.metrics.before_after.before_after`` tabulates them."""

    rows: list[dict[str, Any]]  # each: label, meaning, before, after, delta (None where undefined)
    verdict: str  # mapo.metrics.before_after.verdict's reading of the accuracy change ("" when n is unknown)
    n: int | None  # held-out samples per evaluation
    which: str = "validation"  # the evaluation set: "test" (measured once) or "validation" (settings chosen on it)
    dirs: tuple[str, str] = ("eval_before", "rl/eval")  # the two evaluation directories, relative to the demo


@dataclass
class Page:
    """Everything the page shows. A training run (``curves`` or ``other_curves`` non-empty) gets the
    run layout: summary, chosen curves, then everything else in closed ``<details>``; an eval
    directory gets statistics and histograms up front."""

    title: str
    source: str  # what the report was built from (shown in the header)
    stats: dict[str, Any]  # record_statistics(...)
    metrics: dict[str, Any] | None  # metrics.json as given, less its "run" block (that goes under config)
    plots: list[Figure]  # histograms of the records
    cards: list[str]  # rendered cards
    total_records: int
    notes: list[str] = field(default_factory=list)  # warnings shown at the top
    curves: list[Figure] = field(default_factory=list)  # the chosen training curves, in page order
    other_curves: list[Figure] = field(default_factory=list)  # every other logged metric
    comparison: Comparison | None = None
    final: list[tuple[str, str, float, float]] = field(default_factory=list)  # (title, key, x, value) at the last x
    x_label: str = "step"  # what x is in ``final`` and the curves
    config: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (heading, mapping), shown collapsed
    rollouts: str = ""  # rendered section of saved training rollouts (mapo.report.rollouts), "" when none

    @property
    def is_run(self) -> bool:
        return bool(self.curves or self.other_curves)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
header.top{background:#1f2937;color:#fff;padding:12px 20px}
header.top h1{margin:0;font-size:20px} header.top .src{opacity:.75;font-size:12px}
main{padding:12px 20px}
section,details.more{background:#fff;border-radius:6px;padding:10px 14px;margin-bottom:12px;box-shadow:0 1px 2px #0002}
details.more>summary{font-weight:600;cursor:pointer}
h2{font-size:16px;margin:4px 0 8px} h3{font-size:14px;margin:10px 0 4px}
table.cmp{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
table.cmp th,table.cmp td{padding:3px 14px 3px 0;text-align:right;vertical-align:top;border-bottom:1px solid #eee}
table.cmp th:first-child,table.cmp td:first-child{text-align:left}
.key{color:#777;font-size:11px;font-family:ui-monospace,monospace;font-weight:normal}
.verdict{margin:8px 0 2px}
table.kv{border-collapse:collapse;font-size:13px} table.kv td{padding:2px 10px 2px 0;vertical-align:top}
table.kv td.k{color:#555}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plots figure{margin:0} .plots img{width:336px;border:1px solid #ddd}
.plots figcaption{font-size:12px;color:#333;width:336px} .plots figcaption .key{display:block}
.note{background:#fff4d6;border-left:4px solid #e0a030;padding:6px 10px;margin:6px 0}
#filters{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:14px;align-items:center}
#filters input[type=search]{width:260px}
.card{background:#fff;border-radius:6px;margin-bottom:12px;box-shadow:0 1px 2px #0002;padding:10px 14px}
.card.hidden{display:none}
.card header{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap;font-size:13px;color:#555}
.card header .id{font-weight:600;color:#222}
.badge{border-radius:10px;padding:0 8px;font-size:12px;color:#fff}
.ok{background:#2a9d4b} .bad{background:#c8553d} .warn{background:#e0a030}
.q{margin:6px 0;white-space:pre-wrap}
.opts{margin:0 0 6px;padding-left:22px;font-size:13px}
.body{display:flex;gap:14px;align-items:flex-start;flex-wrap:wrap}
.thumb{margin:0} .thumb img{max-width:420px;border:1px solid #ccc;display:block} .thumb figcaption{font-size:11px;color:#666}
.missing{width:200px;height:120px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888;font-size:12px}
table.turns{border-collapse:collapse;font-size:13px;flex:1 1 420px}
table.turns th{text-align:left;font-weight:600;border-bottom:1px solid #ddd;padding:3px 6px}
table.turns td{border-bottom:1px solid #eee;padding:4px 6px;vertical-align:top}
table.turns img{max-width:128px;max-height:128px;border:1px solid #ccc}
td.adv{font-variant-numeric:tabular-nums;white-space:nowrap}
section#rollouts details.group{margin:10px 0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 10px}
section#rollouts details.group>summary{cursor:pointer;font-weight:600}
.chip{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.err{color:#c8553d} .score{font-variant-numeric:tabular-nums} .low{color:#c8553d;font-weight:600}
.desc{white-space:pre-wrap;overflow-wrap:anywhere} .said{color:#666;font-size:12px;overflow-wrap:anywhere}
.answer{margin-top:6px;font-size:13px}
pre.transcript{white-space:pre-wrap;background:#f7f7f9;padding:6px;font-size:12px;max-height:320px;overflow:auto}
"""

# The script reads only data-* attributes and form controls; it never receives data.
_JS = """
(function(){
  var cards=[].slice.call(document.querySelectorAll('.card'));
  var q=document.getElementById('f-search'), o=document.getElementById('f-outcome'),
      inv=document.getElementById('f-invalid'), low=document.getElementById('f-low'),
      thr=document.getElementById('f-threshold'), na=document.getElementById('f-noanswer'),
      shown=document.getElementById('f-shown');
  function apply(){
    var text=q.value.trim().toLowerCase(), t=parseFloat(thr.value), n=0;
    cards.forEach(function(c){
      var d=c.dataset, ok=true;
      if(o.value==='correct'&&d.correct!=='1') ok=false;
      if(o.value==='incorrect'&&d.correct!=='0') ok=false;
      if(inv.checked&&d.invalid==='0') ok=false;
      if(na.checked&&d.answered!=='0') ok=false;
      if(low.checked&&!(d.minscore!==''&&parseFloat(d.minscore)<t)) ok=false;
      if(text&&d.search.indexOf(text)<0) ok=false;
      c.classList.toggle('hidden',!ok); if(ok) n++;
    });
    shown.textContent=String(n);
  }
  [q,o,inv,low,thr,na].forEach(function(el){el.addEventListener('input',apply);el.addEventListener('change',apply);});
  // A link like index.html#outcome=incorrect&invalid=1&low=0.1&q=dog opens with those filters set.
  var h=new URLSearchParams(location.hash.slice(1));
  if(h.has('outcome')) o.value=h.get('outcome');
  if(h.has('q')) q.value=h.get('q');
  inv.checked=h.get('invalid')==='1'; na.checked=h.get('noanswer')==='1';
  if(h.has('low')){ low.checked=true; thr.value=h.get('low'); }
  apply();
  window.addEventListener('load',function(){
    var imgs=[].slice.call(document.querySelectorAll('main img')), broken=0;
    imgs.forEach(function(i){ if(!i.complete||i.naturalWidth===0) broken++; });
    document.body.setAttribute('data-images',String(imgs.length));
    document.body.setAttribute('data-images-broken',String(broken));
    if(broken){ var w=document.getElementById('broken-images'); w.textContent=broken+' image(s) failed to load: was the report moved without its assets folder?'; w.hidden=false; }
  });
})();
"""


def script_hash() -> str:
    """CSP source expression allowing exactly our inline script."""
    digest = hashlib.sha256(_JS.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def render_page(page: Page) -> str:
    csp = f"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src {script_hash()}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(page.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<header class="top"><h1>{esc(page.title)}</h1><div class="src">{esc(page.source)}</div></header>',
        "<main>",
        '<div class="note" id="broken-images" hidden></div>',
    ]
    parts += [f'<div class="note">{esc(n)}</div>' for n in page.notes]
    parts += _run_sections(page) if page.is_run else _eval_sections(page)
    if page.rollouts:
        parts.append(page.rollouts)
    if page.config:
        parts.append(_config_section(page.config))
    parts.append(_filters_section(len(page.cards), page.total_records))
    parts.append('<div id="cards">')
    parts += page.cards
    parts.append("</div></main>")
    parts.append(f"<script>{_JS}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _eval_sections(page: Page) -> list[str]:
    """An eval directory: its statistics and histograms describe the cards below, so they lead."""
    out = [f'<section id="summary"><h2>Summary</h2>{_stats_tables(page)}</section>']
    if page.plots:
        out.append(f'<section id="plots"><h2>Plots</h2>{_figures(page.plots)}</section>')
    return out


def _run_sections(page: Page) -> list[str]:
    """A training run: the outcome, then a few curves; the long tail stays one click away."""
    out = [f'<section id="summary"><h2>Summary</h2>{_run_summary(page)}</section>']
    if page.curves:
        out.append(f'<section id="curves"><h2>Training curves</h2>{_figures(page.curves)}</section>')
    if page.other_curves:
        n = len(page.curves) + len(page.other_curves)
        above = f"<p>The {len(page.curves)} charted above are not repeated.</p>" if page.curves else ""
        out.append(_collapsed("all-metrics", f"All {n} logged metrics", above + _figures(page.other_curves)))
    if page.total_records:
        body = _stats_tables(page) + (_figures(page.plots) if page.plots else "")
        out.append(_collapsed("evaluation", "Statistics of the trajectories below", body))
    return out


def _run_summary(page: Page) -> str:
    if page.comparison is not None:
        return _comparison_table(page.comparison)
    if page.final:
        rows = [
            f'<tr><td>{esc(title)} <span class="key">{esc(key)}</span></td><td>{esc(_fmt(value))}</td>'
            f"<td>{esc(page.x_label)} {esc(_fmt(x))}</td></tr>"
            for title, key, x, value in page.final
        ]
        return (f"<h3>Key metrics at their last logged {esc(page.x_label)}</h3>"
                '<table class="cmp"><tr><th>metric</th><th>value</th><th>at</th></tr>' + "".join(rows) + "</table>")
    return "<p>None of the key metrics was logged; every logged metric is under the collapsed list below.</p>"


def _comparison_table(cmp: Comparison) -> str:
    n = f", {cmp.n} samples" if cmp.n else ""
    out = [
        f"<h3>{esc(cmp.which.capitalize())} set{esc(n)}: before RL (warm start, <code>{esc(cmp.dirs[0])}/</code>) → "
        f"after RL (<code>{esc(cmp.dirs[1])}/</code>)</h3>",
        '<table class="cmp"><tr><th>metric</th><th>before RL</th><th>after RL</th><th>change</th></tr>',
    ]
    for r in cmp.rows:
        out.append(
            f'<tr><td>{esc(r["label"])} <span class="key">{esc(r["meaning"])}</span></td>'
            f'<td>{_num(r["before"])}</td><td>{_num(r["after"])}</td><td>{_num(r["delta"], signed=True)}</td></tr>'
        )
    out.append("</table>")
    if cmp.verdict:
        out.append(f'<p class="verdict">{esc(cmp.verdict)}</p>')
    return "\n".join(out)


def _stats_tables(page: Page) -> str:
    """record_statistics over every record, then metrics.json (the benchmark's official numbers live there)."""
    rows = [(k, v) for k, v in page.stats.items() if not isinstance(v, dict)]
    finish = page.stats.get("finish_reasons") or {}
    rows.append(("finish_reasons", ", ".join(f"{k}: {v}" for k, v in finish.items()) or "none"))
    out = _kv_table(rows)
    if page.metrics:
        out += "<h3>metrics.json</h3>" + _kv_table(_flat(page.metrics))
    return out


def _config_section(tables: Sequence[tuple[str, dict[str, Any]]]) -> str:
    body = "".join(f"<h3>{esc(name)}</h3>" + _kv_table(_flat(data)) for name, data in tables)
    return _collapsed("config", "Run config", body)


def _collapsed(id_: str, summary: str, body: str) -> str:
    """A closed ``<details>``: one click away for whoever needs it, out of the way of whoever reads top-down."""
    return f'<details class="more" id="{esc(id_)}"><summary>{esc(summary)}</summary>{body}</details>'


def _figures(figs: Sequence[Figure]) -> str:
    out = []
    for f in figs:
        key = f'<span class="key">{esc(f.key)}</span>' if f.key else ""
        img = f'<img src="{esc(f.src)}" alt="{esc(f.title)}">'
        out.append(f"<figure>{img}<figcaption>{esc(f.title)}{key}</figcaption></figure>")
    return '<div class="plots">' + "".join(out) + "</div>"


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(f'<tr><td class="k">{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>' for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _filters_section(n_cards: int, total: int) -> str:
    return (
        '<section id="filters">'
        '<label>outcome <select id="f-outcome"><option value="all">all</option>'
        '<option value="correct">correct</option><option value="incorrect">incorrect</option></select></label>'
        '<label><input type="checkbox" id="f-invalid"> has invalid calls</label>'
        '<label><input type="checkbox" id="f-noanswer"> no answer</label>'
        '<label><input type="checkbox" id="f-low"> semantic score below '
        '<input type="number" id="f-threshold" value="0.2" step="0.05" style="width:5em"></label>'
        '<input type="search" id="f-search" placeholder="search question, answer, descriptions">'
        f'<span>showing <b id="f-shown">{n_cards}</b> of {n_cards} trajectories'
        + (f" (first {n_cards} of {total} records)" if total > n_cards else "")
        + "</span></section>"
    )


def render_card(rec: PredictionRecord, images: CardImages, low_score: float = 0.2, *, kind: str = "") -> str:
    """One trajectory: header, question, image with boxes, turn table, answer, transcript.

    ``kind`` is an extra CSS class (``rollout``: a saved training rollout, :mod:`mapo.report.rollouts`).
    """
    scores = rec.semantic_scores
    min_score = f"{min(scores):.4f}" if scores else ""
    search = " ".join(
        [rec.id, rec.source, rec.category or "", rec.question, rec.answer, rec.prediction or "", *rec.options]
        + [t.description or "" for t in rec.turns]
        + [t.label or "" for t in rec.turns]
    ).lower()[:4000]
    attrs = {
        "class": f"card {kind}".strip(),
        "id": f"card-{rec.id}",
        "data-correct": "1" if rec.correct else "0",
        "data-invalid": str(rec.invalid_calls),
        "data-answered": "0" if rec.prediction is None else "1",
        "data-minscore": min_score,
        "data-search": search,
    }
    out = ["<article " + " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items()) + ">"]
    out.append(_card_header(rec))
    out.append(f'<div class="q">{esc(rec.question)}</div>')
    if rec.options:
        out.append('<ol class="opts" type="A">' + "".join(f"<li>{esc(o)}</li>" for o in rec.options) + "</ol>")
    out.append('<div class="body">')
    out.append(_thumb(rec, images.thumb))
    out.append(_turn_table(rec, images.crops, low_score))
    out.append("</div>")
    verdict = '<span class="badge ok">correct</span>' if rec.correct else '<span class="badge bad">wrong</span>'
    pred = "<i>no answer</i>" if rec.prediction is None else f"<b>{esc(rec.prediction)}</b>"
    out.append(f'<div class="answer">prediction {pred} · truth <b>{esc(rec.answer)}</b> {verdict}</div>')
    transcript = "\n\n".join(f"--- assistant turn {i} ---\n{t.text}" for i, t in enumerate(rec.turns))
    out.append(f'<details><summary>transcript</summary><pre class="transcript">{esc(transcript)}</pre></details>')
    out.append("</article>")
    return "\n".join(out)


def _card_header(rec: PredictionRecord) -> str:
    bits = [f'<span class="id">#{esc(rec.id)}</span>', f"<span>{esc(rec.source)}</span>"]
    if rec.category:
        bits.append(f"<span>{esc(rec.category)}</span>")
    bits.append('<span class="badge ok">correct</span>' if rec.correct else '<span class="badge bad">wrong</span>')
    if rec.invalid_calls:
        bits.append(f'<span class="badge warn">{rec.invalid_calls} invalid call(s)</span>')
    bits.append(f"<span>finish: {esc(rec.finish_reason)}</span>")
    bits.append(f"<span>{rec.tool_calls} tool call(s)</span>")
    train = rec.meta.get("train") if isinstance(rec.meta.get("train"), dict) else None
    if train is not None:  # a saved training rollout: its member index and outcome reward R_i
        bits.append(f"<span>member {esc(train.get('member'))}</span>")
        bits.append(f"<span>reward R = {esc(_fmt(train.get('reward')))}</span>")
    return "<header>" + "".join(bits) + "</header>"


def _thumb(rec: PredictionRecord, thumb: str | None) -> str:
    w, h = rec.image_size
    cap = f"original {w}×{h}, model view {rec.view_size[0]}×{rec.view_size[1]}"
    if rec.target_boxes:
        cap += " · target boxes in yellow"
    if thumb is None:
        return f'<figure class="thumb"><div class="missing">image not available</div><figcaption>{esc(cap)}</figcaption></figure>'
    return f'<figure class="thumb"><img src="{esc(thumb)}" alt="input image"><figcaption>{esc(cap)}</figcaption></figure>'


def _turn_table(rec: PredictionRecord, crops: list[str | None], low_score: float) -> str:
    if not rec.turns:
        return '<p class="err">no assistant turns recorded</p>'
    with_adv = any(t.advantage is not None for t in rec.turns)  # a training rollout: the credit each turn got
    out = ['<table class="turns"><tr><th>turn</th><th>tool call</th><th>crop</th><th>description</th><th>score</th>'
           + ("<th>advantage</th>" if with_adv else "") + "</tr>"]
    for i, turn in enumerate(rec.turns):
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        if not turn.tool_call:
            said = turn.text if len(turn.text) <= 160 else turn.text[:160] + "…"
            call = f'<i>no tool call</i><div class="said">{esc(said)}</div>'
            if turn.error:  # e.g. a call the loop did not execute because the episode ended
                call += f'<div class="err">{esc(turn.error)}</div>'
        elif turn.valid and turn.bbox_original is not None:
            box = ", ".join(f"{v:.0f}" for v in turn.bbox_original)
            call = f'<span class="chip" style="background:{colour}"></span>[{esc(box)}]'
            if turn.label:
                call += f"<br>label: {esc(turn.label)}"
        elif turn.valid:  # a tool that selects no region (e.g. rotate): its name and arguments
            call = _call_text(turn.tool, turn.args)
        else:
            call = f'<span class="err">invalid: {esc(turn.error or "rejected")}</span>'
        crop = crops[i] if i < len(crops) else None
        crop_html = f'<img src="{esc(crop)}" alt="crop {i}">' if crop else ""
        desc = "" if turn.description is None else esc(turn.description)
        if turn.semantic_score is None:
            score = ""
        else:
            cls = "score low" if turn.semantic_score < low_score else "score"
            score = f'<span class="{cls}">{turn.semantic_score:.3f}</span>'
        adv = ""
        if with_adv:
            adv = "<td></td>" if turn.advantage is None else f'<td class="adv">{turn.advantage:+.3f}</td>'
        out.append(
            f"<tr><td>{i}</td><td>{call}</td><td>{crop_html}</td>"
            f'<td class="desc">{desc}</td><td>{score}</td>{adv}</tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def _call_text(tool: str | None, args: dict[str, Any] | None) -> str:
    """``tool_name {"angle": 90}``, escaped; the arguments cut to 200 characters."""
    text = json.dumps(args, ensure_ascii=False, sort_keys=True) if args is not None else ""
    text = text if len(text) <= 200 else text[:199] + "…"
    return f'<span class="key">{esc(tool or "tool")}</span> {esc(text)}'


def _num(value: float | None, signed: bool = False) -> str:
    """Three decimals, like summary.md; n/a where a ratio had no denominator."""
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "n/a"
    return str(value)


def _flat(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k}/")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows
