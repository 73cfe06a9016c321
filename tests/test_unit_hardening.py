"""Inputs that used to break or stall a run, at the level of the plain classes (no Ray):
strange command payloads, commands fatal together, non-finite numbers in data and in
training, checkpoint ids that are paths, reused command ids, and the trainer's answers to
each (refused with a reason, the run alive)."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_interactive.cli import parse_assignments, text_fields
from ray_interactive.core.commands import (
    KINDS,
    Cancel,
    CommandRecord,
    CommandStatus,
    LoadCheckpoint,
    Pause,
    Resume,
    SaveCheckpoint,
    SetGradClip,
    Stop,
    UpdateModule,
    UpdateOptimizer,
    loggable,
    parse_command,
)
from ray_interactive.core.config import HealthConfig, RunConfig, TaskSpec
from ray_interactive.core.controller import Controller, read_command_log, replay_commands
from ray_interactive.core.health import HealthGuard, nonfinite_tensors
from ray_interactive.core.inbox import CommandInbox
from ray_interactive.core.messages import CheckpointsRemoved, Outcomes, RunEvent
from ray_interactive.core.task import DataSource
from ray_interactive.data.buffer import DataBuffer
from ray_interactive.data.feeds import LocalFeed
from ray_interactive.examples.regression import RegressionTask, live_schema
from ray_interactive.train.trainer import Trainer

from .conftest import Recorder, assert_plain, regression_config, snapshot_of

REGRESSION = "ray_interactive.examples.regression:RegressionTask"


def rejected(payload: Any) -> str:
    with pytest.raises(ValueError) as e:
        parse_command(payload)
    return str(e.value)


def nest(depth: int) -> Any:
    value: Any = 1.0
    for _ in range(depth):
        value = [value]
    return value


# -- 3. input that is merely strange ---------------------------------------------------------
def test_deeply_nested_payloads_are_refused_with_a_short_message_and_never_recurse() -> None:
    for payload in (
        {"kind": "update_optimizer", "params": {"lr": nest(10)}},
        {"kind": "pause", "comment": "x", "extra": nest(100_000)},  # deeper than the stack
        nest(50_000),
    ):
        message = rejected(payload)
        assert "nested more than 6 levels deep" in message and len(message) < 200


def test_huge_and_invalid_strings_are_refused_without_echoing_them() -> None:
    assert "has 1000000 characters; the limit is 4000" in rejected({"kind": "pause", "comment": "x" * 1_000_000})
    message = rejected({"kind": "pause", "comment": "fine \ud800 text"})
    assert "not valid Unicode (a lone surrogate at position 5" in message
    assert "not valid Unicode" in rejected({"kind": "set_data_mixture", "weights": {"\udfff": 1.0}})
    assert "the limit is 65536" in rejected("[" * 100_000)
    assert "more than 2000 values" in rejected({"kind": "update_optimizer", "params": {"lr": list(range(5000))}})
    message = rejected({"kind": "set_data_mixture", "weights": {"n" * 3000: 1.0}})
    assert "is not a valid name" in message and len(message) < 400
    assert "comment" in rejected({"kind": "pause", "comment": "y" * 2001})
    # a command model cannot even be built with one; one built unvalidated is still checked
    with pytest.raises(ValueError, match="unicode"):
        Pause(comment="\ud83d")
    assert "not valid Unicode" in rejected(Pause.model_construct(comment="\ud83d"))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"kind": "pause", "id": "a b"}, "id: use 1-64 letters"),
        ({"kind": "pause", "id": "x" * 65}, "id: use 1-64 letters"),
        ({"kind": "update_optimizer", "params": {"lr": 1e-3}, "group": "g" * 65}, "group"),
        ({"kind": "update_optimizer", "params": {"l" * 65: 1e-3}}, "params"),
        ({"kind": "update_module", "module": "a/b", "op": "freeze"}, "a module path is names and indices"),
        ({"kind": "update_module", "module": "0", "op": "set_attribute", "attribute": "p;x", "value": 0.1}, "attribute is a Python identifier"),
        ({"kind": "load_checkpoint", "checkpoint_id": "../../../etc@1"}, "is not a checkpoint id"),
        ({"kind": "load_checkpoint", "checkpoint_id": "/tmp/other-run/checkpoints/main@20"}, "is not a checkpoint id"),
        ({"kind": "load_checkpoint", "checkpoint_id": "main@20/../../x"}, "is not a checkpoint id"),
        ({"kind": "load_checkpoint", "checkpoint_id": "main@20\n"}, "is not a checkpoint id"),
        ({"kind": "save_checkpoint", "tag": "ok\n"}, "is not a valid name"),
        ({"kind": "set_data_mixture", "weights": {"base": 1e308, "live": 1e308}}, "must be a finite number >= 0 and <= 1e+06"),
        ({"kind": "pause", "at_step": 10**13}, "at_step"),
        ({"kind": "cancel"}, "cancel needs the command's 'command_id' or its 'seq'"),
        ({"kind": "set_grad_clip", "max_norm": 1.0, **{f"k{i}": i for i in range(20)}}, "and 15 more problem(s)"),
    ],
)
def test_limits_on_free_form_fields(payload: dict[str, Any], reason: str) -> None:
    assert reason in rejected(payload)


def test_a_logged_hostile_payload_is_small_json_safe_and_keeps_simple_ones_as_they_are() -> None:
    assert loggable({"kind": "nope"}) == {"kind": "nope"}
    for hostile in (nest(900), {"k" * 10_000: "v" * 10_000}, ["\ud800"] * 10, {"a": list(range(10_000))}, object()):
        small = loggable(hostile)
        text = json.dumps(small)
        text.encode("utf-8")  # no lone surrogate survives
        assert len(text) < 2100


def test_cli_values_of_text_fields_stay_text() -> None:
    """``update_module module=3`` names nn.Sequential's module "3" (JSON would make it 3)."""
    fields = parse_assignments(["module=3", "op=set_attribute", "attribute=p", "value=0.2"], text_fields("update_module"))
    assert fields == {"module": "3", "op": "set_attribute", "attribute": "p", "value": 0.2}
    cmd = parse_command({"kind": "update_module", **fields})
    assert isinstance(cmd, UpdateModule) and cmd.module == "3"
    assert parse_assignments(["tag=2024", "branch=7"], text_fields("save_checkpoint")) == {"tag": "2024", "branch": 7}
    assert parse_assignments(["seq=12"], text_fields("cancel")) == {"seq": 12}


