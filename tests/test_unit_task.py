"""Arrow batch -> numpy conversion used by tasks' collate functions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ray_interactive.core.task import column_array
from ray_interactive.examples.regression import make_table


def test_column_array_of_a_sliced_fixed_size_list_batch_is_exact_and_writable() -> None:
    t = make_table(512, 8, 0)
    full = np.asarray(t.column("x").combine_chunks().flatten()).reshape(512, 8)
    x = column_array(t.slice(40, 16), "x")
    assert x.shape == (16, 8) and (x == full[40:56]).all()
    x[0, 0] = 1.0  # torch may own it: it must be writable, not Arrow's read-only memory
    assert (column_array(t.slice(40, 16), "y") == np.asarray(t.column("y"))[40:56]).all()


def test_column_array_joins_chunks_and_converts_dtype() -> None:
    tokens = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(650, dtype=np.int32)), 65)
    t = pa.table({"tokens": tokens})
    two = pa.concat_tables([t.slice(1, 2), t.slice(6, 3)])
    got = column_array(two, "tokens", np.int64)
    want = np.arange(650).reshape(10, 65)[[1, 2, 6, 7, 8]]
    assert got.dtype == np.int64 and (got == want).all()


def test_column_array_of_variable_lists_with_equal_lengths() -> None:
    t = pa.table({"v": pa.array([[1, 2], [3, 4], [5, 6]], type=pa.list_(pa.int64()))}).slice(1, 2)
    assert column_array(t, "v").tolist() == [[3, 4], [5, 6]]
