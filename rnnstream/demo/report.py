"""The demo's outputs: one summary table for the terminal and an HTML report with PNG plots.

The table has one row per pipeline: the pipeline's primary metric on the held-out live stream for the
champion as the workers served it (stateful) and for a stateless baseline of the same size replayed over
the same events, end-to-end events/s through the workers, p50/p99 latency (broker append of an event to
broker append of its score), keys and state bytes held, and the recovery time after one worker was killed.

The report (``<data>/reports/demo-<time>/index.html``) adds per pipeline: every metric of both models on
the live stream and on the training hold-out, serving details, and plots (matplotlib Agg): scores over time
against the ground truth, PR curves (stateful vs stateless), a confusion matrix, throughput over time.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from rnnstream.demo.run import DemoResult, PipelineResult
from rnnstream.jobs import training_plots

COLUMNS = (
    ("pipeline", 18),
    ("metric", 9),
    ("stateful", 8),
    ("stateless", 9),
    ("events/s", 9),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("keys", 6),
    ("state KB", 8),
    ("recovery s", 10),
)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def table_rows(result: DemoResult) -> list[list[str]]:
    rows = []
    for r in result.pipelines:
        s = r.serving
        rows.append(
            [
                r.spec.name,
                r.primary,
                _fmt(r.live_metrics.get(r.primary)),
                _fmt(r.baseline_metrics.get(r.primary)),
                _fmt(s.events_per_s, ",.0f"),
                _fmt(s.latency_p50_ms, ".0f"),
                _fmt(s.latency_p99_ms, ".0f"),
                f"{s.keys:,}",
                _fmt(s.state_bytes / 1024, ",.1f"),
                _fmt(s.recovery_s, ".1f"),
            ]
        )
    return rows


def summary_table(result: DemoResult) -> str:
    """The terminal table (see the module docstring)."""
    header = [name for name, _ in COLUMNS]
    rows = table_rows(result)
    widths = [max(w, len(h), *(len(r[i]) for r in rows)) for i, (h, w) in enumerate(COLUMNS)]
    line = "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    for name, error in result.failures.items():
        out.append(f"{name.ljust(widths[0])}  FAILED: {error}"[: len(line)])
    return "\n".join(out)


def table_legend(result: DemoResult) -> str:
    s = result.settings
    kill = "one worker SIGKILLed mid-stream" if s.kill_worker else "no worker killed"
    return (
        f"stateful = the champion served live by {s.workers} Ray workers; stateless = a same-size model that "
        f"sees one event at a time, replayed on the same live events ({int(s.live_fraction * 100)}% of "
        f"{s.events:,} events per pipeline). events/s: backlog through the workers (consume, score, "
        f"write, commit); latency: event append -> score append at a steady rate; {kill}."
    )


# -------------------------------------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _event_label(r: PipelineResult) -> np.ndarray | None:
    label = r.live.truth.get("label")
    return None if label is None else np.asarray(label)


def _score_column(r: PipelineResult, outputs: np.ndarray) -> np.ndarray:
    """The per-event anomaly/positive score: error_z for forecast heads (what their metrics rank by)."""
    names = r.serving.output_names
    column = "error_z" if r.spec.model_config.head == "forecast" and "error_z" in names else names[0]
    return outputs[:, names.index(column)]


def pipeline_plots(r: PipelineResult) -> dict[str, bytes]:
    """PNG plots of one pipeline (name -> bytes)."""
    plots: dict[str, bytes] = {}
    head = r.spec.model_config.head
    out = r.serving.live_outputs
    present = ~np.isnan(out[:, 0])
    times = r.live.times_ms()[present]
    label = _event_label(r)
    if head == "multiclass" and label is not None:
        y = label[present].astype(np.int64)
        pred = out[present].argmax(1)
        base_pred = r.baseline_outputs[present].argmax(1)
        k = r.spec.model_config.num_classes
        names = _class_names(r)
        plots["confusion_matrix.png"] = training_plots.confusion_png(
            training_plots.confusion(np.clip(y, 0, k - 1), pred, k), "served (stateful): frames", names
        )
        plots["confusion_matrix_stateless.png"] = training_plots.confusion_png(
            training_plots.confusion(np.clip(y, 0, k - 1), base_pred, k), "stateless baseline: frames", names
        )
        plots["scores_over_time.png"] = _classes_over_time_png(r, times, y, pred, present)
    elif label is not None:
        y = (label[present] > 0).astype(np.int64)
        score = _score_column(r, out[present])
        base = _score_column(r, r.baseline_outputs[present])
        what = "error_z" if head == "forecast" else "score"
        plots["scores_over_time.png"] = training_plots.score_over_time_png(
            times,
            y,
            score,
            f"{r.spec.name}: served {what} over the live stream (red: ground truth positives)",
        )
        if 0 < y.sum() < len(y):
            plots["pr_curve.png"] = training_plots.pr_curve_png(
                y, {"stateful (served)": score, "stateless": base}, f"{r.spec.name}: per-event PR curve"
            )
            threshold = training_plots.best_f1_threshold(y, score)
            matrix = training_plots.confusion(y, (score >= threshold).astype(np.int64), 2)
            plots["confusion_matrix.png"] = training_plots.confusion_png(
                matrix, f"served, at the best-F1 {what} threshold {threshold:.3g}", ["normal", "positive"]
            )
    plots["throughput.png"] = _throughput_png(r)
    return plots


def _class_names(r: PipelineResult) -> list[str] | None:
    import importlib

    module = importlib.import_module(f"rnnstream.pipelines.{r.spec.name.replace('-', '_')}")
    names = getattr(module, "ACTIVITIES", None)
    return [str(n) for n in names] if names is not None else None


def _classes_over_time_png(
    r: PipelineResult, times: np.ndarray, y: np.ndarray, pred: np.ndarray, present: np.ndarray
) -> bytes:
    """For the busiest key: the true class and the served prediction of each event over time."""
    keys = np.asarray(r.live.table.column("key").to_pylist(), dtype=object)[present]
    uniq, counts = np.unique(keys, return_counts=True)
    mine = keys == uniq[counts.argmax()]
    t = (times[mine] - times[mine].min()) / 60_000.0
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.step(t, y[mine], where="post", label="ground truth", linewidth=2, alpha=0.6)
    ax.plot(t, pred[mine], ".", markersize=3, label="served prediction", color="tab:red")
    ax.set(
        xlabel="minutes into the live stream", ylabel="class", title=f"{r.spec.name}: {uniq[counts.argmax()]}"
    )
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def _throughput_png(r: PipelineResult) -> bytes:
    s = r.serving
    fig, ax = plt.subplots(figsize=(7, 3))
    if s.throughput:
        t, eps = zip(*s.throughput, strict=True)
        ax.plot(t, eps, color="tab:blue", label="events scored per second")
    if s.kill_at_s is not None:
        ax.axvline(s.kill_at_s, color="tab:red", linestyle="--", label=f"worker {s.killed_slot} killed")
        if s.recovery_s is not None:
            ax.axvspan(
                s.kill_at_s, s.kill_at_s + s.recovery_s, color="tab:red", alpha=0.15, label="recovering"
            )
    ax.set(xlabel="seconds since the workers started", ylabel="events/s", title=f"{r.spec.name}: throughput")
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


# --------------------------------------------------------------------------------------------------- HTML
def write_report(result: DemoResult, reports_dir: Path) -> Path:
    """Write ``reports_dir/demo-<UTC time>/index.html`` and its PNGs; returns the HTML path."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = Path(reports_dir) / f"demo-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for r in result.pipelines:
        images = []
        for name, data in pipeline_plots(r).items():
            file = f"{r.spec.name}-{name}"
            (folder / file).write_bytes(data)
            images.append(f'<img src="{file}" alt="{html.escape(name)}">')
        sections.append(_section(r, images))
    header = [name for name, _ in COLUMNS]
    summary = _html_table(header, table_rows(result))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rnnstream demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 48%; margin: 4px; border: 1px solid #eee; vertical-align: top; }}