# -- 2. commands valid alone, fatal together: the controller ------------------------------------
@pytest.fixture
def controller(tmp_path: Path) -> Any:
    task = RegressionTask(in_dim=4, width=8, depth=1)
    model = task.build_model()
    c = Controller(RunConfig(name="unit", task=TaskSpec(target=REGRESSION), run_dir=tmp_path / "run", max_steps=1000))
    c.trainer_snapshot(snapshot_of(model, task.build_optimizer(model, 1e-3)))
    yield c
    c.close()


def test_freezes_that_together_leave_nothing_to_train_are_refused_at_submission(controller: Controller) -> None:
    # the model: 0 Linear, 1 LayerNorm, 2 GELU, 3 Dropout, 4 Linear
    assert controller.submit(UpdateModule(module="0", op="freeze")).status is CommandStatus.ACCEPTED
    assert controller.submit(UpdateModule(module="1", op="freeze")).status is CommandStatus.ACCEPTED
    rec = controller.submit(UpdateModule(module="4", op="freeze"))
    assert rec.status is CommandStatus.REJECTED
    assert "freezing '4' would leave no trainable parameters (with the freeze(s) of 0, 1 not yet applied)" in rec.message


def test_pinned_commands_past_max_steps_are_refused(controller: Controller) -> None:
    rec = controller.submit(Pause(at_step=1001))
    assert rec.status is CommandStatus.REJECTED
    assert "at_step 1001 is past the run's max_steps (1000): it would never apply" in rec.message
    assert controller.submit(Pause(at_step=1000)).status is CommandStatus.ACCEPTED


def test_a_reused_id_is_an_idempotent_retry_only_with_the_same_command(controller: Controller, tmp_path: Path) -> None:
    first = controller.submit({"id": "agent-42", "kind": "set_grad_clip", "max_norm": 1.0})
    again = controller.submit({"id": "agent-42", "kind": "set_grad_clip", "max_norm": 1.0, "issued_at": 5.0})
    assert again == first and again.status is CommandStatus.ACCEPTED  # the earlier record, not queued twice
    other = controller.submit({"id": "agent-42", "kind": "set_grad_clip", "max_norm": 9.0})
    assert other.status is CommandStatus.REJECTED and other.seq is None
    assert "command id 'agent-42' is already taken by #1 set_grad_clip (accepted) with other arguments" in other.message
    assert controller.get_command("agent-42") == first  # the first command is untouched
    assert [r["status"] for r in controller.commands()] == ["accepted", "rejected"]
    # after a restart the log still maps the id to the first command
    records = read_command_log(tmp_path / "run" / "commands.jsonl")
    assert records["agent-42"].status is CommandStatus.ACCEPTED and records["agent-42"].command.max_norm == 1.0


def test_cancel_names_a_pending_command_by_number_or_id(controller: Controller) -> None:
    pinned = controller.submit(SetGradClip(max_norm=0.5, at_step=900))
    assert "no accepted command with #99" in controller.submit(Cancel(seq=99)).message
    rec = controller.submit(Cancel(seq=pinned.seq))
    assert rec.status is CommandStatus.ACCEPTED and rec.command.command_id == pinned.id
    done = pinned.model_copy(update={"status": CommandStatus.APPLIED, "applied_step": 900})
    controller.command_outcomes(Outcomes(records=[done]))
    late = controller.submit(Cancel(command_id=pinned.id))
    assert late.status is CommandStatus.REJECTED
    assert f"#{pinned.seq} set_grad_clip is no longer pending: it was applied at step 900" in late.message
    assert "a cancel cannot be cancelled" in controller.submit(Cancel(seq=rec.seq)).message


def test_the_history_stays_readable_whatever_was_sent(controller: Controller) -> None:
    for payload in (nest(5), {"kind": "pause", "x": nest(4)}, {"kind": "\ud800"}, {"kind": "update_optimizer", "params": nest(3)}):
        assert controller.submit(payload).status is CommandStatus.REJECTED
    rows = controller.commands(newest_first=True)
    text = json.dumps(rows)  # what the CLI's log and the UI's history print
    text.encode("utf-8")
    assert len(rows) == 4 and len(text) < 8000


def test_system_events_are_logged_unnumbered_and_not_replayed(controller: Controller, tmp_path: Path) -> None:
    controller.submit(Pause())
    controller.system_event(RunEvent(kind="pause", message="health guard paused the run", step=7, branch="main", time=1.0))
    row = controller.commands(newest_first=True)[0]
    assert (row["source"], row["kind"], row["status"], row["seq"], row["applied_step"]) == ("system", "pause", "applied", None, 7)
    applied = controller.records[next(iter(controller.records))].model_copy(
        update={"status": CommandStatus.APPLIED, "applied_step": 3}
    )
    controller.command_outcomes(Outcomes(records=[applied]))
    replayed = replay_commands(tmp_path / "run" / "commands.jsonl")
    assert [c.kind for c in replayed] == ["pause"] and replayed[0].at_step == 3


