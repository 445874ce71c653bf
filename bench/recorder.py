"""The recorder: the engines' ResultSink. Cheap on the hot path, exact in the histograms.

``record`` only packs nine ints into a preallocated buffer (``struct.pack_into``: ~0.3 µs less per record than
extending an ``array('q')`` from a tuple, which converts and appends one item at a time); every ``batch``
records the buffer is folded into
the HDR histograms and per-second series with numpy (vectorised bucket indices, in-place ``np.add.at``). Memory
stays flat: nothing per request is kept after a fold (the optional raw log is streamed to an Arrow IPC stream
file), and nothing dense is allocated per second either -- the few open per-second histograms are recycled
through a small pool and a closed second keeps only its ~1 KB encoding (see docs/performance.md, memory).
"""

from __future__ import annotations

import re
import struct
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.hdr import HDR_HIGHEST_US, Histogram, IntArray, counts_index
from bench.results import RECORD_FIELDS, UNANSWERED_KINDS, Kind, kind_name
from bench.rundata import MEASURED, WARMUP, ErrorCount, ErrorSample, HistKey, PerSecond, Phase, RunData, Totals

__all__ = ["FOLD_BATCH", "MAX_ERROR_SAMPLES", "Progress", "Recorder"]

MAX_ERROR_SAMPLES = 20
_NFIELDS = len(RECORD_FIELDS)  # one row of the buffer per record
_ROW = struct.Struct(f"={_NFIELDS}q")  # native-endian int64s, no padding: what np.frombuffer(int64) reads
_ROW_BYTES = _ROW.size
# columns of a record row (RECORD_FIELDS): latency, service time and schedule lag are ends minus starts
_OK = int(Kind.OK)
_UNANSWERED = np.array(sorted(int(k) for k in UNANSWERED_KINDS), dtype=np.int64)  # no answer: not in the span
_ENDS, _STARTS = (2, 2, 1), (0, 1, 0)  # (done, done, sent) - (intended, sent, intended)
_SUMMED = slice(5, 8)  # rows, bytes_out, bytes_in: summed in one call
FOLD_BATCH = 2048  # records per fold: a fold blocks the loop ~0.1 ms, ~52 ns per record (8192 records blocked it
# ~0.7 ms before the fold got cheaper: a visible stall in open-loop schedule lag at high rates)
_OPEN_SECONDS = 3  # per-second histograms kept dense (others encoded) — answers arrive slightly out of order
_SPARE_HISTOGRAMS = 4  # cleared per-second histograms kept for reuse (each holds a ~184 KB count array)
_SECRET_IN_TEXT = re.compile(rb"(?i)(bearer\s+|token[\"'=:\s]+|secret[\"'=:\s]+|password[\"'=:\s]+)[^\s\"',}]+")


@dataclass(frozen=True, slots=True)
class Progress:
    """A live snapshot for progress displays."""

    elapsed_s: float
    recent_rps: float  # completions per second over the last ~2 s
    recent_p99_ms: float | None  # latency (from intended time) p99 of ok requests over the last ~2 s; None: none
    requests: int  # all recorded requests so far (both phases)
    errors: int
    dropped: int

    @property
    def rps(self) -> float:
        """Alias of recent_rps (what progress views show)."""
        return self.recent_rps

    @property
    def p99_ms(self) -> float | None:
        """Alias of recent_p99_ms."""
        return self.recent_p99_ms


