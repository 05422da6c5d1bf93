"""The encoder text record and the leak check, without torch: stage lineage, cut-offs, the boundary itself."""

from __future__ import annotations

import pandas as pd
import pytest

from neuralfusion.encoder_text import EncoderLeakError, check_encoder_text, parse_cutoff, stage_record, texts_before

END = pd.Timestamp("2026-01-07 12:00", tz="UTC")


def stamps(*values: str) -> pd.Series:
    return pd.Series([pd.Timestamp(v, tz="UTC") for v in values])


def test_cutoffs_parse_as_utc_and_none_means_all_text():
    assert parse_cutoff("2026-01-07") == pd.Timestamp("2026-01-07", tz="UTC")
    assert parse_cutoff("2026-01-07T09:00-05:00") == pd.Timestamp("2026-01-07 14:00", tz="UTC")
    assert parse_cutoff("None") is None
    with pytest.raises(ValueError, match="is not a date"):
        parse_cutoff("yesterday-ish")


def test_only_news_strictly_before_the_cutoff_is_kept():
    published = stamps("2026-01-07 11:59", "2026-01-07 12:00", "2026-01-08")
    assert texts_before(published, END).tolist() == [True, False, False]
    assert texts_before(published, None).all()


def test_a_stage_inherits_its_source_stages_and_the_loosest_cutoff():
    init = stage_record("init", stamps("2026-01-05", "2026-01-06"), pd.Timestamp("2026-01-06 12:00", tz="UTC"))
    tuned = stage_record("pretrain", stamps("2026-01-05 08:00", "2026-01-07"), END, "enc", init, True)
    assert [s["kind"] for s in tuned["stages"]] == ["init", "pretrain"] and tuned["complete"] is True
    assert tuned["start"] == "2026-01-05T00:00:00+00:00" and tuned["end"] == "2026-01-07T00:00:00+00:00"
    assert tuned["cutoff"] == END.isoformat() and tuned["n_texts"] == 4
    everything = stage_record("sentiment", stamps("2026-01-05"), None, "enc2", tuned, True)
    assert everything["cutoff"] is None  # one stage without a cut-off makes the encoder's cut-off none
    orphan = stage_record("pretrain", stamps("2026-01-05"), END, "org/bert", None, True)
    assert orphan["complete"] is False and orphan["stages"][0]["kind"] == "unrecorded"


def test_the_check_passes_text_up_to_the_training_end_and_refuses_later_text():
    at_end = stage_record("init", stamps("2026-01-05", "2026-01-07 12:00"), None)
    assert check_encoder_text(at_end, END, False).status == "clean"
    after = stage_record("init", stamps("2026-01-05", "2026-01-07 12:00:01"), None)
    with pytest.raises(EncoderLeakError, match=r"2026-01-05T00:00:00\+00:00 .. 2026-01-07T12:00:01\+00:00, past this "
                                               r"split's training end 2026-01-07T12:00:00\+00:00"):
        check_encoder_text(after, END, False, source="emb.parquet")
    allowed = check_encoder_text(after, END, True)
    assert allowed.to_dict() == {"status": "leak", "text_start": "2026-01-05T00:00:00+00:00",
                                 "text_end": "2026-01-07T12:00:01+00:00", "training_end": END.isoformat(),
                                 "allowed": True}
    with pytest.raises(EncoderLeakError, match="has no record of the text"):
        check_encoder_text(None, END, False)
    assert check_encoder_text(None, END, True).status == "unrecorded"