# -- the inbox: one pending command never blocks others ---------------------------------------
def rec(seq: int, command: Any) -> CommandRecord:
    return CommandRecord(command=command, seq=seq, status=CommandStatus.ACCEPTED)


def test_a_far_future_pinned_command_does_not_hold_back_later_pinned_ones() -> None:
    inbox = CommandInbox()
    inbox.put([rec(1, Pause(at_step=10**9)), rec(2, SetGradClip(max_norm=0.5, at_step=5)), rec(3, Resume())])
    assert [r.seq for r in inbox.due(5)] == [2, 3]
    assert inbox.pending_loads() == set()
    assert inbox.remove(1) is not None and inbox.remove(1) is None  # cancelled once
    assert not inbox.has_due(10**9)


# -- 1. non-finite numbers: data ------------------------------------------------------------------
@pytest.fixture
def live() -> DataBuffer:
    return DataBuffer([DataSource("base", RegressionTask(in_dim=4).data_sources()[0].table.slice(0, 8)),
                       DataSource("live", schema=live_schema(4))])


def live_table(**override: Any) -> pa.Table:
    x = np.ones((3, 4), np.float32)
    cols = {"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4), "y": pa.array([0.5, 1.0, 2.0], pa.float32())}
    cols.update(override)
    return pa.table(cols)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("y", pa.array([0.5, math.nan, 1.0], pa.float32()), "column 'y', row 1 holds nan: NaN and infinite values are refused"),
        ("y", pa.array([0.5, 1.0, -math.inf]), "column 'y', row 2 holds -inf"),
        ("y", pa.array([1e39, 1.0, 2.0]), "the value 1e+39 in row 0 does not fit (it would become infinite)"),
        ("y", pa.array([True, False, True]), "column 'y' has type bool, expected float (no conversion between those kinds)"),
        ("y", pa.array(["1.5", "2", "3"]), "column 'y' has type string, expected float (no conversion"),
        ("x", pa.FixedSizeListArray.from_arrays(pa.array([1.0] * 9 + [math.nan] + [1.0] * 2, pa.float32()), 4),
         "column 'x', row 2 holds nan"),
    ],
)
def test_non_finite_values_and_inexact_casts_are_refused_with_column_and_row(
    live: DataBuffer, column: str, values: pa.Array, message: str
) -> None:
    with pytest.raises(ValueError) as e:
        live.ingest(live_table(**{column: values}), "live")
    assert message in str(e.value)
    assert live.sources()["live"]["rows"] == 0 and live.sources()["live"]["rejected"] == 1


def test_a_source_may_opt_in_to_non_finite_values_but_never_to_overflowing_casts() -> None:
    buf = DataBuffer([DataSource("live", schema=live_schema(4), allow_non_finite=True)])
    assert buf.ingest(live_table(y=pa.array([0.5, math.nan, math.inf], pa.float32())), "live")["rows"] == 3
    with pytest.raises(ValueError, match="does not fit"):
        buf.ingest(live_table(y=pa.array([1e39, 1.0, 2.0])), "live")
    assert buf.ingest(live_table(y=pa.array([1, 2, 3])), "live")["rows"] == 3  # exact int -> float


def test_non_finite_static_data_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="column 'v', row 1 holds nan"):
        DataBuffer([DataSource("base", pa.table({"v": [1.0, math.nan]}))])


# -- nulls: the same rule as NaN -------------------------------------------------------------------
REFUSED = ": nulls are refused, one makes a loss NaN (a source that needs them: DataSource(..., allow_nulls=True))"
F32 = pa.float32()


def one_column(type_: pa.DataType, **source: Any) -> DataBuffer:
    return DataBuffer([DataSource("live", schema=pa.schema([pa.field("v", type_)]), **source)])


@pytest.mark.parametrize(
    ("type_", "values", "message"),
    [
        (pa.list_(F32, 2), [[1.0, 2.0], [3.0, None], [5.0, 6.0]], "column 'v', row 1 holds a null (inside its list items)"),
        (pa.list_(F32), [[1.0], [], [2.0, 3.0, None]], "column 'v', row 2 holds a null (inside its list items)"),
        (pa.large_list(F32), [[1.0], [None]], "column 'v', row 1 holds a null (inside its list items)"),
        (pa.struct([("a", F32), ("b", pa.list_(pa.int64()))]), [{"a": 1.0, "b": [1]}, {"a": 2.0, "b": [2, None]}],
         "column 'v', row 1 holds a null (inside its field 'b' > list items)"),
        (pa.struct([("a", F32)]), [{"a": 1.0}, {"a": 2.0}, {"a": None}], "column 'v', row 2 holds a null (inside its field 'a')"),
        (pa.map_(pa.string(), F32), [[("k", 1.0)], [("k", 2.0), ("j", None)]], "column 'v', row 1 holds a null (inside its map items)"),
        (pa.list_(pa.list_(F32)), [[[1.0]], [[2.0], [None]]], "column 'v', row 1 holds a null (inside its list items > list items)"),
        (F32, [1.0, 2.0, None], "column 'v', row 2 holds a null" + REFUSED),  # nullable, pyarrow's default
        (pa.list_(F32), [[1.0], None], "column 'v', row 1 holds a null" + REFUSED),  # a null list
    ],
)
def test_nulls_at_any_level_of_a_trained_source_are_refused_with_column_and_row(
    type_: pa.DataType, values: list[Any], message: str
) -> None:
    buf = one_column(type_)
    with pytest.raises(ValueError) as e:
        buf.ingest(pa.table({"v": pa.array(values, type_)}), "live")
    assert f"source 'live': {message}" in str(e.value) and str(e.value).endswith(REFUSED)
    assert buf.sources()["live"]["rows"] == 0 and buf.sources()["live"]["rejected"] == 1