def _us(ns: IntArray) -> IntArray:
    """ns -> µs, rounded to nearest, clipped at 0 (clock skew between calls must not go negative)."""
    out: IntArray = np.maximum((ns + 500) // 1000, 0)
    return out


class _Growable:
    """Per-second int64 columns that grow by doubling."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.cols = {n: np.zeros(64, dtype=np.int64) for n in names}
        self.used = np.zeros(64, dtype=bool)
        self.n = 0  # 1 + highest second seen

    def ensure(self, size: int) -> None:
        cap = len(self.used)
        if size <= cap:
            self.n = max(self.n, size)
            return
        new = max(size, cap * 2)
        for k, v in self.cols.items():
            grown = np.zeros(new, dtype=np.int64)
            grown[:cap] = v
            self.cols[k] = grown
        used = np.zeros(new, dtype=bool)
        used[:cap] = self.used
        self.used = used
        self.n = max(self.n, size)


class Recorder:
    """Implements bench.engine.base.ResultSink plus the extra API other parts use.

    Phase of a request: warmup if its intended time is before ``warmup_end_ns``, else measured.
    Times are ``time.monotonic_ns()``; the wall-clock start is captured at construction.
    """

    def __init__(self, start_ns: int, warmup_end_ns: int, *, raw_path: Path | None = None,
                 batch: int = FOLD_BATCH, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.start_ns = start_ns
        self.warmup_end_ns = warmup_end_ns
        self.start_unix_ns = time.time_ns() - (time.monotonic_ns() - start_ns)
        self._clock = clock
        self._rows_mem = bytearray(max(1, batch) * _ROW.size)  # records since the last fold, packed
        self._rows_end = 0  # bytes of _rows_mem in use
        self._pack = _ROW.pack_into
        self._dropped_buf = array("q")
        self._lag_buf = array("q")
        self._named_buf: dict[str, array[int]] = {}
        self._hists: dict[HistKey, Histogram] = {}
        self._totals = {WARMUP: Totals(), MEASURED: Totals()}
        self._span: dict[str, list[int]] = {}  # phase -> [first, last] done time (ns) of its answers (RunData.rps)
        self._errors: dict[tuple[str, int, str], int] = {}
        self._samples: dict[tuple[int, int, bytes], int] = {}
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, dict[int, float]] = {}
        self._series = _Growable(PerSecond.COUNT_COLUMNS)
        self._open_sec: dict[int, Histogram] = {}
        self._spare: list[Histogram] = []  # recycled per-second histograms (no dense allocation per second)
        self._recent = Histogram()  # progress()'s scratch merge of the open seconds, reused
        self._closed_sec: dict[int, str] = {}
        self._max_sec = -1
        self._raw_path = raw_path
        self._raw_writer: Any = None
        self._finished = False

    # -- ResultSink (hot path) -------------------------------------------------------------------------
    def record(self, intended_ns: int, sent_ns: int, done_ns: int, kind: int, status: int, rows: int,
               bytes_out: int, bytes_in: int, server_ns: int) -> None:
        try:
            self._pack(self._rows_mem, self._rows_end, intended_ns, sent_ns, done_ns, kind, status, rows, bytes_out,
                       bytes_in, server_ns)
        except struct.error:  # the buffer is full (or a value is out of range: then the second pack raises too)
            self._flush()
            self._pack(self._rows_mem, 0, intended_ns, sent_ns, done_ns, kind, status, rows, bytes_out, bytes_in,
                       server_ns)
        self._rows_end += _ROW_BYTES

    def error_detail(self, kind: int, status: int, detail: bytes) -> None:
        key = (kind, status, detail[:512])
        samples = self._samples
        if key in samples:
            samples[key] += 1
        elif len(samples) < MAX_ERROR_SAMPLES:
            samples[key] = 1

    def dropped(self, intended_ns: int) -> None:
        self._dropped_buf.append(intended_ns)

    def loop_lag(self, lag_ns: int) -> None:
        self._lag_buf.append(lag_ns)

    def abandoned(self, n: int, at_ns: int) -> None:
        """``n`` requests still in flight when the run ended at ``at_ns`` (after the drain): errors of kind
        ``abandoned``, status 0, in the phase the run ended in (a request in flight at the end belongs to the end,
        whenever it was sent). No latency is recorded for them: there was no answer. Counted once per run, so
        ``counters['in_flight_at_end']`` holds them and ``sent = ok + errors + in_flight_at_end`` can be checked.
        """
        if n <= 0 or self._finished:
            return
        self._flush()
        phase = MEASURED if at_ns >= self.warmup_end_ns else WARMUP
        tot = self._totals[phase]
        tot.requests += n
        tot.errors += n
        key = (kind_name(Kind.ABANDONED), 0, phase)
        self._errors[key] = self._errors.get(key, 0) + n
        self.count("in_flight_at_end", n)
        sec = self._second_of(at_ns)
        s = self._series
        s.ensure(sec + 1)
        s.cols["requests"][sec] += n
        s.cols["errors"][sec] += n
        s.used[sec] = True

    # -- extra API -------------------------------------------------------------------------------------
    def record_named(self, name: str, value_ns: int, at_ns: int | None = None) -> None:
        """A value for an extra histogram (e.g. UbiOps batch 'batch_e2e', 'queue', 'processing'), in the phase of
        ``at_ns`` — a request's intended send time for a per-request value, like every request — else of now."""
        buf = self._named_buf.get(name)
        if buf is None:
            buf = self._named_buf[name] = array("q")
        buf.append(self._clock() if at_ns is None else at_ns)
        buf.append(value_ns)

    def count(self, name: str, n: int = 1) -> None:
        """Bump a named counter (e.g. 'token_refresh', 'status_completed')."""
        self._counters[name] = self._counters.get(name, 0) + n

    def gauge(self, name: str, value: float) -> None:
        """Set a per-second last-value series (e.g. a rate-limit header)."""
        sec = self._second_of(self._clock())
        self._gauges.setdefault(name, {})[sec] = float(value)

    def progress(self) -> Progress:
        self._flush()
        now = self._clock()
        elapsed = max(0.0, (now - self.start_ns) / 1e9)
        cur = int(elapsed)
        lo = max(0, cur - 2)
        s = self._series
        hi = min(cur + 1, s.n)
        n = int(s.cols["requests"][lo:hi].sum()) if hi > lo else 0
        window = elapsed - lo
        recent = self._recent
        recent.clear()
        for sec, h in self._open_sec.items():
            if sec >= lo:
                recent.add(h)
        t = self._totals
        return Progress(
            elapsed_s=elapsed,
            recent_rps=n / window if window > 0 else 0.0,
            recent_p99_ms=recent.percentiles_ms((99,))[99] if recent.total else None,
            requests=t[WARMUP].requests + t[MEASURED].requests,
            errors=t[WARMUP].errors + t[MEASURED].errors,
            dropped=t[WARMUP].dropped + t[MEASURED].dropped,
        )

    def status_count(self, status: int) -> int:
        """Non-ok answers with this HTTP status so far (e.g. 401 to trigger a token refresh); flushes first."""
        self._flush()
        return sum(n for (_, st, _), n in self._errors.items() if st == status)

    def fold_pending(self) -> None:
        """Fold the buffered records now: a caller about to ask for figures does it in a loop turn of its own
        (in a busy run a fold blocks the event loop for ~0.3 ms, and figures asked for right after find it done)."""
        self._flush()

    def checkpoint_steps(self) -> Iterator[None]:
        """The slow parts of ``checkpoint`` done ahead, one per step (the caller yields to the event loop between
        steps): fold what is buffered, then encode each open second but the newest. Each blocks the loop for
        ~0.3 ms in a busy run; together, in one turn, they made a >1 ms stall that left the sends due in it late.
        ``checkpoint`` then finds the encodings kept (``Histogram.encode``) unless an answer arrived for that
        second since."""
        self.fold_pending()
        for sec in sorted(self._open_sec)[:-1]:  # not the newest: answers keep coming for it
            yield
            h = self._open_sec.get(sec)
            if h is not None and h.total:
                h.encode()

    def checkpoint(self, after_second: int) -> dict[str, Any]:
        """What bench.checkpoint appends once a second (flushes first): cumulative totals, errors, counters and
        error samples (small), and the per-second rows after ``after_second`` — closed ones final, open ones
        provisional (a later checkpoint rewrites them). ``closed_upto`` is the highest closed second."""
        self._flush()
        s = self._series
        rows = []
        for sec in range(max(0, after_second + 1), s.n):
            if not s.used[sec]:
                continue
            h = self._open_sec.get(sec)
            hdr = h.encode() if h is not None and h.total else self._closed_sec.get(sec, "")
            rows.append({"second": sec, "hdr": hdr, **{c: int(v[sec]) for c, v in s.cols.items()}})
        open_lo = min(self._open_sec, default=self._max_sec + 1)
        return {"elapsed_s": max(0.0, (self._clock() - self.start_ns) / 1e9),
                "closed_upto": min(open_lo - 1, self._max_sec - _OPEN_SECONDS), "series": rows,
                "totals": {ph: {f: getattr(t, f) for f in Totals.__slots__} for ph, t in self._totals.items()},
                "errors": [[k, st, ph, c] for (k, st, ph), c in sorted(self._errors.items())],
                "counters": dict(self._counters),
                "span": self._span_s(),
                "samples": [[kind_name(k), st, _redact_detail(d), c] for (k, st, d), c in self._samples.items()]}

    def finish(self, end_ns: int, *, partial: bool) -> RunData:
        """Fold everything and return the run's data; later records are ignored."""
        self._flush()
        for sec in sorted(self._open_sec):
            self._close_second(sec)
        self.close()
        self._finished = True
        return self._run_data(end_ns, partial, self._closed_sec, dict(sorted(self._hists.items())))

    def close(self) -> None:
        """Release the raw log's file (idempotent): ``finish`` does, and so must a run that fails before it."""
        if self._raw_writer is not None:
            self._raw_writer.close()
            self._raw_writer = None

    def snapshot(self) -> RunData:
        """The data so far, without finishing (copies; open seconds encoded but kept open): for live streaming
        of a run's progress, e.g. to a distributed run's master."""
        self._flush()
        hdr = dict(self._closed_sec)
        for sec, h in self._open_sec.items():
            hdr[sec] = h.encode() if h.total else ""
        hists = {k: h.copy() for k, h in sorted(self._hists.items())}
        return self._run_data(self._clock(), True, hdr, hists)

    def _run_data(self, end_ns: int, partial: bool, hdr: dict[int, str], hists: dict[HistKey, Histogram]) -> RunData:
        warm_end = max(0.0, (self.warmup_end_ns - self.start_ns) / 1e9)
        end = max(0.0, (end_ns - self.start_ns) / 1e9)
        phases = [Phase(WARMUP, 0.0, min(warm_end, end)), Phase(MEASURED, min(warm_end, end), end)]
        s = self._series
        secs = np.nonzero(s.used[: s.n])[0].astype(np.int64)
        series = PerSecond(second=secs, **{k: v[secs].copy() for k, v in s.cols.items()},
                           hdr=[hdr.get(int(i), "") for i in secs])
        errors = [ErrorCount(k, st, ph, c) for (k, st, ph), c in sorted(self._errors.items())]
        samples = [ErrorSample(kind_name(k), st, _redact_detail(d), c) for (k, st, d), c in self._samples.items()]
        return RunData(start_unix_ns=self.start_unix_ns, phases=phases, partial=partial,
                       histograms=hists, series=series,
                       totals={k: Totals(**{f: getattr(v, f) for f in Totals.__slots__})
                               for k, v in self._totals.items()},
                       counters=dict(self._counters), gauges={k: dict(v) for k, v in self._gauges.items()},
                       errors=errors, error_samples=samples,
                       raw_path=self._raw_path if self._raw_path is not None and self._raw_path.exists()
                       else None,
                       done_span=self._span_s())

    def _span_s(self) -> dict[str, tuple[float, float]]:
        """Each phase's first and last answer, in seconds from the start (``RunData.done_span``)."""
        return {ph: ((lo - self.start_ns) / 1e9, (hi - self.start_ns) / 1e9) for ph, (lo, hi) in self._span.items()}

    # -- folding ---------------------------------------------------------------------------------------
    def _hist(self, metric: str, phase: str, outcome: str) -> Histogram:
        key = HistKey(metric, phase, outcome)
        h = self._hists.get(key)
        if h is None:
            h = self._hists[key] = Histogram()
        return h

    def _flush(self) -> None:
        if self._finished:  # a straggler answer after finish(): ignore it rather than break the engine
            self._rows_end = 0
            self._dropped_buf, self._lag_buf = array("q"), array("q")
            self._named_buf.clear()
            return
        if self._rows_end:
            n, self._rows_end = self._rows_end, 0
            # a view of the buffer: the fold copies what it keeps, and the buffer is refilled only after it
            self._fold(np.frombuffer(self._rows_mem, dtype=np.int64, count=n // 8).reshape(-1, _NFIELDS))
        if self._dropped_buf:
            buf, self._dropped_buf = self._dropped_buf, array("q")
            self._fold_dropped(np.frombuffer(buf, dtype=np.int64))
        if self._lag_buf:
            buf, self._lag_buf = self._lag_buf, array("q")
            self._hist("loop_lag", self._phase_now(), "all").record_us(_us(np.frombuffer(buf, dtype=np.int64)))
        for name, nbuf in self._named_buf.items():
            if nbuf:
                pairs = np.frombuffer(nbuf, dtype=np.int64).reshape(-1, 2)
                measured = pairs[:, 0] >= self.warmup_end_ns
                for phase, m in ((MEASURED, measured), (WARMUP, ~measured)):
                    if m.any():
                        self._hist(name, phase, "all").record_us(_us(pairs[m, 1]))
                self._named_buf[name] = array("q")

    def _phase_now(self) -> str:
        return MEASURED if self._clock() >= self.warmup_end_ns else WARMUP

    def _fold(self, a: IntArray) -> None:
        """Fold a batch of records. It blocks the event loop, and in a run each numpy call costs several µs (the
        loop's own work has the caches), so the work is done in as few calls as possible: the three durations of
        every record at once, and a batch of one phase with every answer ok (the common case) on its own path."""
        intended, _, done, kind, status, rows, b_out, b_in, server = a.T  # RECORD_FIELDS, in order
        us = _us(a[:, _ENDS] - a[:, _STARTS])  # (n, 3): latency, service time, schedule lag
        idx = counts_index(us)
        ok = kind == _OK  # a plain int: comparing with the IntEnum member took ~20 µs a fold
        measured = intended >= self.warmup_end_ns
        all_ok = bool(ok.all())
        all_measured = bool(measured.all())
        all_warm = not all_measured and not bool(measured.any())
        if all_ok and (all_measured or all_warm):
            self._fold_uniform(a, MEASURED if all_measured else WARMUP, us, idx)
            return
        lat, svc, lag = us.T
        lat_idx, svc_idx, lag_idx = idx.T
        answered = ~np.isin(kind, _UNANSWERED)  # a timeout, refused or broken connection, ...: not an answer
        for phase, pm in ((MEASURED, measured), (WARMUP, ~measured)):
            if (phase == MEASURED and all_warm) or (phase == WARMUP and all_measured):
                continue
            whole_phase = all_measured if phase == MEASURED else all_warm
            tot = self._totals[phase]
            for outcome, om in (("ok", ok), ("error", ~ok)):
                if outcome == "error" and all_ok:
                    continue
                if whole_phase and outcome == "ok" and all_ok:
                    sel: slice | IntArray = slice(None)
                else:
                    sel = np.nonzero(pm & om)[0]
                    if len(sel) == 0:
                        continue
                lv, sv = lat[sel], svc[sel]
                self._hist("latency", phase, outcome).record_indices(lat_idx[sel], int(lv.min()), int(lv.max()))
                self._hist("service", phase, outcome).record_indices(svc_idx[sel], int(sv.min()), int(sv.max()))
                n = len(lv)
                tot.requests += n
                if outcome == "ok":
                    tot.ok += n
                    tot.rows += int(rows[sel].sum())
                else:
                    tot.errors += n
                    self._count_errors(kind[sel], status[sel], phase)
                tot.bytes_out += int(b_out[sel].sum())
                tot.bytes_in += int(b_in[sel].sum())
            psel = slice(None) if whole_phase else np.nonzero(pm)[0]
            dv = done[np.nonzero(pm & answered)[0]]  # the span of the answers that came back
            if len(dv):
                self._widen_span(phase, int(dv.min()), int(dv.max()))
            gv = lag[psel]
            self._hist("schedule_lag", phase, "all").record_indices(
                lag_idx[psel], min(int(gv.min()), HDR_HIGHEST_US), min(int(gv.max()), HDR_HIGHEST_US))
            self._fold_server(server[psel], phase)
        self._fold_series(done, ok, rows, b_out, b_in, lat_idx, lat)
        if self._raw_path is not None:
            self._write_raw(a)

    def _fold_uniform(self, a: IntArray, phase: str, us: IntArray, idx: IntArray) -> None:
        """``_fold`` of a batch of one phase whose answers are all ok."""
        _, _, done, _, _, rows_col, out_col, in_col, server = a.T  # RECORD_FIELDS, in order
        lo, hi = us.min(axis=0).tolist(), us.max(axis=0).tolist()
        lat_idx, svc_idx, lag_idx = idx.T
        self._hist("latency", phase, "ok").record_indices(lat_idx, lo[0], hi[0])
        self._hist("service", phase, "ok").record_indices(svc_idx, lo[1], hi[1])
        self._hist("schedule_lag", phase, "all").record_indices(lag_idx, min(lo[2], HDR_HIGHEST_US),
                                                                 min(hi[2], HDR_HIGHEST_US))
        self._fold_server(server, phase)
        n = len(a)
        rows, b_out, b_in = a[:, _SUMMED].sum(axis=0).tolist()
        tot = self._totals[phase]
        tot.requests += n
        tot.ok += n
        tot.rows += rows
        tot.bytes_out += b_out
        tot.bytes_in += b_in
        dmin, dmax = int(done.min()), int(done.max())
        self._widen_span(phase, dmin, dmax)
        first, last = self._second_of(dmin), self._second_of(dmax)
        if first != last:
            self._fold_series(done, np.ones(n, dtype=bool), rows_col, out_col, in_col, lat_idx, us[:, 0])
        else:
            self._series.ensure(first + 1)
            self._fold_second(first, n, 0, (rows, b_out, b_in), lat_idx, lo[0], hi[0])
        if self._raw_path is not None:
            self._write_raw(a)

    def _widen_span(self, phase: str, lo: int, hi: int) -> None:
        span = self._span.get(phase)
        if span is None:
            self._span[phase] = [lo, hi]
        else:
            span[0], span[1] = min(span[0], lo), max(span[1], hi)

    def _fold_server(self, server: IntArray, phase: str) -> None:
        """Server-reported durations (ns; 0: the server reported none)."""
        if server.any():
            srv = server[server > 0]
            self._hist("server", phase, "all").record_us(_us(srv))

    def _second_of(self, t_ns: int) -> int:
        return max(0, (t_ns - self.start_ns) // 1_000_000_000)

    def _count_errors(self, kinds: IntArray, statuses: IntArray, phase: str) -> None:
        pairs, counts = np.unique(np.stack([kinds, statuses], axis=1), axis=0, return_counts=True)
        for (k, st), c in zip(pairs.tolist(), counts.tolist(), strict=True):
            key = (kind_name(k), int(st), phase)
            self._errors[key] = self._errors.get(key, 0) + int(c)

    def _seconds(self, t_ns: IntArray) -> IntArray:
        out: IntArray = np.maximum((t_ns - self.start_ns) // 1_000_000_000, 0)
        return out

    def _fold_series(self, done: IntArray, ok: npt_bool, rows: IntArray, b_out: IntArray, b_in: IntArray,
                     lat_idx: IntArray, lat: IntArray) -> None:
        sec = self._seconds(done)
        lo, hi = int(sec.min()), int(sec.max())
        s = self._series
        s.ensure(hi + 1)
        if lo == hi:  # a batch within one second: sums, not weighted bincounts (~35 µs less)
            n, n_ok = len(ok), int(np.count_nonzero(ok))
            every = n_ok == n
            ok_lat = lat if every else lat[ok]
            self._fold_second(lo, n, n - n_ok, (int(rows.sum() if every else rows[ok].sum()), int(b_out.sum()),
                                                int(b_in.sum())), lat_idx if every else lat_idx[ok],
                              int(ok_lat.min()) if n_ok else 0, int(ok_lat.max()) if n_ok else 0)
            return
        rel = sec - lo
        width = hi - lo + 1
        cols = s.cols
        cols["requests"][lo:hi + 1] += np.bincount(rel, minlength=width)
        cols["errors"][lo:hi + 1] += np.bincount(rel, weights=~ok, minlength=width).astype(np.int64)
        cols["rows"][lo:hi + 1] += np.bincount(rel, weights=rows * ok, minlength=width).astype(np.int64)
        cols["bytes_out"][lo:hi + 1] += np.bincount(rel, weights=b_out, minlength=width).astype(np.int64)
        cols["bytes_in"][lo:hi + 1] += np.bincount(rel, weights=b_in, minlength=width).astype(np.int64)
        s.used[lo:hi + 1] |= np.bincount(rel, minlength=width) > 0
        # the seconds with ok answers (np.unique took ~50 µs to ms here; a batch spans a few seconds at most)
        for second in (np.flatnonzero(np.bincount(rel[ok], minlength=width)) + lo).tolist():
            sel = np.nonzero(ok & (sec == second))[0]
            h = self._second_hist(second)
            lv = lat[sel]
            h.record_indices(lat_idx[sel], int(lv.min()), int(lv.max()))
        self._end_fold(hi)

    def _fold_second(self, sec: int, n: int, errors: int, sums: tuple[int, int, int], ok_idx: IntArray, ok_min: int,
                     ok_max: int) -> None:
        """A batch whose ``n`` answers all came in second ``sec``: its per-second row (``sums``: rows, bytes out,
        bytes in) and its ok answers' latencies (bucket indices ``ok_idx``, exact extremes) in that second's
        histogram."""
        cols = self._series.cols
        cols["requests"][sec] += n
        cols["errors"][sec] += errors
        cols["rows"][sec] += sums[0]
        cols["bytes_out"][sec] += sums[1]
        cols["bytes_in"][sec] += sums[2]
        self._series.used[sec] = True
        if len(ok_idx):
            self._second_hist(sec).record_indices(ok_idx, ok_min, ok_max)
        self._end_fold(sec)

    def _second_hist(self, second: int) -> Histogram:
        """The open latency histogram of ``second`` (recycled, or reopened from its encoding: a late answer)."""
        h = self._open_sec.get(second)
        if h is None:
            h = self._spare.pop() if self._spare else Histogram()
            old = self._closed_sec.pop(second, None)
            if old:  # a late answer for a second already encoded: reopen it (rare)
                h.add(Histogram.decode(old))
            self._open_sec[second] = h
        return h

    def _end_fold(self, hi: int) -> None:
        self._max_sec = max(self._max_sec, hi)
        for second in [x for x in self._open_sec if x <= self._max_sec - _OPEN_SECONDS]:
            self._close_second(second)

    def _close_second(self, second: int) -> None:
        h = self._open_sec.pop(second)
        self._closed_sec[second] = h.encode() if h.total else ""
        if len(self._spare) < _SPARE_HISTOGRAMS:
            h.clear()
            self._spare.append(h)

    def _fold_dropped(self, intended: IntArray) -> None:
        measured = intended >= self.warmup_end_ns
        nm = int(measured.sum())
        self._totals[MEASURED].dropped += nm
        self._totals[WARMUP].dropped += len(intended) - nm
        sec = self._seconds(intended)
        s = self._series
        s.ensure(int(sec.max()) + 1)
        binned = np.bincount(sec)
        s.cols["dropped"][: len(binned)] += binned
        s.used[: len(binned)] |= binned > 0

    def _write_raw(self, a: IntArray) -> None:
        import pyarrow as pa
        import pyarrow.ipc

        times = ("intended_ns", "sent_ns", "done_ns")
        types = {"kind": np.int8, "status": np.int32}
        batch = pa.record_batch({
            name: pa.array(a[:, i] - self.start_ns if name in times else a[:, i].astype(types.get(name, np.int64)))
            for i, name in enumerate(RECORD_FIELDS)})
        if self._raw_writer is None:
            assert self._raw_path is not None
            self._raw_writer = pyarrow.ipc.new_stream(str(self._raw_path), batch.schema)
        self._raw_writer.write_batch(batch)


npt_bool = Any  # numpy boolean array (kept loose: numpy's bool typing is noisy under mypy --strict)


def _redact_detail(detail: bytes) -> str:
    """Error evidence as text, with anything that looks like a credential blanked."""
    return _SECRET_IN_TEXT.sub(rb"\1***", detail).decode("utf-8", "replace")
