"""Canary records: drawing, persistence and the canary membership test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.audit.canary import CanarySet, canary_test, make_canaries
from fedsynth.audit.distance import dcr
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.validation import validate_frame


def test_canaries_are_valid_split_and_far_from_the_data(schema, reference) -> None:
    can = make_canaries(schema, n=40, reference=reference, seed=7)
    assert len(can.records) == 40 and sum(can.member) == 20
    assert validate_frame(can.records.reset_index(drop=True), schema) == []
    t = TabularTransform(schema)
    ref = t.transform(reference)
    far = dcr(t.transform(can.records), ref)
    typical = dcr(t.transform(reference.sample(200, random_state=0)), ref[200:])
    assert np.median(far) > np.median(typical)
    again = make_canaries(schema, n=40, reference=reference, seed=7)
    pd.testing.assert_frame_equal(again.records, can.records)
    assert again.member == can.member


def test_save_load_roundtrip_and_site_share(tmp_path: Path, schema) -> None:
    can = make_canaries(schema, n=10, seed=1)
    can.save(tmp_path)
    back = CanarySet.load(tmp_path)
    assert back.member == can.member and back.seed == 1
    assert list(back.records.index) == list(can.records.index)
    inserted = pd.read_csv(tmp_path / "insert.csv")
    assert (
        len(inserted) == 5 and "canary_id" not in inserted.columns
    )  # sites get no ids, no membership
    shares = [can.members_for_site(i, 3) for i in range(3)]
    assert sum(len(s) for s in shares) == 5


def test_canary_test_flags_memorisation(schema, reference, site_rows, toy) -> None:
    can = make_canaries(schema, n=60, reference=reference, seed=2)
    train = pd.concat([site_rows, can.members], ignore_index=True)
    t = TabularTransform(schema)
    leaky = canary_test(can, t.transform(toy.memoriser(train).sample(4000, seed=0)), t)
    safe = canary_test(can, t.transform(toy.independent().sample(4000, seed=0)), t)
    assert leaky.auc > 0.9 and leaky.auc_ci[0] > 0.75
    assert leaky.epsilon_lower_bound > 1.0
    assert safe.auc_ci[0] < 0.5 < safe.auc_ci[1] or abs(safe.auc - 0.5) < 0.15