def test_a_null_in_a_feature_vector_is_refused_naming_its_row_across_chunks(live: DataBuffer) -> None:
    good = live_table()
    x = pa.FixedSizeListArray.from_arrays(pa.array([1.0] * 5 + [None] + [1.0] * 6, F32), 4)
    bad = live_table(x=x)
    with pytest.raises(ValueError, match=r"column 'x', row 4 holds a null \(inside its list items\)"):
        live.ingest(pa.concat_tables([good, bad]), "live")  # two chunks: the row counts from the first
    assert live.sources()["live"]["rows"] == 0


def test_a_source_may_allow_nulls_but_the_schemas_not_nullable_fields_still_hold() -> None:
    strict_items = pa.list_(pa.field("item", F32, nullable=False))
    schema = pa.schema([
        pa.field("loose", pa.list_(F32)),
        pa.field("strict", strict_items),
        pa.field("s", pa.struct([pa.field("a", F32, nullable=False)])),
        pa.field("id", pa.int64(), nullable=False),
    ])
    buf = DataBuffer([DataSource("live", schema=schema, allow_nulls=True)])

    def table(loose: list[Any], strict: list[Any], s: list[Any], ids: list[Any]) -> pa.Table:
        cols = [pa.array(v, f.type) for v, f in zip((loose, strict, s, ids), schema)]
        return pa.Table.from_arrays(cols, names=schema.names)

    # Nulls where the schema lets them be: in loose's items, a null loose list, a null struct
    # (its non-nullable field has no value there, so nothing is missing).
    ok = table([[None, 1.0], None], [[1.0], []], [{"a": 1.0}, None], [1, 2])
    assert buf.ingest(ok, "live")["rows"] == 2
    with pytest.raises(ValueError) as e:
        buf.ingest(table([[1.0], [1.0]], [[1.0], [2.0, None]], [{"a": 1.0}, {"a": 1.0}], [1, 2]), "live")
    assert ("source 'live': column 'strict', row 1 holds a null (inside its list items) where the schema says "
            "nullable=False: send a value there, or make that field nullable") in str(e.value)
    with pytest.raises(ValueError, match=r"column 's', row 0 holds a null \(inside its field 'a'\) where the schema"):
        buf.ingest(table([[1.0], [1.0]], [[1.0], [2.0]], [{"a": None}, {"a": 1.0}], [1, 2]), "live")
    with pytest.raises(ValueError, match="column 'id' has 1 null"):
        buf.ingest(table([[1.0], [1.0]], [[1.0], [2.0]], [{"a": 1.0}, {"a": 1.0}], [1, None]), "live")
    assert buf.sources()["live"]["rows"] == 2 and buf.sources()["live"]["rejected"] == 3


def test_a_log_only_source_keeps_taking_nulls_where_its_schema_lets_it() -> None:
    from neuralos_example.task import interaction_schema  # its "task" column is nullable on purpose

    schema = interaction_schema()
    given = {"session": "s1", "task": None, "frame": b"png"}  # the numbers: 0
    table = pa.table({f.name: pa.array([given.get(f.name, 0)], f.type) for f in schema}, schema=schema)
    buf = DataBuffer([DataSource("interactions", schema=schema, log_only=True)])
    assert buf.ingest(table, "interactions")["rows"] == 1
    with pytest.raises(ValueError, match="column 'session' has 1 null"):  # not nullable: refused still
        buf.ingest(table.set_column(0, "session", pa.array([None], pa.string())), "interactions")
    strict = DataBuffer([DataSource("interactions", schema=schema, log_only=True, allow_nulls=False)])
    with pytest.raises(ValueError, match="column 'task', row 0 holds a null: nulls are refused"):
        strict.ingest(table, "interactions")


def test_static_data_with_a_nested_null_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"source 'base': column 'x', row 1 holds a null \(inside its list items\)"):
        DataBuffer([DataSource("base", pa.table({"x": pa.array([[1.0, 2.0], [3.0, None]], pa.list_(F32, 2))}))])
    allowed = DataBuffer([DataSource("base", pa.table({"x": pa.array([[1.0], None])}), allow_nulls=True)])
    assert allowed.sources()["base"]["rows"] == 2


def test_allow_nulls_is_checked() -> None:
    with pytest.raises(ValueError, match="allow_nulls must be True, False or None"):
        DataSource("live", schema=live_schema(4), allow_nulls="yes")  # type: ignore[arg-type]


def test_a_nan_after_a_null_list_is_found_in_its_own_row() -> None:
    # The values a null list leaves behind are no values: rows after it stay where they are.
    values = pa.array([math.nan, 1.0, 2.0, 3.0, math.nan], F32)
    lists = pa.ListArray.from_arrays(pa.array([0, 2, 4, 5], pa.int32()), values, mask=pa.array([True, False, False]))
    buf = one_column(pa.list_(F32), allow_nulls=True)
    with pytest.raises(ValueError, match="column 'v', row 2 holds nan"):
        buf.ingest(pa.table({"v": lists}), "live")


def test_duplicate_columns_are_refused_by_name() -> None:
    buf = DataBuffer([DataSource("live", schema=pa.schema([pa.field("a", pa.int64())]))])
    with pytest.raises(ValueError, match="duplicate column name"):
        buf.ingest(pa.table([pa.array([1]), pa.array([2])], names=["a", "a"]), "live")