.note {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>rnnstream demo</h1>
<p class="note">{html.escape(datetime.now(UTC).isoformat(timespec="seconds"))}: {len(result.pipelines)}
pipeline(s) in {result.seconds:.0f} s. MLflow store: <code>{html.escape(result.tracking_uri)}</code>
(open it with <code>rnnstream mlflow ui</code>).</p>
{summary}
<p class="note">{html.escape(table_legend(result))}</p>
{"".join(sections)}
{"".join(f"<h2>{html.escape(n)}: failed</h2><pre>{html.escape(e)}</pre>" for n, e in result.failures.items())}
</body></html>
"""
    path = folder / "index.html"
    path.write_text(page)
    return path


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_table(columns: dict[str, dict[str, float]]) -> str:
    names = sorted({k for m in columns.values() for k in m})
    rows = [[n, *(_fmt(m.get(n), ".4f") for m in columns.values())] for n in names]
    return _html_table(["metric", *columns], rows)


def _section(r: PipelineResult, images: list[str]) -> str:
    s = r.serving
    m = r.model
    trained = "reused (same data and settings)" if m.reused else f"trained in {m.seconds:.0f} s"
    facts = [
        ["model", f"rnnstream-{r.spec.name} version {m.version} @champion, {trained}"],
        ["MLflow run", m.run_id or "-"],
        ["workers / partitions", f"{s.workers} / {s.partitions}"],
        ["history events (backlog) / live events", f"{s.history_events:,} / {s.live_events:,}"],
        ["throughput through the workers", f"{_fmt(s.events_per_s, ',.0f')} events/s"],
        ["latency p50 / p99 (steady) / max (with the kill)",
         " / ".join(_fmt(v, ".0f") for v in (s.latency_p50_ms, s.latency_p99_ms, s.latency_max_ms)) + " ms"],
        ["keys held / state bytes allocated (slabs preallocated per partition)",
         f"{s.keys:,} / {s.state_bytes:,}"],
        ["state of one key (layers x hidden x float32, x2 for LSTM)",
         f"{int(np.prod(r.spec.model_config.state_shape)) * 4:,} bytes"],
        ["worker killed / recovery",
         f"slot {s.killed_slot}, back and scoring {_fmt(s.recovery_s, '.1f')} s after SIGKILL"
         if s.killed_slot is not None else "no kill"],
        ["dead-lettered / duplicate scores / live events without a score",
         f"{s.dead_lettered} / {s.duplicates} / {s.missing}"],
        ["served scores vs offline replay of the champion",
         f"max |difference| {_fmt(r.replay_max_abs_diff, '.2e')}"],
        ["stage seconds", ", ".join(f"{k} {v:.1f}" for k, v in r.stage_seconds.items())],
    ]  # fmt: skip
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in s.notes)
    live = _metrics_table({"stateful (served)": r.live_metrics, "stateless": r.baseline_metrics})
    holdout = _metrics_table({"stateful": m.holdout, "stateless": m.holdout_baseline})
    return f"""
<h2>{html.escape(r.spec.name)}</h2>
<p class="note">{html.escape(r.spec.description)} (key: {html.escape(r.spec.key_meaning)})</p>
<h3>Live stream (held out)</h3>{live}
<h3>Training hold-out (from the MLflow run)</h3>{holdout}
<h3>Serving</h3>{_html_table(["what", "value"], facts)}
{"<ul class='note'>" + notes + "</ul>" if notes else ""}
{"".join(images)}
"""
