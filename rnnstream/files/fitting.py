"""Fit a streaming model on a user's CSV/Parquet file with automatic defaults, and save or register it.

What it decides for the user (each overridable from the CLI):

- the head, from the columns named (:func:`choose_head`), the label classes (positive class of a binary
  label: the conventional one of 0/1, false/true, no/yes, else the rarer) and the token vocabulary;
- the model size from the number of events (hidden 16 up to ~2k events, 32 up to ~20k, 64 up to ~200k,
  else 96; one GRU layer), and the most epochs (fewer for more data; three times as many for a classifier
  with a held-out part, whose labels then end training);
- input normalization (fitted on the training part), the time since a key's previous event as an input;
- rows with an empty label (one not known yet, or history before the labelled period) feed their key's
  state and are not learned from;
- classifiers keep the moving average of their weights over about the last epoch (``fit``'s
  ``average_epochs``): held-out quality varies less from seed to seed;
- classifiers are a seed ensemble (``members``, default 3 up to ``ENSEMBLE_MAX_EVENTS`` labelled events):
  the same split trained from independent seeds, early-stopped each, folded into one model that averages
  their logits (:mod:`rnnstream.rnn_core.seed_ensemble`; serving sees one model, its state ``members`` times
  wider): the order of the highest scores, which average precision weighs, varies less between seeds;
- early stopping on a held-out tail of each key (the last ``holdout`` of its events; keys with fewer than
  five events train only): classifiers are validated with each key's state carried from its training part
  (labels hidden there), forecast and next-token heads on the tails themselves.

Training is :func:`rnnstream.rnn_core.training.fit` (truncated BPTT carrying each key's state across chunks).
Training needs the file's events in memory (scoring does not): ``max_events`` caps what is read, with a note.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from rnnstream.errors import UsageError
from rnnstream.files.alert_threshold import DEFAULT_TARGET_FPR
from rnnstream.files.columns import DEFAULT_CHUNK_ROWS, FileColumns
from rnnstream.files.fitted_model import FittedFileModel
from rnnstream.files.holdout import (
    MIN_KEY_EVENTS_FOR_HOLDOUT,
    alert_threshold,
    holdout_metrics,
    holdout_outputs,
    is_session_like,
    patience_epochs,
    split_tails,
    validation_sequences,
)
from rnnstream.files.reader import (
    RawChunk,
    iter_chunks,
    require_columns,
    resolve_time_format,
    text_values,
    with_key_column,
)
from rnnstream.files.schema import (
    FileSchema,
    choose_head,
    learn_vocabulary,
    order_classes,
)
from rnnstream.files.session_end import keys_after, with_end_events, with_end_token
from rnnstream.pipelines.spec import PIPELINE_NAMES
from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.event_schema import LABEL_COLUMN
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.seed_ensemble import can_fold, fold_members
from rnnstream.rnn_core.training import FitResult, fit, seeded_model, sequences_from_table
from rnnstream.rnn_core.trimmed_loss import TrimmedKeys

DEFAULT_MAX_EVENTS = 2_000_000
LABELLED_EPOCH_FACTOR = 3  # classifiers with a held-out part, sessions held out whole: most epochs x3
CLASSIFIER_AVERAGE_EPOCHS = 1.0  # classifiers keep an EMA of their weights over about the last epoch
# classifiers: a seed ensemble of this many models (module docstring). Fraud handbook (real_data.py),
# seeds 0-4, 1 -> 3 members: AP mean 0.662 -> 0.674, min 0.640 -> 0.669; ROC-AUC mean 0.876 -> 0.881. An EMA
# over 3 epochs instead of 1 gave single models +0.007 mean AP but an ensemble +0.001: not taken
CLASSIFIER_MEMBERS = 3
ENSEMBLE_MAX_EVENTS = 200_000  # ... up to this many labelled events learned from (fit time x3); one above
MEMBER_SEED_STRIDE = 1000  # member i trains from seed + 1000 * i: seeds 0 and 1 share no member
POOR_TOP1 = 0.5  # a next-token model right less often than this gets a loud note


@dataclass(frozen=True)
class FitOptions:
    """fit-file's knobs; None means "choose from the data"."""

    cell: str = "gru"
    hidden_size: int | None = None
    num_layers: int | None = None
    epochs: int | None = None
    patience: int = 3
    holdout: float = 0.2
    target_fpr: float = DEFAULT_TARGET_FPR
    max_vocab: int = 2000
    seed: int = 0
    time_format: str = "auto"
    positive_class: str | None = None
    pipeline: str | None = None
    progress: bool = True
    lr: float | None = None  # default: 1e-2 for small models (hidden <= 32), else 3e-3
    chunk_len: int = 64
    batch_keys: int = 32
    max_events: int = DEFAULT_MAX_EVENTS
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    trim_keys: bool = False  # session-like next-token data: a trimmed loss (rnn_core/trimmed_loss.py)
    members: int | None = None  # classifiers: models in the seed ensemble (None: ensemble_members)