# -- 1. non-finite numbers: training ---------------------------------------------------------------
def test_health_guard_policies() -> None:
    pause = HealthGuard(HealthConfig())
    assert pause.non_finite("loss=nan", 5, True, None).action == "pause"
    skip = HealthGuard(HealthConfig(on_non_finite="skip", max_skips=3))
    assert [skip.non_finite("loss=nan", s, True, None).action for s in (1, 2)] == ["skip", "skip"]
    skip.good_step()
    assert [skip.non_finite("loss=nan", s, True, None).action for s in (3, 4, 5)] == ["skip", "skip", "pause"]
    assert "Skipping cannot help" in HealthGuard(HealthConfig(on_non_finite="skip")).non_finite("x", 1, False, None).message
    back = HealthGuard(HealthConfig(on_non_finite="rollback", max_rollbacks=2))
    assert "No checkpoint with finite weights" in back.non_finite("x", 1, True, None).message
    verdicts = [back.non_finite("x", 9, True, "main@5") for _ in range(3)]
    assert [v.action for v in verdicts] == ["rollback", "rollback", "pause"]
    assert verdicts[0].target == "main@5" and "after 2 rollback(s) to main@5" in verdicts[2].message


def test_nonfinite_tensors_names_the_bad_ones() -> None:
    good, bad = torch.ones(3, dtype=torch.float16) * 60000, torch.tensor([1.0, math.nan])
    assert nonfinite_tensors([("good", good), ("bad", bad), ("int", torch.tensor([1]))]) == ["bad"]
    assert nonfinite_tensors([("inf", torch.tensor([math.inf], dtype=torch.bfloat16))]) == ["inf"]


