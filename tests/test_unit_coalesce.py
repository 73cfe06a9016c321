"""The coalescing ingest client against a real durable DataBuffer in this process."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from ray_interactive.core.task import DataSource
from ray_interactive.data.buffer import DataBuffer
from ray_interactive.data.coalesce import IngestBackpressure, IngestClosed, IngestCoalescer

SCHEMA = pa.schema([("id", pa.int64()), ("x", pa.float32())])


def rows(start: int, n: int) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "x": [float(i) for i in range(start, start + n)]},
                    schema=SCHEMA)


class Sink:
    """The buffer as the coalescer's transport, counting calls; ``fail`` makes the next
    calls store the rows and then lose the answer (the outcome a retry must handle)."""

    def __init__(self, tmp: Path, **source: Any) -> None:
        self.buffer = DataBuffer([DataSource("live", schema=SCHEMA, **source)], directory=tmp / "buffer")
        self.calls: list[tuple[str, int]] = []
        self.lose_answers = 0
        self.down = 0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()  # the buffer actor runs one ingest at a time; so does this

    def send(self, table: pa.Table, source: str, batch_id: str) -> dict[str, Any]:
        self.gate.wait()
        if self.down:
            self.down -= 1
            raise ConnectionError("buffer restarting")
        with self.lock:
            self.calls.append((batch_id, table.num_rows))
            ack = self.buffer.ingest(table, source, batch_id)
        if self.lose_answers:
            self.lose_answers -= 1
            raise ConnectionError("answer lost")
        return ack


@pytest.fixture
def sink(tmp_path: Path) -> Sink:
    return Sink(tmp_path)


def test_small_tables_go_as_few_large_ingests_each_acknowledged_with_its_own_rows(sink: Sink) -> None:
    log = IngestCoalescer(sink.send, sink.buffer.source_spec, max_rows=512, max_delay_s=0.05)
    futures = [log.add(rows(i * 4, 4), "live") for i in range(400)]
    acks = [f.result(timeout=30) for f in futures]
    log.close()
    assert len(sink.calls) < 40 and all(n <= 512 for _, n in sink.calls)
    stored = sink.buffer.read("live")
    assert stored.num_rows == 1600  # exactly once
    for i, ack in enumerate(acks):  # each add's sequence numbers hold its own rows
        assert ack["rows"] == 4 and ack["last"] == ack["first"] + 3
        assert stored.column("id").to_pylist()[ack["first"]: ack["last"] + 1] == list(range(i * 4, i * 4 + 4))


def test_a_bad_table_is_refused_at_add_and_the_others_go_on(sink: Sink) -> None:
    with IngestCoalescer(sink.send, sink.buffer.source_spec, max_delay_s=0.01) as log:
        good = log.add(rows(0, 3), "live")
        with pytest.raises(ValueError, match="missing column"):
            log.add(pa.table({"id": [1]}), "live")
        with pytest.raises(ValueError, match="unknown source"):
            log.add(rows(0, 1), "nope")
        with pytest.raises(TypeError, match="pyarrow Table"):
            log.add({"id": [1]}, "live")  # type: ignore[arg-type]
        assert good.result(timeout=30)["rows"] == 3
    assert sink.buffer.read("live").num_rows == 3


def test_without_describe_a_refused_batch_is_split_so_only_the_bad_table_fails(sink: Sink) -> None:
    sink.gate.clear()  # hold the first send so the next three are coalesced
    log = IngestCoalescer(sink.send, None, max_delay_s=0.0)
    first = log.add(rows(0, 1), "live")
    bad = pa.table({"id": [5], "x": [float("nan")]}, schema=SCHEMA)  # NaN: refused by the buffer
    futures = [log.add(rows(10, 2), "live"), log.add(bad, "live"), log.add(rows(20, 2), "live")]
    sink.gate.set()
    assert first.result(timeout=30)["rows"] == 1
    assert futures[0].result(timeout=30)["rows"] == 2 and futures[2].result(timeout=30)["rows"] == 2
    with pytest.raises(ValueError, match="non-finite|NaN"):
        futures[1].result(timeout=30)
    log.close()
    assert sorted(sink.buffer.read("live").column("id").to_pylist()) == [0, 10, 11, 20, 21]
    assert log.stats()["rejected_rows"] == 1


def test_a_bad_value_in_a_table_of_the_right_types_fails_its_own_add_only(sink: Sink) -> None:
    sink.gate.clear()
    log = IngestCoalescer(sink.send, sink.buffer.source_spec, max_delay_s=0.0)
    log.add(rows(0, 1), "live")
    bad = pa.table({"id": [5], "x": [float("inf")]}, schema=SCHEMA)  # right types: checked by the buffer
    futures = [log.add(rows(10, 2), "live"), log.add(bad, "live"), log.add(rows(20, 2), "live")]
    sink.gate.set()
    with pytest.raises(ValueError, match="infinite"):
        futures[1].result(timeout=30)
    assert futures[0].result(timeout=30)["rows"] == 2 and futures[2].result(timeout=30)["rows"] == 2
    log.close()
    assert sorted(sink.buffer.read("live").column("id").to_pylist()) == [0, 10, 11, 20, 21]


def test_a_lost_answer_is_retried_with_the_same_batch_id_and_stored_once(sink: Sink) -> None:
    sink.lose_answers, sink.down = 1, 2
    log = IngestCoalescer(sink.send, sink.buffer.source_spec, max_delay_s=0.0, retry_base_s=0.01)
    ack = log.add(rows(0, 5), "live").result(timeout=30)
    log.close()
    assert ack["duplicate"] is True  # the second try found the first one stored
    assert [b for b, _ in sink.calls] == [ack["batch_id"]] * 2
    assert sink.buffer.read("live").num_rows == 5
    assert log.stats()["retries"] == 3


def test_backpressure_then_close_fails_what_was_never_stored(sink: Sink) -> None:
    sink.gate.clear()  # the buffer does not answer
    log = IngestCoalescer(sink.send, sink.buffer.source_spec, max_pending_rows=10, max_delay_s=0.0)
    in_flight = log.add(rows(0, 6), "live")
    queued = log.add(rows(6, 4), "live")
    with pytest.raises(IngestBackpressure, match="10 rows are waiting"):
        log.add(rows(10, 1), "live", timeout=0.2)
    sink.down = 10**6  # from now on every send fails
    sink.gate.set()
    assert log.close(timeout=0.5) > 0
    for f in (in_flight, queued):
        with pytest.raises(IngestClosed, match="buffer restarting"):
            f.result(timeout=10)
    with pytest.raises(IngestClosed):
        log.add(rows(0, 1), "live")
    assert sink.buffer.read("live").num_rows == 0


def test_close_sends_what_is_left_and_flush_waits_for_it(sink: Sink) -> None:
    log = IngestCoalescer(sink.send, sink.buffer.source_spec, max_delay_s=30.0)  # only a flush sends
    futures = [log.add(rows(i, 1), "live") for i in range(5)]
    assert log.pending_rows == 5
    assert log.flush(timeout=30)
    assert all(f.done() for f in futures) and log.pending_rows == 0
    last = log.add(rows(5, 2), "live")
    assert log.close(timeout=30) == 0
    assert last.result(timeout=1)["rows"] == 2
    assert sink.buffer.read("live").num_rows == 7


def test_a_batch_never_exceeds_the_source_table_limit(tmp_path: Path) -> None:
    sink = Sink(tmp_path, max_table_bytes=600)
    sink.gate.clear()
    log = IngestCoalescer(sink.send, sink.buffer.source_spec, max_delay_s=0.0)
    futures = [log.add(rows(i * 8, 8), "live") for i in range(10)]  # 96 bytes each
    sink.gate.set()
    assert sum(f.result(timeout=30)["rows"] for f in futures) == 80
    log.close()
    assert max(n for _, n in sink.calls) * 12 <= 600


@pytest.mark.parametrize("bad", [{"max_rows": 0}, {"max_bytes": -1}, {"max_delay_s": -1}, {"max_pending_rows": 1.5}])
def test_bad_options_are_refused(sink: Sink, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        IngestCoalescer(sink.send, **bad)
