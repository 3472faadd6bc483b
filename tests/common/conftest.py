"""Fixtures for the common/ unit tests: a small mixed schema and generated site tables."""

from __future__ import annotations

import pandas as pd
import pytest
from common_factories import make_mixed_frame, make_mixed_schema

from fedsynth.common.schema import Schema


@pytest.fixture
def mixed_schema() -> Schema:
    """See :func:`make_mixed_schema`."""
    return make_mixed_schema()


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """40 valid rows of the mixed schema."""
    return make_mixed_frame(40, seed=1)


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch() -> None:
    """Tiny models gain nothing from intra-op threads; one thread avoids contention on small CI boxes."""
    import torch

    torch.set_num_threads(1)