class Events(Recorder):
    """A reporter that keeps what the trainer tells the controller."""

    def events(self, name: str = "event") -> list[Any]:  # type: ignore[override]
        """The run's own events (as JSON), or the batches of removed checkpoint ids."""
        if name == "checkpoints_removed":
            return [e.ids for e in self.all_events() if isinstance(e, CheckpointsRemoved)]
        return [e.model_dump(mode="json") for e in self.run_events()]

    def outcomes(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [r.model_dump(mode="json") for r in self.outcome_records()]


def in_process(tmp_path: Path, sources: list[DataSource] | None = None, **config: Any) -> tuple[Trainer, Events]:
    cfg = regression_config(tmp_path, task_kwargs={"width": 8, "depth": 1, "rows": 256}, **config)
    task = RegressionTask(width=8, depth=1, rows=256)
    events = Events()
    buffer = DataBuffer(sources or task.data_sources(), seed=0)
    return Trainer(cfg, task, lambda _: LocalFeed(buffer, 16), events.reporter), events


def command(seq: int, cmd: Any) -> CommandRecord:
    return CommandRecord(command=cmd, seq=seq, status=CommandStatus.ACCEPTED)


def test_an_exploding_step_never_reaches_the_weights_and_the_run_pauses_saying_why(tmp_path: Path) -> None:
    trainer, events = in_process(tmp_path, max_steps=200)
    trainer.deliver([command(1, UpdateOptimizer(params={"lr": 10.0, "weight_decay": 10.0}, at_step=10))])
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    # The loop pauses, then reports the pause: wait for the report, not only the flag.
    while not (trainer.paused and events.events()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert trainer.status().status.value == "paused"
    assert "health guard paused the run: non-finite" in trainer.status().message
    assert not nonfinite_tensors(trainer.model.named_parameters())  # the bad update never landed
    [event] = events.events()
    assert event["kind"] == "pause" and event["step"] == trainer.step
    trainer.deliver([command(2, Stop())])
    thread.join(30)
    rows = events.rows()
    assert all(math.isfinite(v) for _, _, row in rows for k, v in row.items() if k == "loss")


SLOW_COPY_S = 0.2  # far longer than a step of this small model, even on a busy machine


def test_a_version_copied_beside_the_next_step_holds_exactly_the_weights_of_its_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our Trainer copies a version while the next step's forward and backward run; the
    optimizer step waits for the copy. A copy slowed to 0.2 s (longer than the step) still
    holds the weights of the step it names, bit for bit, and the wait is a metric; seeing
    that the copy outlasts the step, the trainer takes the next ones in the loop."""
    import ray_interactive.core.publishing as publishing
    from ray_interactive.core.weights import LocalPublisher, WeightRegistry, unpack_state

    trainer, events = in_process(tmp_path, max_steps=12, publish_every=1)
    registry = WeightRegistry(keep=100)
    trainer.core.weights.publisher = LocalPublisher(registry)
    assert trainer.core.weights.overlap
    pack = publishing.pack_state
    monkeypatch.setattr(publishing, "pack_state", lambda state, **kw: (time.sleep(SLOW_COPY_S), pack(state, **kw))[1])
    at_step: dict[int, dict[str, torch.Tensor]] = {}  # the weights each optimizer step starts from
    trainer.optimizer.register_step_pre_hook(lambda o, a, k: at_step.__setitem__(
        trainer.step, {n: t.clone() for n, t in trainer.model.state_dict().items()}))
    trainer.run()
    versions = [registry.get(v["version"]) for v in registry.versions()]
    checked = [v for v in versions if v.step in at_step]
    assert len(checked) >= 10
    for v in checked:
        state = unpack_state(v.ref)
        assert all(torch.equal(torch.as_tensor(state[n]), t) for n, t in at_step[v.step].items()), v.step
    first, *rest = sorted(versions, key=lambda v: v.version)
    assert first.hold_s < SLOW_COPY_S  # the step loop was not held for its copy ...
    waits = [row["publish_wait_s"] for _, _, row in events.rows() if "publish_wait_s" in row]
    assert len(waits) == 1 and waits[0] > 0.01  # ... the next optimizer step waited, and says so
    assert all(v.hold_s >= SLOW_COPY_S for v in rest)  # then copied in the loop: the step is shorter than the copy


def test_non_finite_weights_are_never_published_or_rolled_back_to(tmp_path: Path) -> None:
    from ray_interactive.core.weights import WeightRegistry

    class Publisher:
        registry = WeightRegistry(keep=4)

        def publish(self, version: Any, packed: Any) -> None:
            self.registry.add(version.with_ref(packed))

        def flush(self, timeout: float | None = None) -> None:
            pass

    trainer, events = in_process(tmp_path, max_steps=3, checkpoint_every=1)
    trainer.core.weights.publisher = Publisher()  # type: ignore[assignment]
    trainer.run()
    good = trainer.state.last_checkpoint
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"not published: the weights are not finite \(1 tensor\(s\) hold NaN or inf, e.g. '0.weight'\)"):
        trainer.core.weights.publish("command")
    assert trainer.core.weights.try_publish("periodic") is None
    trainer.core.telemetry.report(force=True)  # events ride along with the next report
    assert events.events()[-1]["kind"] == "publish_weights" and events.events()[-1]["failed"]
    trainer.state.step += 1
    bad = trainer.core.checkpoints.save("periodic")
    assert not trainer.core.checkpoints.known[bad].finite
    assert trainer.core.checkpoints.rollback_target() == good


def test_rollback_policy_asks_for_a_load_a_lower_lr_and_a_resume(tmp_path: Path) -> None:
    trainer, events = in_process(tmp_path, max_steps=300, health={"on_non_finite": "rollback"})
    trainer.deliver([command(1, SaveCheckpoint(at_step=10)),
                     command(2, UpdateOptimizer(params={"lr": 10.0, "weight_decay": 10.0}, at_step=12))])
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not events.events() and time.monotonic() < deadline:
        time.sleep(0.01)
    [event] = events.events()
    assert event["kind"] == "rollback" and "Rolling back to main@10 with the lr times 0.5" in event["message"]
    assert [c["kind"] for c in event["submit"]] == ["load_checkpoint", "update_optimizer", "resume"]
    assert event["submit"][0]["checkpoint_id"] == "main@10"
    assert event["submit"][1]["params"]["lr"] == pytest.approx(5.0)
    assert trainer.paused  # held until the controller's commands arrive
    trainer.deliver([command(3, Stop())])
    thread.join(30)


def test_freezing_the_last_trainable_module_fails_at_application_and_training_goes_on(tmp_path: Path) -> None:
    trainer, events = in_process(tmp_path, max_steps=20)
    trainer.deliver([command(1, UpdateModule(module="0", op="freeze")), command(2, UpdateModule(module="1", op="freeze")),
                     command(3, UpdateModule(module="4", op="freeze"))])
    assert trainer.run().status.value == "stopped" and trainer.step == 20
    outcomes = {r["seq"]: r for r in events.outcomes()}
    assert outcomes[1]["status"] == outcomes[2]["status"] == "applied"
    assert outcomes[3]["status"] == "failed"
    assert "freezing '4' would leave no trainable parameters" in outcomes[3]["message"]


def test_a_load_names_a_checkpoint_of_this_run_never_a_path(tmp_path: Path) -> None:
    other = tmp_path / "other" / "checkpoints" / "main@3"
    other.mkdir(parents=True)
    (other / "state.json").write_text("{}")
    trainer, events = in_process(tmp_path, max_steps=6, checkpoint_every=3)
    trainer.deliver([command(1, LoadCheckpoint(checkpoint_id="main@2", branch="b", at_step=4))])
    trainer.run()
    [outcome] = events.outcomes()
    assert outcome["status"] == "failed" and "no checkpoint 'main@2' in this run" in outcome["message"]


def test_a_pending_pinned_command_can_be_cancelled(tmp_path: Path) -> None:
    trainer, events = in_process(tmp_path, max_steps=10)
    trainer.deliver([command(1, SetGradClip(max_norm=0.25, at_step=8)), command(2, Cancel(seq=1, command_id="x"))])
    trainer.run()
    outcomes = {r["seq"]: r for r in events.outcomes()}
    assert outcomes[1]["status"] == "cancelled" and "cancelled at step 0" in outcomes[1]["message"]
    assert outcomes[2]["status"] == "applied" and outcomes[2]["message"] == "cancelled #1 set_grad_clip"
    assert trainer.state.grad_clip != 0.25


def test_a_run_whose_weighted_sources_are_empty_says_it_is_waiting(tmp_path: Path) -> None:
    sources = [DataSource("live", schema=live_schema(32))]
    trainer, events = in_process(tmp_path, sources=sources)
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while trainer.status().status.value != "waiting" and time.monotonic() < deadline:
        time.sleep(0.01)
    status = trainer.status().model_dump(mode="json")
    assert status["status"] == "waiting" and "waiting for data: no source with a weight > 0 has rows yet (weights: live=1)" in status["message"]
    trainer.deliver([command(1, Stop())])
    thread.join(30)


def test_retention_keeps_the_newest_periodic_and_every_tagged_final_and_branch_point(tmp_path: Path) -> None:
    trainer, events = in_process(tmp_path, max_steps=40, checkpoint_every=2, checkpoint_keep=3)
    trainer.deliver([command(1, SaveCheckpoint(tag="keep-me", at_step=5))])
    trainer.run()
    ids = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ids == sorted(["main@5", "main@36", "main@38", "main@40"])  # tagged, newest 3 periodic (40 is final too)
    removed = [cid for batch in events.events("checkpoints_removed") for cid in batch]
    assert "main@2" in removed and "main@36" not in removed and "main@5" not in removed


class DivergedEvalTask(RegressionTask):
    """Its evaluation returns NaN, as a diverged model's would."""

    def evaluate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        return {"loss": math.nan, "accuracy": 0.5}


def test_a_non_finite_evaluation_is_flagged(tmp_path: Path) -> None:
    cfg = regression_config(tmp_path, max_steps=6, eval_every=3, task_kwargs={"width": 8, "depth": 1, "rows": 256})
    task = DivergedEvalTask(width=8, depth=1, rows=256)
    events = Events()
    trainer = Trainer(cfg, task, lambda _: LocalFeed(DataBuffer(task.data_sources(), seed=0), 16), events.reporter)
    from ray_interactive.core.commands import Evaluate

    trainer.deliver([command(1, Evaluate(at_step=4))])
    trainer.run()
    [outcome] = events.outcomes()
    assert outcome["status"] == "applied" and "(NOT FINITE: eval/loss)" in outcome["message"]
    flagged = events.events()
    assert [e["kind"] for e in flagged] == ["evaluate", "evaluate"]  # the periodic ones at 3 and 6
    assert all(e["failed"] and "evaluation returned non-finite eval/loss=nan" in e["message"] for e in flagged)
    rows = events.rows()
    assert [row["health/eval_non_finite"] for _, _, row in rows if "health/eval_non_finite" in row] == [1.0, 1.0, 1.0]


def test_map_columns_are_checked_without_taking_the_process_down() -> None:
    """pyarrow's list_parent_indices aborts the whole process on a map array (a C++ check):
    the finite check must go another way, or one ingest would kill the buffer actor."""
    m = pa.array([[("a", 1.0)], [("b", math.nan), ("c", 2.0)]], pa.map_(pa.string(), pa.float64()))
    buf = DataBuffer([DataSource("live", schema=pa.schema([pa.field("m", pa.map_(pa.string(), pa.float32()))]))])
    with pytest.raises(ValueError, match="column 'm', row 1 holds nan"):
        buf.ingest(pa.table({"m": m}), "live")
    big = pa.array([[("a", 1e39)]], pa.map_(pa.string(), pa.float64()))
    with pytest.raises(ValueError, match="the value 1e[+]39 in row 0 does not fit"):
        buf.ingest(pa.table({"m": big}), "live")
    assert buf.ingest(pa.table({"m": m.slice(0, 1)}), "live")["rows"] == 1


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_float32_weights(tmp_path: Path) -> None:
    trainer, _ = in_process(tmp_path, max_steps=5, autocast="bf16", device="cpu")
    seen: list[torch.dtype] = []
    layer = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    layer.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    trainer.run()
    assert torch.bfloat16 in seen and trainer.step == 5
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    with pytest.raises(ValueError, match="autocast"):
        RunConfig(name="x", autocast="fp8")  # type: ignore[arg-type]


# -- 4. every message a person reads names the problem and what to do ------------------------
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # a union of types is one sentence, not pydantic's "value.float: ...; value.int: ...; value.bool: ..."
        ({"kind": "update_module", "module": "3", "op": "set_attribute", "attribute": "p", "value": "abc"},
         "value must be a number or true/false, got 'abc'"),
        ({"kind": "update_module", "module": "3", "op": "set_attribute", "attribute": "p", "value": [0.1]},
         "value must be a number or true/false, got a list of 1"),
        ({"kind": "set_grad_clip", "max_norm": "big"}, "max_norm must be a number, got 'big'"),
        ({"kind": "set_grad_clip", "max_norm": -1}, "max_norm must be greater than 0, got -1"),
        ({"kind": "pause", "at_step": "5"}, "at_step must be an integer, got '5'"),
        ({"kind": "pause", "comment": 5}, "comment must be text, got 5"),
        ({"kind": "update_optimizer", "params": "lr"}, "params must be an object (a dict), got 'lr'"),
        ({"kind": "set_data_mixture", "weights": {"base": "x"}}, "weights.base must be a number, got 'x'"),
        ({"kind": "set_lr_schedule", "schedule": "exp"},
         "schedule must be one of 'constant', 'linear', 'cosine' or 'step', got 'exp'"),
        ({"kind": "set_grad_accumulation", "steps": 10**30},
         "steps must be less than or equal to 4096, got an integer of about 31 digits"),
        # Python's "'root' is not a valid CommandSource" did not say which sources there are
        ({"kind": "pause", "source": "root"}, "unknown source 'root'; sources: ui, agent, api, cli, replay, system"),
        ({"kind": "pause", "source": 5}, "unknown source 5; sources: ui, agent, api, cli, replay, system"),
        # values Ray could not even send, or that overflow a float in a kind's check
        ({"kind": "pause", "comment": threading.Lock()},
         "comment is a lock: a command holds only text, numbers, true/false, null, lists and objects"),
        ({"kind": "update_optimizer", "params": {"lr": lambda: 1e-3}}, "params.lr is a function: a command holds only"),
        ({"kind": "update_optimizer", "params": {"betas": [0.9, 10**400]}},
         "params.betas[1] is too large: an integer of about 401 digits"),
        (threading.Lock(), "a command must be a JSON object with a 'kind', not a lock"),
    ],
)
def test_a_bad_field_is_named_with_what_it_takes_and_what_was_given(payload: Any, message: str) -> None:
    assert message in assert_plain(rejected(payload))


