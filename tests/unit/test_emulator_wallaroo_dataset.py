"""The Wallaroo emulator's reading of ``dataset[]`` / ``dataset.exclude[]`` / ``dataset.separator``."""

from __future__ import annotations

from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st

from bench.emulator.wallaroo_dataset import ALL, FIELDS, parse_dataset

NAMES = [*FIELDS, *(f"{top}.{sub}" for top, subs in FIELDS.items() for sub in subs), "*", "nope"]


def q(*pairs: tuple[str, str]) -> bytes:
    return urlencode(pairs).encode()


def test_defaults_and_the_sdks_parameters() -> None:
    assert parse_dataset(b"") == ALL and not ALL.flat
    sdk = parse_dataset(q(("dataset[]", "*"), ("dataset.exclude[]", "metadata"), ("dataset.separator", ".")))
    assert [top for top, _ in sdk.columns] == ["time", "in", "out", "anomaly"] and sdk.flat
    assert parse_dataset(q(("dataset.separator", "."))).columns == ALL.columns  # no dataset[]: everything


def test_fields_sub_fields_and_exclusions() -> None:
    assert parse_dataset(q(("dataset[]", "out"), ("dataset[]", "time"))).columns == (("time", ()),
                                                                                      ("out", ("dense_1",)))
    got = parse_dataset(q(("dataset[]", "metadata.elapsed"), ("dataset[]", "metadata.partition")))
    assert got.columns == (("metadata", ("elapsed", "partition")),)
    got = parse_dataset(q(("dataset[]", "metadata"), ("dataset.exclude[]", "metadata.last_model")))
    assert got.columns == (("metadata", ("pipeline_version", "elapsed", "dropped", "partition")),)


@given(st.lists(st.sampled_from(NAMES), max_size=6), st.lists(st.sampled_from(NAMES), max_size=4))
def test_a_field_is_in_the_answer_iff_selected_and_not_excluded(include: list[str], exclude: list[str]) -> None:
    ds = parse_dataset(q(*[("dataset[]", n) for n in include], *[("dataset.exclude[]", n) for n in exclude]))
    chosen = dict(ds.columns)
    everything = not include or "*" in include
    assert [top for top, _ in ds.columns] == [top for top in FIELDS if top in chosen]  # the engine's order
    for top, subs in FIELDS.items():
        for sub in subs or ("",):
            name = f"{top}.{sub}" if sub else top
            wanted = (everything or top in include or name in include) and top not in exclude \
                and name not in exclude
            assert (top in chosen and (not sub or sub in chosen[top])) == wanted, name
