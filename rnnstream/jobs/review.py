"""Review registered versions of a pipeline's model side by side before promoting one.

For each version: its aliases, evaluation metrics and the stateless baseline's (and the gap between them),
the training data range and row counts, the parameters that differ between the versions, the model size and
the measured latency of one streaming step. Shown as a terminal table and written as a self-contained HTML
page (plots embedded) under ``<data>/reports``. :func:`backtest` replays one fixed stream through several
versions so they are compared on the same events.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from rnnstream.rnn_core.model import StreamingModel
from rnnstream.workers.model_registry import (
    LoadedVersion,
    RegistryError,
    VersionInfo,
    list_versions,
    load_version,
    registered_model_name,
)
from rnnstream.workers.tracking import TrackingStore

EVAL_PREFIX = "eval."
BASELINE_PREFIX = "baseline."
LATENCY_BATCH = 256


@dataclass(frozen=True)
class VersionReview:
    """Everything the review shows about one version."""

    info: VersionInfo
    params: dict[str, str]
    metrics: dict[str, float]
    meta: dict
    num_parameters: int
    weights_bytes: int
    step_us_per_batch: float
    plots: dict[str, bytes] = field(default_factory=dict)
    primary_metric: str = ""

    @property
    def version(self) -> str:
        return self.info.version

    def eval_metrics(self) -> dict[str, float]:
        return {k[len(EVAL_PREFIX) :]: v for k, v in self.metrics.items() if k.startswith(EVAL_PREFIX)}

    def baseline_metrics(self) -> dict[str, float]:
        return {
            k[len(BASELINE_PREFIX) :]: v for k, v in self.metrics.items() if k.startswith(BASELINE_PREFIX)
        }

    def baseline_gap(self) -> dict[str, float]:
        """Model minus stateless baseline, per metric both have (what the state adds)."""
        base = self.baseline_metrics()
        return {k: v - base[k] for k, v in self.eval_metrics().items() if k in base}


@dataclass(frozen=True)
class Review:
    pipeline: str
    versions: list[VersionReview]
    differing_params: list[str]
    backtest: dict[str, dict[str, float]] = field(default_factory=dict)


def step_latency_us(model: StreamingModel, batch: int = LATENCY_BATCH, repeats: int = 30) -> float:
    """Median wall time (µs) of one ``step`` over ``batch`` keys, single-threaded, in inference mode."""
    x = torch.zeros((batch, model.input_size), dtype=torch.float32)
    state = model.init_state(batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(3):
                model.step(x, state)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.step(x, state)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times) * 1e6)


def review_versions(
    store: TrackingStore, pipeline: str, versions: Sequence[str] | None = None, with_plots: bool = True
) -> Review:
    """Collect :class:`VersionReview` for ``versions`` (default: the last 5 registered versions)."""
    listed = {v.version: v for v in list_versions(store, pipeline)}
    if not listed:
        raise RegistryError(f"no versions of {registered_model_name(pipeline)} yet (run `rnnstream train`)")
    chosen = list(versions) if versions else sorted(listed, key=int)[-5:]
    missing = [v for v in chosen if v not in listed]
    if missing:
        have = ", ".join(listed)
        raise RegistryError(
            f"{registered_model_name(pipeline)} has no version {', '.join(missing)} (have {have})"
        )
    client = store.client()
    reviews = []
    for version in chosen:
        info = listed[version]
        loaded = load_version(f"models:/{info.name}/{version}", store=store)
        params: dict[str, str] = {}
        metrics: dict[str, float] = {}
        plots: dict[str, bytes] = {}
        primary = str(loaded.meta.get("primary_metric", ""))
        if info.run_id:
            run = client.get_run(info.run_id)
            params, metrics = dict(run.data.params), dict(run.data.metrics)
            primary = run.data.tags.get("rnnstream.primary_metric", primary)
            if with_plots:
                plots = _run_plots(client, info.run_id)
        reviews.append(
            VersionReview(
                info=info,
                params=params,
                metrics=metrics,
                meta=loaded.meta,
                num_parameters=sum(p.numel() for p in loaded.model.parameters()),
                weights_bytes=sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values()),
                step_us_per_batch=step_latency_us(loaded.model),
                plots=plots,
                primary_metric=primary,
            )
        )
    return Review(pipeline=pipeline, versions=reviews, differing_params=_differing(r.params for r in reviews))


def _run_plots(client, run_id: str) -> dict[str, bytes]:
    import tempfile

    out: dict[str, bytes] = {}
    names = [a.path for a in client.list_artifacts(run_id, "plots") if a.path.endswith(".png")]
    if not names:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, "plots", tmp))
        for name in names:
            p = local / Path(name).name
            if p.is_file():
                out[p.name] = p.read_bytes()
    return out


def _differing(param_sets) -> list[str]:
    sets = list(param_sets)
    keys = sorted(set().union(*(s.keys() for s in sets))) if sets else []
    return [k for k in keys if len({s.get(k) for s in sets}) > 1]


def backtest(
    loaded: Sequence[LoadedVersion],
    table: pa.Table,
    replay: Callable[[StreamingModel, pa.Table], np.ndarray],
    metrics: Callable[[np.ndarray, pa.Table], Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """Replay one fixed stream ``table`` through every version: ``{version: metrics}`` on the same events.

    ``replay(model, table)`` must be the streaming path (evaluation.replay); ``metrics(outputs, table)``
    the pipeline's metric function.
    """
    return {lv.version: dict(metrics(replay(lv.model, table), table)) for lv in loaded}


# ------------------------------------------------------------------------------------------------ rendering
def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def review_rows(review: Review) -> tuple[list[str], list[list[str]]]:
    """The side-by-side table: one row per property, one column per version."""
    vs = review.versions
    header = ["", *(f"v{r.version}" for r in vs)]
    rows: list[list[str]] = [["aliases", *(",".join(r.info.aliases) or "-" for r in vs)]]
    primaries = {r.primary_metric for r in vs if r.primary_metric}
    metric_names = sorted(
        set().union(*(r.eval_metrics().keys() for r in vs)), key=lambda m: (m not in primaries, m)
    )
    for m in metric_names:
        rows.append([m, *(_fmt(r.eval_metrics().get(m, "-")) for r in vs)])
        if any(m in r.baseline_metrics() for r in vs):
            rows.append([f"  baseline {m}", *(_fmt(r.baseline_metrics().get(m, "-")) for r in vs)])
            rows.append([f"  gap {m}", *(_fmt(r.baseline_gap().get(m, "-")) for r in vs)])
    for name in ("data.start", "data.end", "data.train_rows", "data.val_rows", "data.keys"):
        if any(name in r.params or name in r.meta for r in vs):
            rows.append([name, *(str(r.params.get(name, r.meta.get(name, "-"))) for r in vs)])
    rows.append(["parameters", *(f"{r.num_parameters:,}" for r in vs)])
    rows.append(["weights bytes", *(f"{r.weights_bytes:,}" for r in vs)])
    rows.append([f"step µs ({LATENCY_BATCH} keys)", *(f"{r.step_us_per_batch:.0f}" for r in vs)])
    for p in review.differing_params:
        if p.startswith("data."):
            continue
        rows.append([f"param {p}", *(r.params.get(p, "-") for r in vs)])
    for version, metrics in review.backtest.items():
        for m, v in sorted(metrics.items()):
            row = next((x for x in rows if x[0] == f"backtest {m}"), None)
            if row is None:
                row = [f"backtest {m}", *("-" for _ in vs)]
                rows.append(row)
            idx = 1 + [r.version for r in vs].index(version)
            row[idx] = _fmt(v)
    return header, rows


def render_text(review: Review) -> str:
    header, rows = review_rows(review)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"{registered_model_name(review.pipeline)}: {len(review.versions)} version(s)",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def render_html(review: Review) -> str:
    header, rows = review_rows(review)
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>review {esc(registered_model_name(review.pipeline))}</title>",
        "<style>body{font-family:sans-serif} td,th{padding:2px 10px;border-bottom:1px solid #ddd;"
        "text-align:right} td:first-child{text-align:left} img{max-width:480px;margin:4px}</style>",
        f"</head><body><h1>{esc(registered_model_name(review.pipeline))}</h1><table>",
        "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>",
    ]
    parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows]
    parts.append("</table>")
    for r in review.versions:
        if not r.plots:
            continue
        parts.append(f"<h2>version {esc(r.version)}</h2><div>")
        for name, data in sorted(r.plots.items()):
            b64 = base64.b64encode(data).decode()
            parts.append(f"<figure style='display:inline-block'><img alt='{esc(name)}'")
            parts.append(f" src='data:image/png;base64,{b64}'>")
            parts.append(f"<figcaption>{esc(name)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(review: Review, reports_dir: Path) -> Path:
    """Write the HTML page as ``<reports>/review-<pipeline>-v<a>-v<b>....html``; returns its path."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    tag = "-".join(f"v{r.version}" for r in review.versions)
    path = reports_dir / f"review-{review.pipeline}-{tag}.html"
    path.write_text(render_html(review))
    return path
