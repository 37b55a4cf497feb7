"""raydebias.schema.quarantine_table: the one way stages write their quarantine."""

import pytest

from raydebias import schema as S


def test_entries_become_quarantine_rows_with_defaults_in_order():
    t = S.quarantine_table([
        {S.STAGE: "evaluate", S.SPLIT: "rtp", S.REASON: "no prompt.text", S.RAW: "{}", S.ID: "7", S.SOURCE_FILE: "base"},
        {S.STAGE: "augment", S.SPLIT: "train", S.REASON: "untrainable", S.DETAIL: "1 positive(s)", S.RAW: "{}"},
    ])
    assert t.schema.equals(S.QUARANTINE_SCHEMA)
    rows = t.to_pylist()
    assert rows[0][S.DETAIL] == "no prompt.text" and rows[0][S.SOURCE_LINE] == -1 and rows[0][S.ID] == "7"
    assert rows[1][S.DETAIL] == "1 positive(s)" and rows[1][S.SOURCE_FILE] == "" and rows[1][S.ID] is None
    assert S.quarantine_table([]).num_rows == 0


def test_an_entry_without_its_reason_is_refused():
    with pytest.raises(ValueError, match="reason"):
        S.quarantine_table([{S.STAGE: "data", S.SPLIT: "train", S.RAW: "x"}])
