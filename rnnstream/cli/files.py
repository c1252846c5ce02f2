"""``rnnstream fit-file`` and ``rnnstream score-file``: a user's own CSV/Parquet file, no code needed.

fit-file learns a model from a file (the head follows from the columns named: a label with two classes ->
binary, more -> multiclass; no label: a token column -> next-token, value columns -> forecast) and saves it
to a folder (weights + ``file_schema.json``) or registers it in MLflow. score-file scores a file with it
through the same streaming code that serves Kafka, one output row per input row, in input order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnnstream.errors import UsageError
from rnnstream.files.columns import DEFAULT_CHUNK_ROWS, DEFAULT_TARGET_FPR, TIME_FORMATS, FileColumns


def register(subparsers: argparse._SubParsersAction) -> None:
    fit = subparsers.add_parser(
        "fit-file",
        help="train a model on your own CSV/Parquet file",
        description="Train a streaming model on a CSV or Parquet file of events (one row per event).",
    )
    fit.add_argument("--input", required=True, type=Path, help="CSV or Parquet file of events")
    fit.add_argument(
        "--key-column",
        default=None,
        help="the stream key (card, host, session, ...); default: a column named 'key', else none: "
        "the whole file is one series (e.g. a timestamp,value file)",
    )
    fit.add_argument(
        "--time-column", required=True, help="event time: ISO 8601, epoch s/ms, or plain step numbers"
    )
    fit.add_argument("--value-columns", default="", help="numeric input columns, comma-separated")
    fit.add_argument("--token-column", default=None, help="a categorical column (e.g. a log template id)")
    fit.add_argument(
        "--label-column",
        default=None,
        help="what to predict per event: 2 classes -> binary, more -> multiclass",
    )
    out = fit.add_mutually_exclusive_group(required=True)
    out.add_argument("--model-out", type=Path, help="folder to save the model in")
    out.add_argument("--register", action="store_true", help="register the model in MLflow")
    fit.add_argument("--pipeline", default=None, help="a name for this data (default: the file name)")
    fit.add_argument(
        "--time-format", default="auto", choices=TIME_FORMATS, help="how to read the time column"
    )
    fit.add_argument("--positive-class", default=None, help="binary labels: the class to detect")
    fit.add_argument("--cell", default="gru", choices=("rnn", "lstm", "gru"))
    fit.add_argument("--hidden", type=int, default=None, help="hidden size (default: from the data size)")
    fit.add_argument("--layers", type=int, default=None, help="recurrent layers (default 1)")
    fit.add_argument("--epochs", type=int, default=None, help="most epochs (default: from the data size)")
    fit.add_argument("--patience", type=int, default=3, help="early stopping: epochs without improvement")
    fit.add_argument("--holdout", type=float, default=0.2, help="held-out tail of each key (validation)")
    fit.add_argument(
        "--target-fpr",
        type=float,
        default=DEFAULT_TARGET_FPR,
        help="alert threshold: the share of held-out normal events allowed to alert (default %(default)s; "
        "labelled binary data: best F1 on the held-out part instead)",
    )
    fit.add_argument("--max-vocab", type=int, default=2000, help="token vocabulary size cap")
    fit.add_argument(
        "--max-events", type=int, default=None, help="train on the first N rows only (default 2,000,000)"
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--members",
        type=int,
        default=None,
        help="classifiers: a seed ensemble of N models averaged in one (default 3 up to 200k labelled "
        "events, else 1; each member is one more training)",
    )
    fit.add_argument("--threads", type=int, default=1, help="torch threads (small models run best on 1)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bars")
    fit.set_defaults(func=run_fit_file)

    score = subparsers.add_parser(
        "score-file",
        help="score a CSV/Parquet file with a fitted model",
        description="Score every event of a file through the streaming model, one output row per input row.",
    )
    score.add_argument("--model", required=True, help="a folder from fit-file, or models:/<name>@<alias>")
    score.add_argument("--input", required=True, type=Path, help="CSV or Parquet file of events")
    score.add_argument("--output", required=True, type=Path, help="output .csv or .parquet (by extension)")
    score.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows read per chunk")
    score.add_argument(
        "--max-sort-rows",
        type=int,
        default=None,
        help="largest file sorted in memory when its keys are not in time order",
    )
    score.add_argument(
        "--key-ttl-seconds",
        type=float,
        default=None,
        help="a key idle this long in event time starts again from a zero state, as serving with the same "
        "key_ttl_seconds does (default: keys never expire)",
    )
    score.add_argument("--threads", type=int, default=1, help="torch threads (small models run best on 1)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=run_score_file)


def run_fit_file(args: argparse.Namespace) -> int:
    with _torch_threads(args.threads):
        return _fit_file(args)


def _fit_file(args: argparse.Namespace) -> int:
    from rnnstream.files.fitted_model import register_fitted, save_fitted
    from rnnstream.files.fitting import FitOptions, fit_file

    columns = FileColumns(
        key=args.key_column,
        time=args.time_column,
        values=tuple(c.strip() for c in args.value_columns.split(",") if c.strip()),
        token=args.token_column,
        label=args.label_column,
    )
    options = FitOptions(
        cell=args.cell,
        hidden_size=args.hidden,
        num_layers=args.layers,
        epochs=args.epochs,
        patience=args.patience,
        holdout=args.holdout,
        target_fpr=args.target_fpr,
        max_vocab=args.max_vocab,
        seed=args.seed,
        members=args.members,
        time_format=args.time_format,
        positive_class=args.positive_class,
        pipeline=args.pipeline,
        progress=not args.no_progress,
        **({"max_events": args.max_events} if args.max_events else {}),
    )
    fitted = fit_file(args.input, columns, options)
    print(fitted.summary())
    if args.model_out is not None:
        path = save_fitted(fitted, args.model_out)
        print(f"saved the model to {path}")
        print(f"score a file with: rnnstream score-file --model {path} --input FILE --output scores.csv")
    else:
        ref = register_fitted(fitted)
        print(f"registered {ref}")
        print(f"score a file with: rnnstream score-file --model {ref} --input FILE --output scores.csv")
    return 0


def run_score_file(args: argparse.Namespace) -> int:
    with _torch_threads(args.threads):
        return _score_file(args)


def _score_file(args: argparse.Namespace) -> int:
    from rnnstream.files.fitted_model import load_fitted
    from rnnstream.files.scoring import DEFAULT_MAX_SORT_ROWS, score_file

    if args.chunk_rows < 1:
        raise UsageError("--chunk-rows must be at least 1")
    if args.key_ttl_seconds is not None and args.key_ttl_seconds <= 0:
        raise UsageError("--key-ttl-seconds must be positive (leave it out for keys that never expire)")
    model, schema = load_fitted(args.model)
    result = score_file(
        model,
        schema,
        args.input,
        args.output,
        chunk_rows=args.chunk_rows,
        progress=not args.no_progress,
        max_sort_rows=args.max_sort_rows or DEFAULT_MAX_SORT_ROWS,
        key_ttl_ms=None if args.key_ttl_seconds is None else round(args.key_ttl_seconds * 1000),
    )
    sorted_note = " (sorted by time in memory first)" if result.sorted_in_memory else ""
    print(
        f"scored {result.rows:,} events of {result.keys:,} keys in {result.seconds:.1f} s "
        f"({result.events_per_second:,.0f} events/s){sorted_note} -> {result.output}",
        file=sys.stdout,
    )
    return 0


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Small recurrent steps are slower with several intra-op threads (much slower on a busy machine)."""
    import torch

    if n < 1:
        raise UsageError("--threads must be at least 1")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
