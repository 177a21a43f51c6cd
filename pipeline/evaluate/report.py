"""The evaluation report: `report.html` (self-contained) beside `metrics.json` in the
`evaluate/<modality>` stage folder.

Rendered from the same dict the stage writes as `metrics.json`:

    {"modality": str, "run_id": str, "metrics": {name: float | None},
     "details": {...},            # the modality's figures (per class, curves, threshold)
     "samples": [{"prompt", "continuation", "reference"}],   # modalities with samples
     "gates": [GateResult.to_dict(), ...],
     "history": [{"epoch", "train_loss", "val_loss", ...}],   # train/<modality> result.json
     "checkpoint": url, "checkpoint_digest": sha256, "data_digest": str, "rows": {...}}

Every chart is inline SVG (pipeline.html); the page makes no external requests and needs
no script. Sections: headline figures, gates, the modality's own section (its spec's
`report_section`: text samples; images' per-class table and confusion heatmap;
transactions' ROC and PR curves with the threshold), training curves, lineage. A report of
a stage that did not publish (a gate failed) carries a banner saying so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline import html as H
from pipeline.storage import Location


def _value(v: Any) -> Any:
    return "undefined" if v is None else v


def _number(v: Any) -> float:
    """A plottable number: undefined (None, NaN) figures plot as 0."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0


def _gates(gates: Sequence[Mapping[str, Any]]) -> H.Html:
    if not gates:
        return H.paragraph("No gate applies to this modality's figures.", "muted")
    rows = [[H.Html(f'<span class="{"pass" if g["passed"] else "fail"}">'
                    f'{"pass" if g["passed"] else "FAIL"}</span>'), g["gate"], g["figure"],
             g["value"] if g["value"] is not None
             else f'undefined: {g.get("undefined") or "null or NaN"}',
             f'{g["op"]} {g["threshold"]:g}'] for g in gates]
    return H.table(rows, ["", "gate", "figure", "value", "passes when"])


def _history(history: Sequence[Mapping[str, float]]) -> list[H.Html]:
    if not history:
        return [H.paragraph("No training history recorded.", "muted")]
    epochs = [float(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    series = {name: (epochs, [float(h.get(key, float("nan"))) for h in history])
              for name, key in (("train loss", "train_loss"), ("val loss", "val_loss"))
              if any(key in h for h in history)}
    keys = sorted({k for h in history for k in h if k.startswith(("train_", "val_"))})
    rows = [[int(e), *(h.get(k) for k in keys)] for e, h in zip(epochs, history, strict=True)]
    return [H.line_chart(series, title="training curves", x_label="epoch",
                         y_label="loss"), H.table(rows, ["epoch", *keys])]


def text_section(report: Mapping[str, Any]) -> list[H.Html]:
    samples = report.get("samples") or []
    if not samples:
        return [H.paragraph("No samples generated (evaluate.num_samples = 0).", "muted")]
    rows = [[s["prompt"], s["continuation"], s["reference"]] for s in samples]
    return [H.paragraph(f"{len(samples)} continuations sampled from test-split prompts "
                        f"(temperature {report.get('sampling', {}).get('temperature')})."),
            H.table(rows, ["prompt", "model continuation", "actual text"], css_class="pair")]


def image_section(report: Mapping[str, Any]) -> list[H.Html]:
    details: Mapping[str, Any] = report.get("details", {})
    labels = list(details.get("labels", []))
    per_class = list(details.get("per_class", []))
    out = [H.bar_chart(labels, [_number(r.get("f1")) for r in per_class],
                       title="F1 per class", y_label="F1"),
           H.table([{k: _value(v) for k, v in r.items()} for r in per_class],
                   ["label", "precision", "recall", "f1", "support"], "per-class figures")]
    if details.get("confusion"):
        out.append(H.heatmap(details["confusion"], labels, labels, title="confusion matrix",
                             x_label="predicted class", y_label="true class"))
    return out


def transaction_section(report: Mapping[str, Any]) -> list[H.Html]:
    d, m = report.get("details", {}), report.get("metrics", {})
    roc, pr = d.get("roc", {}), d.get("pr", {})
    out = [H.paragraph(f"Decision threshold {H.fmt(m.get('threshold'))} "
                       f"({d.get('threshold_source', '')}); on test: precision "
                       f"{H.fmt(_value(m.get('precision')))}, recall "
                       f"{H.fmt(_value(m.get('recall')))}, F1 {H.fmt(_value(m.get('f1')))}.")]
    if roc.get("fpr"):
        out.append(H.line_chart({f"ROC-AUC {H.fmt(_value(m.get('roc_auc')), 3)}":
                                 (roc["fpr"], roc["tpr"]), "chance": ([0.0, 1.0], [0.0, 1.0])},
                                title="ROC curve (test)", x_label="false positive rate",
                                y_label="true positive rate", y_range=(0.0, 1.0)))
    if pr.get("recall"):
        rate = m.get("fraud_rate") or 0.0
        out.append(H.line_chart({f"PR-AUC {H.fmt(_value(m.get('pr_auc')), 3)}":
                                 (pr["recall"], pr["precision"]),
                                 "base rate": ([0.0, 1.0], [rate, rate])},
                                title="precision-recall curve (test)", x_label="recall",
                                y_label="precision", y_range=(0.0, 1.0),
                                vlines=[(m["recall"], "at threshold")]
                                if m.get("recall") is not None else []))
    if not roc.get("fpr") and not pr.get("recall"):
        out.append(H.paragraph("No curves: the test split lacks one of the classes.",
                               "muted"))
    out.append(H.key_values(d.get("at_threshold", {}), "test confusion at the threshold"))
    return out


def render_evaluation_html(report: Mapping[str, Any], banner: str | None = None) -> H.Html:
    """The report page of one modality; `banner` (e.g. "this stage did not publish: ...")
    is shown first, in red."""
    from pipeline import modalities

    modality = str(report["modality"])
    spec = modalities.get(modality).evaluation
    metrics = report.get("metrics", {})
    shown = spec.headline if spec is not None else ()
    headline = {k: _value(metrics.get(k)) for k in shown if k in metrics}
    body: list[H.Html] = [H.paragraph(banner, "fail banner")] if banner else []
    body += [H.section("headline figures (test split)", H.key_values(headline)),
             H.section("gates", _gates(report.get("gates", [])))]
    if spec is not None and spec.report_section is not None:
        title, section = spec.report_section
        body.append(H.section(title, *section(report)))
    body.append(H.section("training", *_history(report.get("history", []))))
    lineage = {"checkpoint": report.get("checkpoint"),
               "model.pt sha256": report.get("checkpoint_digest"),
               "data manifest digest": report.get("data_digest"),
               **{f"{k} rows": v for k, v in report.get("rows", {}).items()}}
    body.append(H.section("lineage", H.key_values(lineage)))
    title = f"Evaluation: {modality}" + (f" — run {report['run_id']}" if report.get("run_id")
                                          else "")
    return H.page(title, *body, subtitle=report.get("summary", ""))


def write_evaluation_report(report: Mapping[str, Any], html: Location, json: Location,
                            banner: str | None = None) -> None:
    """Write the HTML page and the JSON figures, each to a temporary name first."""
    html.write_bytes(render_evaluation_html(report, banner).encode("utf-8"))
    json.write_json(dict(report))