def test_a_source_given_apart_from_the_payload_is_checked_the_same_way(controller: Controller) -> None:
    for source in ("root", 5, ["ui"]):
        rec = controller.submit({"kind": "pause"}, source=source)  # type: ignore[arg-type]
        assert rec.status is CommandStatus.REJECTED
        assert "; sources: ui, agent, api, cli, replay, system" in assert_plain(rec.message)
    assert controller.submit({"kind": "pause"}, source="agent").command.source.value == "agent"  # type: ignore[union-attr]


def test_numbers_too_large_for_a_float_are_refused_not_raised(controller: Controller) -> None:
    """``math.isfinite(10**400)`` raises OverflowError in a kind's check, ``str(10**5000)``
    ValueError in the log's copy: the controller would have raised instead of refusing."""
    for payload in (
        {"kind": "update_module", "module": "3", "op": "set_attribute", "attribute": "p", "value": 10**400},
        {"kind": "update_optimizer", "params": {"lr": 10**400}},
        {"kind": "pause", "extra": 10**5000},
    ):
        rec = controller.submit(payload)
        assert rec.status is CommandStatus.REJECTED and "is too large" in assert_plain(rec.message)
    json.dumps(controller.commands())


def test_ingest_refuses_what_it_cannot_take_before_anything_is_sent() -> None:
    """A dict holding a lock used to come back as Ray's "Could not serialize ..."; the client
    says what ingest takes before it touches Ray (this one has no run behind it at all)."""
    from ray_interactive.runtime.client import RunClient
    from ray_interactive.serve.ingest_client import post_table

    client = RunClient("no-run", "nowhere", controller=None)
    rows = pa.table({"y": pa.array([1.0], pa.float32())})
    cases: list[tuple[Any, dict[str, Any], str]] = [
        ({"y": [1.0], "lock": threading.Lock()}, {}, "takes the rows as a pyarrow Table or RecordBatch, not a dict"),
        ([{"y": 1.0}], {}, "not a list; make one with pa.table({column: values}), pa.Table.from_pylist(rows)"),
        (rows, {"source": 5}, "source must be a source's name (text), not 5"),
        (rows, {"batch_id": 7}, "batch_id must be text"),
    ]
    for table, kwargs, message in cases:
        args = {"source": "live", **kwargs}
        with pytest.raises(TypeError) as err:
            client.ingest(table, args["source"], batch_id=args.get("batch_id"))
        assert message in assert_plain(str(err.value))
        with pytest.raises(TypeError) as err:  # the HTTP client too, before it connects anywhere
            post_table("http://127.0.0.1:9", args["source"], table, "t" * 32, batch_id=args.get("batch_id"))
        assert message in str(err.value)
    with pytest.raises(ValueError, match="timeout must be a number of seconds from 0 to 1e9, got nan"):
        client.ingest(rows, "live", timeout=math.nan)
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        client.wait("some-id", timeout=math.nan)  # would have polled forever
    with pytest.raises(TypeError, match="wait takes a command's record"):
        client.wait(5)  # type: ignore[arg-type]


