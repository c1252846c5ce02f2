"""JSON events of the common shape parsed by one compiled loop straight into column arrays.

``pyarrow.json`` parses a JSON event of 31 numbers in ~3-8 us (it keeps each number as text first, then
converts); a scored JSON event spent more time there than in anything else. :class:`FastJsonColumns` reads
the events a well-behaved producer writes, one flat object each holding exactly the schema's fields (any
order, any whitespace): ASCII strings without escapes, integer times and labels, numbers and fixed-length
number lists, into the same columns ``pyarrow.json`` gives (string, int64, float64, list<float64>).

Numbers are exact: a decimal of at most 19 significant digits and a power of ten within 1e22 whose digits
fit a double's 53 bits is one correctly rounded IEEE multiplication or division (Clinger's fast path), so the
double is the one any correct parser gives. Anything else in a chunk (an escape, a non-ASCII byte, a field
not in the schema, a missing, repeated or null field, a vector of another length, a number outside the fast
path, anything malformed) makes :meth:`FastJsonColumns.columns` return None and the caller parses the chunk
with ``pyarrow.json`` as before, which is also where bad events are found and explained.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rnnstream.rnn_core.compiled_loop import compiled

STRING, INT, FLOAT, VECTOR = 0, 1, 2, 3
_MAX_FIELDS = 62
_POW10 = np.array([10.0**i for i in range(23)], dtype=np.float64)
_TWO53 = 1 << 53


_kernel = compiled()


@_kernel
def _ws(buf, p, end):
    while p < end and (buf[p] == 32 or buf[p] == 10 or buf[p] == 13 or buf[p] == 9):
        p += 1
    return p


@_kernel
def _plain_string_end(buf, p, end):
    """The position of the closing quote of a string whose text starts at ``p``, or -1 where the string has
    an escape, a control or non-ASCII byte, or no end (those events take pyarrow.json's path)."""
    while p < end and buf[p] != 34:  # "
        if buf[p] == 92 or buf[p] < 32 or buf[p] >= 128:
            return -1
        p += 1
    return p if p < end else -1


@_kernel
def _number(buf, p, end, pow10, integer):
    """A JSON number at ``p``: (float value, integer value, position after it, status). Status 0: read
    (``integer``: an integer of at most 18 digits, its integer value set; else the float value, exact by
    the fast path); 2: a valid float outside the fast path (the caller converts its text); 1: not a valid
    number of that kind."""
    neg = False
    if p < end and buf[p] == 45:  # -
        neg = True
        p += 1
    if p >= end:
        return 0.0, 0, p, 1
    m = 0
    nd = 0
    exp = 0
    exact = True
    c = buf[p]
    if c == 48:  # 0: no digit may follow
        p += 1
        if p < end and 48 <= buf[p] <= 57:
            return 0.0, 0, p, 1
    elif 49 <= c <= 57:
        while p < end and 48 <= buf[p] <= 57:
            if nd >= 18:
                exact = False
            else:
                m = m * 10 + (buf[p] - 48)
                nd += 1
            p += 1
    else:
        return 0.0, 0, p, 1
    if integer:
        if not exact or (p < end and (buf[p] == 46 or buf[p] == 101 or buf[p] == 69)):  # . e E
            return 0.0, 0, p, 1
        return 0.0, -m if neg else m, p, 0
    if p < end and buf[p] == 46:  # .
        p += 1
        if p >= end or not (48 <= buf[p] <= 57):
            return 0.0, 0, p, 1
        while p < end and 48 <= buf[p] <= 57:
            d = buf[p] - 48
            if m > 0 or d > 0:
                if nd >= 18:
                    exact = False
                else:
                    nd += 1
            if exact:
                m = m * 10 + d
                exp -= 1
            p += 1
    if p < end and (buf[p] == 101 or buf[p] == 69):  # e E
        p += 1
        eneg = False
        if p < end and (buf[p] == 43 or buf[p] == 45):
            eneg = buf[p] == 45
            p += 1
        if p >= end or not (48 <= buf[p] <= 57):
            return 0.0, 0, p, 1
        e = 0
        while p < end and 48 <= buf[p] <= 57:
            if e < 100_000:
                e = e * 10 + (buf[p] - 48)
            p += 1
        exp += -e if eneg else e
    if not exact:
        return 0.0, 0, p, 2
    if m == 0:
        value = 0.0
    elif m <= _TWO53 and -22 <= exp <= 22:
        value = float(m) * pow10[exp] if exp >= 0 else float(m) / pow10[-exp]
    else:
        return 0.0, 0, p, 2
    return -value if neg else value, 0, p, 0


@_kernel
def _parse(
    buf, starts, lens, name_data, name_offs, kinds, vec_at, vec_size, pow10, spos, ints, floats, vecs, slow
):
    """Fill the outputs for every event; returns (0 when all are of the common shape, else 1 + the first row
    that is not; numbers left to convert from text). ``slow[k]`` = (text start, length, row, destination:
    a float field's number, or the field count + a vector slot)."""
    n = len(starts)
    ns = 0
    nf = len(kinds)
    want = (np.int64(1) << nf) - 1
    for r in range(n):
        p = starts[r]
        end = p + lens[r]
        seen = np.int64(0)
        p = _ws(buf, p, end)
        if p >= end or buf[p] != 123:  # {
            return r + 1, ns
        p = _ws(buf, p + 1, end)
        while True:
            if p >= end or buf[p] != 34:  # "
                return r + 1, ns
            ks = p + 1
            p = _plain_string_end(buf, ks, end)
            if p < 0:
                return r + 1, ns
            klen = p - ks
            f = -1
            for j in range(nf):
                a = name_offs[j]
                if name_offs[j + 1] - a == klen:
                    same = True
                    for q in range(klen):
                        if name_data[a + q] != buf[ks + q]:
                            same = False
                            break
                    if same:
                        f = j
                        break
            if f < 0 or (seen >> f) & 1:
                return r + 1, ns
            seen |= np.int64(1) << f
            p = _ws(buf, p + 1, end)
            if p >= end or buf[p] != 58:  # :
                return r + 1, ns
            p = _ws(buf, p + 1, end)
            kind = kinds[f]
            if kind == 0:
                if p >= end or buf[p] != 34:
                    return r + 1, ns
                s = p + 1
                p = _plain_string_end(buf, s, end)
                if p < 0:
                    return r + 1, ns
                spos[r, f, 0] = s
                spos[r, f, 1] = p - s
                p += 1
            elif kind == 1:
                _, iv, p, bad = _number(buf, p, end, pow10, True)
                if bad != 0:
                    return r + 1, ns
                ints[r, f] = iv
            elif kind == 2:
                p0 = p
                v, _, p, bad = _number(buf, p, end, pow10, False)
                if bad == 1:
                    return r + 1, ns
                if bad == 2:
                    slow[ns, 0] = p0
                    slow[ns, 1] = p - p0
                    slow[ns, 2] = r
                    slow[ns, 3] = f
                    ns += 1
                floats[r, f] = v
            else:
                if p >= end or buf[p] != 91:  # [
                    return r + 1, ns
                p = _ws(buf, p + 1, end)
                size = vec_size[f]
                at = vec_at[f]
                count = 0
                if p < end and buf[p] == 93:  # ]
                    p += 1
                else:
                    while True:
                        p0 = p
                        v, _, p, bad = _number(buf, p, end, pow10, False)
                        if bad == 1 or count >= size:
                            return r + 1, ns
                        if bad == 2:
                            slow[ns, 0] = p0
                            slow[ns, 1] = p - p0
                            slow[ns, 2] = r
                            slow[ns, 3] = nf + at + count
                            ns += 1
                        vecs[r, at + count] = v
                        count += 1
                        p = _ws(buf, p, end)
                        if p < end and buf[p] == 44:  # ,
                            p = _ws(buf, p + 1, end)
                        elif p < end and buf[p] == 93:
                            p += 1
                            break
                        else:
                            return r + 1, ns
                if count != size:
                    return r + 1, ns
            p = _ws(buf, p, end)
            if p < end and buf[p] == 44:
                p = _ws(buf, p + 1, end)
            elif p < end and buf[p] == 125:  # }
                p = _ws(buf, p + 1, end)
                break
            else:
                return r + 1, ns
        if p != end or seen != want:
            return r + 1, ns
    return 0, ns


@_kernel
def _gather_strings(buf, spos, f, offsets, data):
    n = spos.shape[0]
    at = 0
    offsets[0] = 0
    for r in range(n):
        s = spos[r, f, 0]
        k = spos[r, f, 1]
        for q in range(k):
            data[at + q] = buf[s + q]
        at += k
        offsets[r + 1] = at
    return at


@_kernel
def _copy_texts(buf, slow, width, out):
    for k in range(slow.shape[0]):
        s = slow[k, 0]
        for q in range(slow[k, 1]):
            out[k, q] = buf[s + q]


def _convert_text(buf: np.ndarray, slow: np.ndarray, nf: int, floats: np.ndarray, vecs: np.ndarray) -> None:
    """Numbers outside the fast path from their text, by numpy's correctly rounded string-to-double cast."""
    width = int(slow[:, 1].max())
    texts = np.zeros((len(slow), width), np.uint8)
    _copy_texts(buf, slow, width, texts)
    values = texts.view(f"S{width}").reshape(-1).astype(np.float64)
    rows, dest = slow[:, 2], slow[:, 3]
    in_floats = dest < nf
    floats[rows[in_floats], dest[in_floats]] = values[in_floats]
    vecs[rows[~in_floats], dest[~in_floats] - nf] = values[~in_floats]


class FastJsonColumns:
    """The compiled reader for one parse schema (``pyarrow.json``'s explicit schema of the decoder)."""

    def __init__(self, parse_schema: pa.Schema, vector_sizes: dict[str, int]) -> None:
        kinds, vec_at, vec_size, names = [], [], [], []
        total = 0
        for field in parse_schema:
            t = field.type
            if pa.types.is_string(t):
                kind = STRING
            elif pa.types.is_int64(t):
                kind = INT
            elif pa.types.is_float64(t):
                kind = FLOAT
            elif pa.types.is_list(t) and pa.types.is_float64(t.value_type) and field.name in vector_sizes:
                kind = VECTOR
            else:
                raise ValueError(f"no fast JSON path for field {field.name} of type {t}")
            size = vector_sizes.get(field.name, 0) if kind == VECTOR else 0
            kinds.append(kind)
            vec_at.append(total)
            vec_size.append(size)
            total += size
            names.append(field.name.encode())
        if len(kinds) > _MAX_FIELDS:
            raise ValueError("too many fields for the fast JSON path")
        self.schema = parse_schema
        self._kinds = np.asarray(kinds, np.int64)
        self._vec_at = np.asarray(vec_at, np.int64)
        self._vec_size = np.asarray(vec_size, np.int64)
        self._vec_total = total
        self._name_data = np.frombuffer(b"".join(names), np.uint8) if names else np.zeros(0, np.uint8)
        self._name_offs = np.concatenate([[0], np.cumsum([len(x) for x in names])]).astype(np.int64)

    def columns(self, buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> dict[str, pa.Array] | None:
        """The parse schema's columns of the events at ``buf[starts[i]: starts[i] + lens[i]]`` (uint8), or
        None when any of them is not of the common shape."""
        n = len(starts)
        nf = len(self._kinds)
        spos = np.zeros((n, nf, 2), np.int64)
        ints = np.zeros((n, nf), np.int64)
        floats = np.zeros((n, nf), np.float64)
        vecs = np.zeros((n, self._vec_total), np.float64)
        slow = np.empty((n * (nf + self._vec_total), 4), np.int64)
        status, n_slow = _parse(
            buf,
            starts.astype(np.int64, copy=False),
            lens.astype(np.int64, copy=False),
            self._name_data,
            self._name_offs,
            self._kinds,
            self._vec_at,
            self._vec_size,
            _POW10,
            spos,
            ints,
            floats,
            vecs,
            slow,
        )
        if status:
            return None
        if n_slow:
            _convert_text(buf, slow[:n_slow], nf, floats, vecs)
        cols: dict[str, pa.Array] = {}
        for f, field in enumerate(self.schema):
            kind = self._kinds[f]
            if kind == STRING:
                offsets = np.empty(n + 1, np.int32)
                data = np.empty(int(spos[:, f, 1].sum()), np.uint8)
                _gather_strings(buf, spos, f, offsets, data)
                cols[field.name] = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
            elif kind == INT:
                cols[field.name] = pa.array(ints[:, f])
            elif kind == FLOAT:
                cols[field.name] = pa.array(floats[:, f])
            else:
                size, at = int(self._vec_size[f]), int(self._vec_at[f])
                values = pa.array(np.ascontiguousarray(vecs[:, at : at + size]).reshape(-1))
                offsets = pa.array(np.arange(0, n * size + 1, size, dtype=np.int32))
                cols[field.name] = pa.ListArray.from_arrays(offsets, values)
        return cols