def default_hidden_size(events: int) -> int:
    """A model that fits the data: more events, more capacity."""
    if events <= 2_000:
        return 16
    if events <= 20_000:
        return 32
    if events <= 200_000:
        return 64
    return 96


def default_epochs(events: int) -> int:
    """Most epochs (early stopping usually ends sooner): ~400k event passes, between 5 and 60 epochs."""
    return int(min(60, max(5, math.ceil(400_000 / max(events, 1)))))


def ensemble_members(options: FitOptions, model: StreamingModel, learned: int) -> int:
    """How many seeds a classifier's ensemble trains: ``options.members``, else ``CLASSIFIER_MEMBERS`` up to
    ``ENSEMBLE_MAX_EVENTS`` labelled events (each member is one more training); 1 where models cannot fold."""
    if options.members is not None and options.members < 1:
        raise UsageError("--members must be >= 1")
    if not can_fold(model):
        if options.members not in (None, 1):
            raise UsageError("--members: only classifiers without token columns train a seed ensemble")
        return 1
    if options.members is not None:
        return options.members
    return CLASSIFIER_MEMBERS if learned <= ENSEMBLE_MAX_EVENTS else 1


def read_file_events(
    path: Path, columns: FileColumns, options: FitOptions
) -> tuple[FileSchema, pa.Table, list[str]]:
    """Read the file (up to ``options.max_events`` rows) into events, learning classes and vocabulary."""
    columns, key_note = with_key_column(Path(path), columns)  # none named or found: the file is one series
    notes: list[str] = [key_note] if key_note else []
    raw_parts: list[pa.Table] = []
    label_counts: Counter[str] = Counter()
    token_counts: Counter[str] = Counter()
    time_format: str | None = None
    rows = unlabelled = 0
    require_columns(Path(path), columns.used)
    bar = tqdm(desc="reading", unit="ev", unit_scale=True, disable=not options.progress, file=sys.stderr)
    with bar:
        for chunk in iter_chunks(Path(path), columns.used, options.chunk_rows):
            table = chunk.table
            if rows + table.num_rows > options.max_events:
                table = table.slice(0, options.max_events - rows)
                notes.append(f"read the first {options.max_events:,} rows only (--max-events)")
            if time_format is None:
                time_format = resolve_time_format(
                    table.column(columns.time), options.time_format, columns.time
                )
            if columns.label:  # an empty label: the event feeds its key's state only (e.g. not known yet)
                label = text_values(table.column(columns.label))
                unlabelled += label.null_count
                label_counts.update(v for v in label.to_pylist() if v is not None)
            if columns.token:
                token_counts.update(
                    t for t in text_values(table.column(columns.token)).to_pylist() if t is not None
                )
            raw_parts.append(table)
            rows += table.num_rows
            bar.update(table.num_rows)
            if rows >= options.max_events:
                break
    if rows == 0 or time_format is None:
        raise UsageError(f"{path} has no rows")
    if unlabelled:
        notes.append(
            f"{unlabelled:,} rows have no label: they feed their key's state (the history a stream would "
            "have seen) but are not learned from"
        )
    head = choose_head(columns, len(label_counts))
    schema = FileSchema(
        pipeline=options.pipeline or _pipeline_name(Path(path)),
        columns=columns,
        time_format=time_format,
        head=head,
        classes=order_classes(label_counts, options.positive_class) if columns.label else (),
        vocabulary=learn_vocabulary(token_counts, options.max_vocab) if columns.token else (),
    )
    if columns.token and len(token_counts) > options.max_vocab:
        notes.append(
            f"{len(token_counts):,} distinct tokens; kept the {options.max_vocab:,} most frequent "
            "(the rest share the unknown code)"
        )
    events = schema.events(RawChunk(pa.concat_tables(raw_parts), 0), with_labels=True)
    return schema, events, notes


