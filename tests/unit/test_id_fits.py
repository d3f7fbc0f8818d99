"""sync._id_surely_fits: the quick check that spares building most keys' document ids must never
pass an id Typesense can't take (empty, or too long to be deleted again)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from cdc_daemon.row_keys import document_id
from cdc_daemon.sink import MAX_ID_BYTES, id_problem
from cdc_daemon.sync import _id_surely_fits

KEY_VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=3000),
    st.text(alphabet="\x01\"\\é\U0001f600", max_size=3000),
    st.binary(max_size=5000),
    st.none(),
)


@given(key=st.lists(KEY_VALUES, min_size=1, max_size=3).map(tuple), prefix=st.text(max_size=300))
@example(key=("\x01" * 682, "\x01" * 682), prefix="p" * 255 + "/")  # passed the old check
@example(key=("",), prefix="")
@example(key=(b"",), prefix="")
@example(key=("x" * 2048,), prefix="")
@example(key=("é" * 4096,), prefix="")
def test_a_key_said_to_fit_makes_an_id_typesense_takes(
    key: tuple[object, ...], prefix: str
) -> None:
    room = MAX_ID_BYTES - len(prefix.encode("utf-8", "surrogatepass"))
    if _id_surely_fits(key, room):  # type: ignore[arg-type]
        assert id_problem(prefix + document_id(key)) is None  # type: ignore[arg-type]


def test_most_keys_fit_without_building_their_id() -> None:
    room = MAX_ID_BYTES - len("tenant/")
    assert _id_surely_fits((42,), room)
    assert _id_surely_fits(("some text",), room)
    assert _id_surely_fits((b"\x00\x01",), room)
    assert _id_surely_fits((7, "a", b"b", None, 1.5), room)
    assert not _id_surely_fits(("",), room)  # empty: the id itself is checked