def test_client_queries_with_wrong_types_are_refused_before_an_actor_answers_with_a_traceback() -> None:
    from ray_interactive.runtime.client import RunClient, connect

    client = RunClient("no-run", "nowhere", controller=None)
    cases: list[tuple[Any, str]] = [
        (lambda: client.metrics(keys="loss"), "keys must be a list of names, such as ['loss'], got 'loss'"),
        (lambda: client.metrics(keys=["loss"], max_points=-1), "max_points must be an integer >= 3, got -1"),
        (lambda: client.metrics(since="a"), "since must be an integer, got 'a'"),
        (lambda: client.read_rows("live", start="a"), "start must be an integer >= 0, got 'a'"),
        (lambda: client.read_rows(5), "source must be a name (text), got 5"),
        (lambda: client.commands(limit="a"), "limit must be an integer >= 0, got 'a'"),
        (lambda: client.checkpoint_page(offset=1.5), "offset must be an integer, got 1.5"),
        (lambda: client.weight_version("latest"), "version must be an integer >= 0, got 'latest'"),
        (lambda: connect("r", namespace=""), "connect takes a run's name and a namespace (non-empty text), got 'r', ''"),
    ]
    for call, message in cases:
        with pytest.raises((TypeError, ValueError)) as err:
            call()
        assert message in assert_plain(str(err.value))


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=12),
    st.sampled_from([10**400, "\udcff", "x" * 5000, 1e308, -0.0]),
)
json_values = st.recursive(
    json_leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    kind=st.sampled_from([*sorted(set(KINDS) - {"stop"}), "fly"]),  # an accepted stop would refuse all the rest
    fields=st.dictionaries(
        st.sampled_from(["params", "group", "module", "op", "attribute", "value", "weights", "steps", "max_norm",
                         "schedule", "tag", "at_step", "source", "id", "comment", "checkpoint_id", "seq", "bogus"]),
        json_values, max_size=4,
    ),
)
def test_fuzzed_command_fields_are_refused_in_a_short_plain_sentence(
    controller: Controller, kind: str, fields: dict[str, Any]
) -> None:
    """Through the controller: the kinds' own checks against the run are worded too."""
    rec = controller.submit({"kind": kind, **fields})
    if rec.status is CommandStatus.REJECTED:
        assert_plain(rec.message)


def test_the_finiteness_check_tells_an_overflowing_sum_from_a_nan_or_an_inf() -> None:
    """A float32 sum clears a tensor fast; a sum that overflows on large finite values is
    not taken for a NaN (the elements are looked at), and a NaN or inf anywhere is found."""
    big = torch.full((1000,), 3e37)  # sums to inf in float32, every element finite
    nan, inf = torch.ones(10), torch.ones(5, dtype=torch.float64)
    nan[3], inf[0] = float("nan"), float("inf")
    half = torch.full((10,), 60000.0, dtype=torch.float16)  # a float16 sum would overflow
    assert nonfinite_tensors([("big", big), ("nan", nan), ("inf", inf), ("half", half), ("ids", torch.arange(3))]) == [
        "nan", "inf"]