def fit_file(
    path: Path,
    columns: FileColumns,
    options: FitOptions | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FittedFileModel:
    """Read ``path``, pick the head and defaults, train with early stopping; see the module docstring."""
    options = options or FitOptions()
    if not 0.0 <= options.holdout < 0.9:
        raise UsageError("--holdout must be in [0, 0.9)")
    if not 0.0 < options.target_fpr < 0.5:
        raise UsageError("--target-fpr must be in (0, 0.5), e.g. 0.01 for 1% of normal events alerting")
    if options.pipeline and options.pipeline.replace("_", "-") in PIPELINE_NAMES:
        raise UsageError(
            f"--pipeline {options.pipeline!r} is a built-in pipeline with its own event schema; "
            "name your data something else"
        )
    started = time.perf_counter()
    schema, events, notes = read_file_events(Path(path), columns, options)
    spec = schema.event_schema().feature_spec(use_time_delta=True)
    label = LABEL_COLUMN if schema.head in ("binary", "multiclass") else None
    sequences = sequences_from_table(events, spec, label_column=label)
    n_events = sequences.num_events
    session_like = is_session_like(sequences)
    if session_like and schema.head == "next_token":  # learn how sessions end (see files/session_end)
        schema = with_end_token(schema)
        spec = schema.event_schema().feature_spec(use_time_delta=True)
        still_open: set[str] = set()
        if n_events >= options.max_events:  # sessions going on past the rows read did not end there
            still_open = keys_after(Path(path), schema.columns.key, n_events, options.chunk_rows)
            still_open &= set(sequences.keys)
        if still_open:
            notes.append(f"{len(still_open):,} sessions go on past the rows read: no end learned for them")
        sequences = with_end_events(sequences, spec, still_open)
        notes.append("session-like data: the model learns each session's end (score-file writes end_score)")
    config = ModelConfig(
        features=spec,
        cell=options.cell,
        head=schema.head,
        hidden_size=options.hidden_size or default_hidden_size(n_events),
        num_layers=options.num_layers or 1,
        num_classes=max(2, len(schema.classes)),
        embedding_dim=min(16, max(4, round(len(schema.vocabulary) ** 0.5) + 1)) if columns.token else 16,
        adaptive_inputs=True,  # forecast heads: each key's inputs normalized by its own level and scale
    )
    model = seeded_model(config, options.seed)  # = torch.manual_seed(seed); StreamingModel(config)
    by_key = options.holdout > 0 and session_like
    if by_key:
        median = int(np.median([len(x) for x in sequences.x]))
        notes.append(
            f"session-like data ({len(sequences):,} keys, median {median} events): held out "
            f"{options.holdout:.0%} of the keys whole (scored from a fresh state), not each key's tail"
        )
    train, cuts = split_tails(sequences, options.holdout, by_key=by_key, seed=options.seed)
    validation = validation_sequences(sequences, cuts, schema.head)
    if validation is None and options.holdout > 0:
        notes.append(f"no key has {MIN_KEY_EVENTS_FOR_HOLDOUT}+ events: trained without early stopping")
    if schema.head in ("binary", "multiclass") and train.y is not None:
        seen = {int(v) for y in train.y for v in np.unique(y[np.isfinite(y)])}
        if len(seen) < 2:
            notes.append("the training part holds one class only; the held-out tails hold the others")
    # the epoch budget counts the events learned from (a row without a label only feeds its key's state)
    learned = train.num_events if train.y is None else int(sum(np.isfinite(y).sum() for y in train.y))
    epochs = options.epochs or default_epochs(learned)
    if options.epochs is None and validation is not None and (train.y is not None or by_key):
        # labelled heads: early stopping on the held-out labels ends training; the event budget alone ended
        # it while the held-out loss still fell (fraud handbook: best epoch = last at 8; stops at 18 of 24).
        # Sessions held out whole likewise (benchmarks/log_sessions.py: best epoch = last at 10; a session
        # missing a step caught 16% -> 89% with early stopping ending at 27)
        epochs *= LABELLED_EPOCH_FACTOR
    patience = patience_epochs(train, options.patience, options.chunk_len, options.batch_keys)
    if validation is not None and patience > options.patience:
        notes.append(f"early stopping waited {patience} epochs (an epoch is only a few optimizer steps)")
    members = ensemble_members(options, model, learned)
    bar = tqdm(
        total=epochs * members, desc="training", unit="epoch", disable=not options.progress, file=sys.stderr
    )

    def progress(record: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(train=f"{record['train_loss']:.4f}", val=f"{record['val_loss']:.4f}")
        if on_epoch is not None:
            on_epoch(record)

    trimmed = TrimmedKeys() if options.trim_keys and by_key and schema.head == "next_token" else None

    def train_member(member: StreamingModel, seed: int) -> FitResult:
        return fit(
            member,
            train,
            epochs=epochs,
            lr=options.lr or (1e-2 if config.hidden_size <= 32 else 3e-3),
            chunk_len=options.chunk_len,
            batch_keys=options.batch_keys,
            seed=seed,
            progress=progress,
            validation=validation,
            patience=patience,
            average_epochs=CLASSIFIER_AVERAGE_EPOCHS if label else None,
            select_keys=trimmed,
        )

    with bar:
        result = train_member(model, options.seed)
        if members > 1:
            trained, best = [model], [result.best_epoch]
            for i in range(1, members):
                seed = options.seed + MEMBER_SEED_STRIDE * i
                trained.append(seeded_model(config, seed))
                best.append(train_member(trained[-1], seed).best_epoch)
            model = fold_members(trained)
            notes.append(
                f"a seed ensemble of {members} models (best epochs {', '.join(str(b + 1) for b in best)}), "
                f"their logits averaged in one model of hidden size {model.hidden_size} (--members 1: one)"
            )
    model.eval()
    holdout_events = int(sum(len(x) - c for x, c in zip(sequences.x, cuts, strict=True)))
    names = model.output_names()
    out, y = holdout_outputs(model, sequences, cuts)
    if out.shape[0] == 0:
        notes.append("no held-out events: the alert threshold is chosen on the training events")
    # session-like data: a session alerts when any of its events does, held out or not (--holdout 0)
    threshold = alert_threshold(
        model, sequences, cuts, (out, y), schema.head, session_like, options.target_fpr
    )
    if trimmed is not None:
        notes.append(f"trimmed loss: the last epoch left out {trimmed.contamination:.1%} of the sessions")
    schema = replace(schema, threshold=threshold)
    found = holdout_metrics(out, y, names, schema.head, threshold)
    if schema.head == "next_token" and found.get("top1_accuracy", 1.0) < POOR_TOP1:
        notes.append(
            f"WARNING: held-out top-1 accuracy {found['top1_accuracy']:.3f} (top-5 "
            f"{found['top5_accuracy']:.3f}) is low: the model rarely predicts the next token, so its scores "
            "separate little (a low top-5 too: no order of events was learned); more data or --epochs"
        )
    return FittedFileModel(
        model=model,
        schema=schema,
        events=n_events,
        keys=len(sequences),
        train_events=train.num_events,
        holdout_events=holdout_events,
        history=result.history,
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        seconds=time.perf_counter() - started,
        holdout_metrics=found,
        notes=notes,
    )


def _pipeline_name(path: Path) -> str:
    stem = path.name.split(".")[0].lower()
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in stem).strip("-")
    return cleaned or "file"
