"""The evaluation report: one self-contained HTML file and a Markdown summary.

The HTML embeds its plots as base64 PNGs and its CSS inline, and links nothing outside
itself, so it opens offline, from a CI artifact or an e-mail attachment alike. Figures are
drawn on `Figure` objects with the Agg canvas (no pyplot, no global backend switch, no
display needed). The Markdown holds the same tables minus the machine-dependent timings,
so it is stable across runs.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmfuse.evaluation.predict import FUSED, REFERENCE

Table = tuple[list[str], list[list[Any]]]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}
.flag{background:#fde2e1}.note{color:#555;font-size:.88rem;max-width:60rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #ddd;border-radius:.4rem;padding:.5rem .9rem}
.card b{display:block;font-size:1.3rem}img{max-width:100%;height:auto}
"""


def png_base64(fig: Figure) -> str:
    """Render a figure with Agg to a base64 PNG (no timestamp or software tag, so bytes are stable)."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _confusion_figure(matrix: list[list[int]], labels: list[str], title: str) -> Figure:
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    ax = fig.add_subplot()
    counts = np.asarray(matrix)
    image = ax.imshow(counts, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value > threshold else "black")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def _subset_figure(subsets: dict[str, dict[str, float]]) -> Figure:
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    names = list(subsets)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [subsets[n]["fused"] for n in names], 0.4, label="fusion model, subset masked in")
    ax.bar(x + 0.2, [subsets[n]["dedicated"] for n in names], 0.4, label="dedicated model")
    ax.set_xticks(x, names, rotation=20)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), title="Every modality subset")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _reliability_figure(calibration: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(8.5, 3.8), layout="constrained")
    for k, (key, title) in enumerate(
        (("before", "before scaling"), ("after", f"after T = {calibration['temperature']:.3f}"))
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        rows = calibration["reliability"][key]
        centres = [(r["lower"] + r["upper"]) / 2 for r in rows]
        width = rows[0]["upper"] - rows[0]["lower"]
        ax.bar(centres, [r["accuracy"] if r["count"] else 0 for r in rows], width * 0.95, label="accuracy", alpha=0.8)
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(f"{title} (ECE {calibration['ece_' + key]:.3f})", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    return fig


def _robustness_figure(curves: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(12, 3.4 * ((len(curves) + 2) // 3)), layout="constrained")
    for k, (name, curve) in enumerate(curves.items()):
        ax = fig.add_subplot((len(curves) + 2) // 3, 3, k + 1)
        levels = ["clean" if v is None else f"{v:g}" for v in curve["levels"]]
        for model, values in curve["accuracy"].items():
            style = "-o" if model == FUSED else "--s" if model == REFERENCE else ":^"
            ax.plot(range(len(values)), values, style, markersize=4, label=model)
        ax.set_xticks(range(len(levels)), levels, fontsize=8)
        ax.set(title=name, xlabel=curve["unit"], ylabel="accuracy (%)", ylim=(0, 100))
        ax.legend(fontsize=8)
    return fig


def _speaker_figure(speakers: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax = fig.add_subplot()
    names = list(speakers)
    models = list(next(iter(speakers.values()))["accuracy"])
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        ax.bar(
            np.arange(len(names)) + (k - (len(models) - 1) / 2) * width,
            [speakers[s]["accuracy"][model] for s in names],
            width,
            label=model,
        )
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 115), yticks=range(0, 101, 20), title="Per speaker")
    ax.legend(fontsize=7, ncols=len(models), loc="upper center")
    return fig


def figures(results: dict[str, Any]) -> dict[str, str]:
    """Every plot of the report, as base64 PNGs keyed by name."""
    fused = results["models"][FUSED]
    drawn = {
        "subsets": _subset_figure(results["subsets"]),
        "confusion": _confusion_figure(fused["confusion"], results["labels"], f"{FUSED} model, {results['split']}"),
        "reliability": _reliability_figure(results["calibration"]),
        "robustness": _robustness_figure(results["robustness"]),
    }
    if results["speakers"]:
        drawn["speakers"] = _speaker_figure(results["speakers"])
    return {name: png_base64(fig) for name, fig in drawn.items()}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def model_table(results: dict[str, Any]) -> Table:
    rows = [
        [
            name,
            "+".join(m["modalities"]),
            m["count"],
            m["accuracy"],
            m["macro_f1"],
            results["parameters"].get(name, {}).get("parameters"),
        ]
        for name, m in results["models"].items()
    ]
    return ["model", "modalities", "samples", "accuracy %", "macro-F1 %", "parameters"], rows


def subset_table(results: dict[str, Any]) -> Table:
    rows = [[name, s["fused"], s["dedicated"], s["gap_points"]] for name, s in results["subsets"].items()]
    return ["subset", "fusion model %", "dedicated model %", "gap (dedicated - fused)"], rows


def per_class_table(model: dict[str, Any]) -> Table:
    rows = [[label, c["precision"], c["recall"], c["f1"], c["support"]] for label, c in model["per_class"].items()]
    return ["class", "precision %", "recall %", "F1 %", "support"], rows


def confusion_table(model: dict[str, Any], labels: list[str]) -> Table:
    """The confusion matrix as a table (rows: actual, columns: predicted), cheaper than a figure per model."""
    return ["actual \\ predicted", *labels], [[label, *row] for label, row in zip(labels, model["confusion"])]


def robustness_table(results: dict[str, Any]) -> Table:
    rows = [
        [name, model, curve["accuracy"][model][0], curve["accuracy"][model][-1], s["relative"], s["effective"]]
        for name, curve in results["robustness"].items()
        for model, s in curve["summary"].items()
    ]
    return ["corruption", "model", "clean %", "worst level %", "relative robustness", "effective robustness"], rows


def speaker_table(results: dict[str, Any]) -> Table:
    speakers = results["speakers"]
    models = list(next(iter(speakers.values()))["accuracy"])
    rows = [
        [name, s["count"], *[s["accuracy"][m] for m in models], s["best_single"], s["fusion_worse"]]
        for name, s in speakers.items()
    ]
    return ["speaker", "samples", *models, "best single modality", "fusion worse"], rows


def complexity_table(results: dict[str, Any], measured: dict[str, Any]) -> Table:
    rows = [
        [
            name,
            counts["parameters"],
            counts["weights_mib"],
            measured["models"][name]["per_sample_ms"],
            measured["models"][name]["per_batch_ms"],
            measured["models"][name]["peak_inference_mib"],
        ]
        for name, counts in results["parameters"].items()
    ]
    batch = next(iter(measured["models"].values()))["batch_size"]
    header = [
        "model",
        "parameters",
        "weights MiB",
        "latency / sample ms",
        f"latency / batch of {batch} ms",
        "peak inference MiB",
    ]
    return header, rows


def _html_table(table: Table, flag_column: str | None = None) -> str:
    header, rows = table
    flag = header.index(flag_column) if flag_column else None
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    flagged = ' class="flag"'
    body = "".join(
        f"<tr{flagged if flag is not None and row[flag] is True else ''}>"
        + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _headline(results: dict[str, Any]) -> list[tuple[str, Any]]:
    h = results["headline"]
    return [
        ("fused accuracy %", h["fused_accuracy"]),
        ("fusion gain (points)", h["fusion_gain_points"]),
        ("worst subset gap (points)", h["worst_subset_gap_points"]),
        ("macro-F1 %", h["macro_f1"]),
        ("late-fusion reference %", h["late_fusion_accuracy"]),
        ("ECE before / after", f"{h['ece_before']:.4f} / {h['ece_after']:.4f}"),
        ("temperature", h["temperature"]),
        (f"served ({h['trust_method']}) %", h["robust_accuracy"]),
        ("corruption regret (points)", h["corruption_regret_points"]),
        ("clean inputs set aside", h["false_setaside_rate"]),
        *(
            [
                ("clean-input fused %", h["clean_input_fused_accuracy"]),
                ("clean-input served %", h["clean_input_robust_accuracy"]),
            ]
            if "clean_input_fused_accuracy" in h
            else []
        ),
        *(
            [
                ("recent-traffic fused %", h["recent_traffic_fused_accuracy"]),
                ("recent-traffic served %", h["recent_traffic_robust_accuracy"]),
            ]
            if "recent_traffic_fused_accuracy" in h
            else []
        ),
    ]


NOTES = {
    "subsets": "Each subset: the one fusion model with the other modalities masked out, vs a model trained on that subset "  # noqa: E501
    "alone. A positive gap means the dedicated model is better.",
    "calibration": "Temperature fitted on val by minimising the NLL (L-BFGS on log T), scored on test; ECE uses {bins} "
    "equal-width confidence bins. Scaling never changes a prediction, only its confidence.",
    "robustness": "Each corruption is applied to the raw test media (image: pixel noise, blur, occlusion; audio: white "
    "noise at an SNR relative to the clip; text: character typos), then preprocessed by the artifact's own pipeline. "
    f"'{REFERENCE}' is the reference: the mean log-probability of the three dedicated unimodal models. Relative "
    "robustness: area under the curve with severities spread over [0, 1] (mean accuracy over the noise range). "
    "Effective robustness: area between the curve and the reference curve shifted to the same clean accuracy "
    "(positive: degrades more gracefully than late fusion).",
    "speakers": "Per-speaker test accuracy of every model; a highlighted row is a speaker on whom the fusion model is "
    "below the best dedicated single-modality model.",
    "complexity": "Latency is the median wall time on this machine (torch threads: {threads}); peak inference memory "
    "is the resident memory one batch adds (Linux high-water mark after freed heap is returned to the OS). These vary "
    "between runs and are kept out of the DVC metrics.",
}


def render_html(results: dict[str, Any], measured: dict[str, Any], images: dict[str, str]) -> str:
    """The whole report as one HTML string (plots embedded, CSS inline, no external reference)."""
    cards = "".join(
        f'<div class="card">{html.escape(k)}<b>{html.escape(_fmt(v))}</b></div>' for k, v in _headline(results)
    )
    threads = next(iter(measured["models"].values()))["threads"]
    per_class = "".join(
        f"<details><summary>{html.escape(name)}</summary>{_html_table(per_class_table(m))}"
        f"{_html_table(confusion_table(m, results['labels']))}</details>"
        for name, m in results["models"].items()
        if name != FUSED
    )
    sections = [
        f"<h1>mmfuse evaluation ({html.escape(results['fusion'])} fusion, {html.escape(results['split'])} split)</h1>",
        f'<div class="cards">{cards}</div>',
        "<h2>Models</h2>", _html_table(model_table(results)),
        "<h2>Modality subsets</h2>", f'<p class="note">{html.escape(NOTES["subsets"])}</p>',
        _html_table(subset_table(results)), _img(images["subsets"], "subset accuracies"),
        "<h2>Confusion matrix and per-class scores</h2>", _img(images["confusion"], "confusion matrix"),
        _html_table(per_class_table(results["models"][FUSED])), "<p>Other models:</p>", per_class,
        "<h2>Calibration</h2>", f'<p class="note">{html.escape(NOTES["calibration"].format(bins=len(results["calibration"]["reliability"]["before"])))}</p>',  # noqa: E501
        _html_table((["", "ECE", "NLL"], [
            ["before", results["calibration"]["ece_before"], results["calibration"]["nll_before"]],
            ["after", results["calibration"]["ece_after"], results["calibration"]["nll_after"]],
        ])),
        _img(images["reliability"], "reliability diagram"),
        "<h2>Noise robustness</h2>", f'<p class="note">{html.escape(NOTES["robustness"])}</p>',
        _img(images["robustness"], "robustness curves"), _html_table(robustness_table(results)),
    ]  # fmt: skip
    if results["speakers"]:
        sections += [
            "<h2>Speakers</h2>", f'<p class="note">{html.escape(NOTES["speakers"])}</p>',
            _html_table(speaker_table(results), flag_column="fusion worse"), _img(images["speakers"], "per-speaker accuracy"),  # noqa: E501
        ]  # fmt: skip
    sections += [
        "<h2>Complexity</h2>", f'<p class="note">{html.escape(NOTES["complexity"].format(threads=threads))}</p>',
        _html_table(complexity_table(results, measured)),
        f"<p class=\"note\">Peak resident memory of the evaluate stage: {measured['process_peak_rss_mib']} MiB.</p>",
    ]  # fmt: skip
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>mmfuse evaluation</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def render_markdown(results: dict[str, Any]) -> str:
    """The summary tables in Markdown; no timings, so the file is identical across runs."""
    parts: list[str] = [f"# mmfuse evaluation ({results['fusion']} fusion, {results['split']} split)", ""]
    parts += [f"- **{k}**: {_fmt(v)}" for k, v in _headline(results)]
    parts += ["", "## Models", "", _md_table(model_table(results))]
    parts += ["", "## Modality subsets", "", NOTES["subsets"], "", _md_table(subset_table(results))]
    parts += ["", f"## Per-class scores ({FUSED})", "", _md_table(per_class_table(results["models"][FUSED]))]
    parts += ["", "## Robustness", "", NOTES["robustness"], "", _md_table(robustness_table(results))]
    if results["speakers"]:
        parts += ["", "## Speakers", "", NOTES["speakers"], "", _md_table(speaker_table(results))]
        worse = [s for s, v in results["speakers"].items() if v["fusion_worse"]]
        parts += ["", f"Fusion below the best single modality on: {', '.join(worse) if worse else 'no speaker'}."]
    return "\n".join(parts) + "\n"


def metrics_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics file: headline numbers, per subset, per model, robustness summaries, sizes."""
    return {
        **results["headline"],
        "subsets": results["subsets"],
        "models": {name: {k: m[k] for k in ("accuracy", "macro_f1", "count")} for name, m in results["models"].items()},
        "robustness": {name: curve["summary"] for name, curve in results["robustness"].items()},
        "speakers": {
            name: {
                "fused": s["accuracy"][FUSED],
                "best_single": s["accuracy"][s["best_single"]],
                "best_single_modality": s["best_single"],
                "fusion_worse": s["fusion_worse"],
            }
            for name, s in results["speakers"].items()
        },
        "complexity": results["parameters"],
        "trust": results["trust"],
        **{key: results[key] for key in ("clean_input", "recent_traffic") if results.get(key)},
    }
