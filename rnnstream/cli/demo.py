"""``rnnstream demo`` (``make demo``): every part of rnnstream on embedded defaults, in about ten minutes.

Starts an embedded Kafka broker, a local Ray and the local MLflow store; for each pipeline generates a
stream into Kafka, archives it, trains with Ray Train (or reuses the model registered for the same data and
settings), registers and promotes it, serves it live through the Ray workers, kills one worker and measures
the recovery, scores a held-out stream; then prints one table and writes an HTML report with plots.
Everything it started is stopped when it ends, fails or is interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from typing import TYPE_CHECKING

from rnnstream.errors import UsageError

if TYPE_CHECKING:  # imported when the command runs: the CLI should start fast
    from rnnstream.data_dir import DataDir
    from rnnstream.demo.progress import DemoProgress
    from rnnstream.demo.run import DemoResult, DemoSettings, PipelineResult


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run every pipeline end to end on embedded defaults (Kafka, Ray, MLflow) and report",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument(
        "--pipeline",
        action="append",
        default=None,
        help="run only this pipeline (repeat or comma-separate for several; default: all four)",
    )
    parser.add_argument("--events", type=int, default=None, help="events per pipeline (default 20,000)")
    parser.add_argument("--fresh", action="store_true", help="retrain even where a matching model exists")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the pipeline's)")
    parser.add_argument("--workers", type=int, default=2, help="scoring workers (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated streams (0)")
    parser.add_argument("--no-kill", action="store_true", help="do not kill a worker during serving")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_demo)


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    from rnnstream.demo.run import DEFAULT_EVENTS, DemoSettings
    from rnnstream.pipelines.spec import PIPELINE_NAMES

    chosen: list[str] = []
    for item in args.pipeline or []:
        chosen += [p.strip().replace("_", "-") for p in item.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PIPELINE_NAMES]
    if unknown:
        raise UsageError(f"unknown pipeline(s) {unknown}; choose from {', '.join(PIPELINE_NAMES)}")
    events = DEFAULT_EVENTS if args.events is None else args.events
    if events < 1000:
        raise UsageError("--events must be at least 1000 (a stream needs history to learn from)")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    return DemoSettings(
        pipelines=tuple(dict.fromkeys(chosen)) or PIPELINE_NAMES,
        events=events,
        seed=args.seed,
        workers=args.workers,
        epochs=args.epochs,
        fresh=args.fresh,
        kill_worker=not args.no_kill,
    )


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from rnnstream.data_dir import DataDir
    from rnnstream.demo.progress import DemoProgress
    from rnnstream.demo.report import summary_table, table_legend, write_report

    settings = settings_from_args(args)
    data_dir = DataDir.default()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # the demo says what it registers itself
    torch.set_num_threads(1)  # small recurrent steps; leave the other core to Ray
    started = time.monotonic()
    results: list = []
    progress = DemoProgress(enabled=not args.no_progress)
    print(
        f"rnnstream demo: {', '.join(settings.pipelines)} ({settings.events:,} events each), "
        f"data in {data_dir.root}"
    )
    failures: dict[str, str] = {}
    try:
        result = _run_pipelines(settings, data_dir, progress, results, failures, started)
    except SystemExit:  # Ray Train's Ctrl-C handler ends a training run with sys.exit
        print("rnnstream demo: interrupted; everything the demo started was stopped", file=sys.stderr)
        return 130
    report = write_report(result, data_dir.reports)
    result.seconds = time.monotonic() - started
    print()
    print(summary_table(result))
    print(table_legend(result))
    print()
    print(
        f"demo finished in {result.seconds:.0f} s" + (f"; FAILED: {', '.join(failures)}" if failures else "")
    )
    print(f"report: {report}")
    print(f"open it with: python -m webbrowser file://{report}")
    print("review the training runs and models in MLflow: rnnstream mlflow ui   (then http://127.0.0.1:5000)")
    sys.stdout.flush()
    return 1 if failures else 0


def _run_pipelines(
    settings: DemoSettings,
    data_dir: DataDir,
    progress: DemoProgress,
    results: list[PipelineResult],
    failures: dict[str, str],
    started: float,
) -> DemoResult:
    """Start the services, run each pipeline (a failure is recorded, the others still run), stop them."""
    from rnnstream.demo.run import DemoResult, run_pipeline
    from rnnstream.demo.services import demo_services, interrupt_on_signals

    with interrupt_on_signals(), progress, demo_services(data_dir, say=progress.say) as services:
        for name in settings.pipelines:
            progress.start_pipeline(name)
            try:
                results.append(
                    run_pipeline(
                        name, settings, services, data_dir, progress.say, progress.bar, progress.waiting
                    )
                )
            except Exception as exc:  # one broken pipeline should not hide the others' results
                failures[name] = f"{type(exc).__name__}: {exc}"
                log = data_dir.reports / f"demo-{name}-error.txt"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(traceback.format_exc())
                progress.say(f"{name}: FAILED ({failures[name]}); traceback in {log}")
                continue
            progress.say(f"{name}: done in {results[-1].seconds:.0f} s")
        return DemoResult(settings, results, time.monotonic() - started, services.tracking_uri, failures)
