"""ScoreEmitter: turns a partition's scored batch into score records and sends them in the open transaction.

JSON events get one JSON score record each (no header; a partition's records go to the producer in one
call), Arrow events Arrow score messages of up to ``MAX_ARROW_SCORE_ROWS`` rows (the encoding follows the
input unless the worker is told otherwise). A score record the producer would
refuse (bigger than its ``max_request_size``, e.g. from a huge key) is never sent: an Arrow chunk is split
until it fits, and a single event whose score cannot fit goes to the dead-letter topic instead, with the
reason, so it cannot stall the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.workers.event_codec import ARROW, JSON, Reject, message_encoding
from rnnstream.workers.score_codec import ARROW_HEADERS, scores_to_arrow, scores_to_json_array
from rnnstream.workers.scores_transaction import ScoresTransaction
from rnnstream.workers.scoring_partition import ScoredBatch, ScoringPartition
from rnnstream.workers.worker_config import WorkerConfig

MAX_ARROW_SCORE_ROWS = 8192
SCORE_TOO_LARGE = "score_too_large"
RECORD_OVERHEAD_BYTES = 512  # record + batch framing and headers, on top of key and value


@dataclass(frozen=True)
class ScoreRows:
    """Scores of some events of one partition, ready to encode."""

    keys: pa.Array
    times: np.ndarray  # int64 ms
    outputs: np.ndarray  # float32 [N, K]
    offsets: np.ndarray
    indexes: np.ndarray
    timestamps: np.ndarray  # broker timestamps of the source messages

    def take(self, idx: np.ndarray) -> ScoreRows:
        return ScoreRows(
            self.keys.take(pa.array(idx)),
            self.times[idx],
            self.outputs[idx],
            self.offsets[idx],
            self.indexes[idx],
            self.timestamps[idx],
        )

    def __len__(self) -> int:
        return len(self.times)


class ScoreEmitter:
    """Encodes and sends the scores of one worker into its open transaction."""

    def __init__(self, tx: ScoresTransaction, config: WorkerConfig) -> None:
        self.tx = tx
        self.source_topic = config.events_topic
        self.scores_topic = config.scores_topic
        self.shadow_topic = config.shadow_topic
        self.encoding = config.score_encoding

    def emit_scored(
        self, part: ScoringPartition, scored: ScoredBatch, messages: list, shadow: bool
    ) -> tuple[list[Reject], ScoreRows]:
        """Send the champion's scores of a processed batch (and the challenger's into the shadow topic when
        ``shadow``); returns the rejects of scores too large to write and the rows sent."""
        d = scored.decoded
        times = d.batch.column(1).cast(pa.int64()).to_numpy()
        if scored.rows.size == d.num_valid and scored.emit.all():  # the common case: every row, in order
            rows = ScoreRows(
                d.batch.column(0), times, scored.outputs, d.offset, d.event_index, d.timestamp_ms
            )
        else:
            sel = scored.rows[scored.emit]
            rows = ScoreRows(
                d.batch.column(0).take(pa.array(sel)),
                times[sel],
                scored.outputs[scored.emit],
                d.offset[sel],
                d.event_index[sel],
                d.timestamp_ms[sel],
            )
        arrow = self._arrow_out(messages)
        champ = part.champion
        rejects = self.emit(self.scores_topic, part.partition, rows, champ.output_names, champ.version, arrow)
        if shadow and scored.shadow is not None and part.challenger is not None:
            ch = part.challenger
            shadow_rows = ScoreRows(
                rows.keys, rows.times, scored.shadow[scored.emit], rows.offsets, rows.indexes, rows.timestamps
            )
            self.emit(self.shadow_topic, part.partition, shadow_rows, ch.output_names, ch.version, arrow)
        return rejects, rows

    def _arrow_out(self, messages: list) -> bool:
        """Arrow scores for Arrow events (``score_encoding`` auto), or what the worker was told."""
        if self.encoding != "auto":
            return self.encoding == "arrow"
        return message_encoding(messages[0].headers) == ARROW

    def emit(
        self,
        topic: str,
        partition: int,
        rows: ScoreRows,
        output_names: tuple[str, ...],
        version: str,
        arrow: bool,
    ) -> list[Reject]:
        """Send the scores of ``rows``; returns rejects for events whose score record cannot be written."""
        if not len(rows):
            return []
        limit = self.tx.max_request_size - RECORD_OVERHEAD_BYTES
        if arrow:
            return self._emit_arrow(topic, partition, rows, output_names, version, limit)
        value_array = scores_to_json_array(
            rows.keys,
            rows.times,
            rows.outputs,
            output_names,
            version,
            self.source_topic,
            partition,
            rows.offsets,
            rows.indexes,
        )
        key_array = rows.keys.cast(pa.binary())
        longest = pc.max(pc.add(pc.binary_length(value_array), pc.binary_length(key_array))).as_py()
        if longest <= limit:  # the common case: every record fits; whole record batches, no object a record
            self.tx.send_records(topic, partition, key_array, value_array)
            return []
        values, keys = value_array.to_pylist(), key_array.to_pylist()
        too_large: list[Reject] = []
        fit: list[int] = []
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            if len(value) + len(key) > limit:
                too_large.append(self._reject(rows, i, partition, len(value) + len(key), JSON))
            else:
                fit.append(i)
        self.tx.send_many(topic, partition, [values[i] for i in fit], [keys[i] for i in fit])
        return too_large

    def _emit_arrow(
        self, topic: str, partition: int, rows: ScoreRows, names: tuple[str, ...], version: str, limit: int
    ) -> list[Reject]:
        too_large: list[Reject] = []
        pending = [
            (a, min(a + MAX_ARROW_SCORE_ROWS, len(rows))) for a in range(0, len(rows), MAX_ARROW_SCORE_ROWS)
        ]
        while pending:
            a, b = pending.pop(0)
            value = scores_to_arrow(
                rows.keys.slice(a, b - a),
                rows.times[a:b],
                rows.outputs[a:b],
                names,
                version,
                self.source_topic,
                partition,
                rows.offsets[a:b],
                rows.indexes[a:b],
            )
            if len(value) <= limit:
                self.tx.send(topic, value, partition, headers=ARROW_HEADERS)
            elif b - a == 1:
                too_large.append(self._reject(rows, a, partition, len(value), ARROW))
            else:
                mid = (a + b) // 2
                pending[:0] = [(a, mid), (mid, b)]
        return too_large

    def _reject(self, rows: ScoreRows, i: int, partition: int, size: int, encoding: str) -> Reject:
        key = rows.keys[i].as_py()
        return Reject(
            raw=b"",  # the event itself is in the events topic at (partition, offset, index)
            reason=SCORE_TOO_LARGE,
            detail=f"its score record is {size} bytes, over the producer's max_request_size; key of "
            f"{len(key.encode())} bytes",
            topic=self.source_topic,
            partition=partition,
            offset=int(rows.offsets[i]),
            timestamp_ms=int(rows.timestamps[i]),
            key=key.encode()[:1024],
            event_index=int(rows.indexes[i]),
            encoding=encoding,
        )
