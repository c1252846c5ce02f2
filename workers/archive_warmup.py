"""Warm a hot-swap challenger from the Parquet archive: before it shadows live traffic, each key's recent
history (its last N archived events of the partition, below the offset where the challenger takes over)
is replayed through the challenger's own :class:`~rnnstream.rnn_core.stream_scorer.StreamScorer`.

Why: a challenger warmed on live traffic alone knows only the keys that send something during the warm-up;
every other key would start from an empty state under the new model. With the archive caught up to the
take-over offset and N at least a key's history, the challenger's states are exactly the new model's
states over the whole history; a shorter N bounds the cost per key. Events the archive does not hold yet
(between its end and the take-over offset) are reported as the gap.

``pyarrow.dataset`` (which imports pandas) and the archive sink are imported by :func:`recent_history` when it
runs, not with this module: every worker imports it, and a restarted worker should not pay for them before
it scores again (only a hot swap with archive warm-up reads the archive).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN
from rnnstream.rnn_core.features import features_from_arrow
from rnnstream.rnn_core.storage import resolve_filesystem
from rnnstream.rnn_core.stream_scorer import StreamScorer

_CHUNK = 8192


@dataclass(frozen=True)
class ArchiveWarmup:
    """What warming a challenger did: archived events replayed, the keys they belong to, and the messages
    between the archive's end and the take-over offset (the gap: not replayed). Sums over partitions."""

    archive_events: int = 0
    archive_keys: int = 0
    archive_gap_messages: int = 0

    def __add__(self, other: ArchiveWarmup) -> ArchiveWarmup:
        return ArchiveWarmup(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


def recent_history(
    archive_uri: str, pipeline: str, partition: int, before_offset: int, last_n: int
) -> tuple[pa.Table, int]:
    """The archived events of ``partition`` below ``before_offset``, the last ``last_n`` of each key, in log
    order; and the archive's next offset for that partition (0 when it holds none)."""
    import pyarrow.dataset as ds

    from rnnstream.workers.archive_sink import PROVENANCE_COLUMNS

    fs, root = resolve_filesystem(archive_uri)
    folder = f"{root.rstrip('/')}/pipeline={pipeline}"
    if fs.get_file_info(folder).type == pafs.FileType.NotFound:
        return pa.table({}), 0
    by_date = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
    dataset = ds.dataset(folder, filesystem=fs, format="parquet", partitioning=by_date)
    part_col, offset_col, _ = PROVENANCE_COLUMNS
    wanted = (pc.field(part_col) == partition) & (pc.field(offset_col) < before_offset)
    table = dataset.to_table(filter=wanted)
    if table.num_rows == 0:
        return table, 0
    table = table.take(pc.sort_indices(table, [(c, "ascending") for c in PROVENANCE_COLUMNS]))
    archive_end = int(pc.max(table.column(offset_col)).as_py()) + 1
    codes = (
        table.column(KEY_COLUMN).combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    )
    from_end = _rank_from_end(codes)
    return table.filter(pa.array(from_end < last_n)), archive_end


def warm_challenger(
    scorer: StreamScorer, history: pa.Table, take_over_offset: int, archive_end: int
) -> ArchiveWarmup:
    """Replay ``history`` (from :func:`recent_history`) through ``scorer``, discarding the outputs."""
    features = scorer.model.config.features
    for lo in range(0, history.num_rows, _CHUNK):
        chunk = history.slice(lo, _CHUNK)
        times = chunk.column(TIME_COLUMN).cast(pa.int64()).to_numpy()
        scorer.score(chunk.column(KEY_COLUMN), times, features_from_arrow(chunk, features))
    keys = len(pc.unique(history.column(KEY_COLUMN))) if history.num_rows else 0
    gap = max(0, take_over_offset - archive_end) if archive_end else take_over_offset
    return ArchiveWarmup(archive_events=history.num_rows, archive_keys=keys, archive_gap_messages=gap)


def _rank_from_end(codes: np.ndarray) -> np.ndarray:
    """For each row, how many later rows have the same code (0 for a key's last row)."""
    rev = codes[::-1]
    order = np.argsort(rev, kind="stable")
    sorted_codes = rev[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(rev)]))
    rank = np.empty(len(rev), np.int64)
    rank[order] = np.arange(len(rev)) - run_start
    return rank[::-1]
