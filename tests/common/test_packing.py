"""Packed weights: one flat vector + layout, exact round trip, and coordinate-wise aggregation unchanged."""

from __future__ import annotations

import pytest
import torch

from fedsynth.common.config import RunConfig
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.packing import PackLayout, pack_state_dict, unpack_state_dict


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    cfg = RunConfig.from_user_config({"unet-dim": 8, "unet-seq-len": 8, "unet-dim-mults": "1,2"})
    return TabularUNet1D(cfg.model_config(11)).state_dict()


def test_pack_then_unpack_gives_back_the_same_tensors_in_order() -> None:
    # Arrange
    state = _state()
    # Act
    flat, layout = pack_state_dict(state)
    back = unpack_state_dict(flat, PackLayout.from_json(layout.to_json()))
    # Assert
    assert flat.dim() == 1 and flat.numel() == sum(t.numel() for t in state.values())
    assert list(back) == list(state)
    for key, tensor in state.items():
        assert back[key].shape == tensor.shape and torch.equal(back[key], tensor)
    back[next(iter(back))].add_(1.0)  # unpacked tensors own their memory
    assert torch.equal(unpack_state_dict(flat, layout)[next(iter(state))], next(iter(state.values())))


def test_mean_of_packed_vectors_equals_per_tensor_mean() -> None:
    # Arrange
    a, b = _state(1), _state(2)
    (fa, layout), (fb, _) = pack_state_dict(a), pack_state_dict(b)
    # Act
    mean = unpack_state_dict((0.25 * fa + 0.75 * fb), layout)
    # Assert
    for key in a:
        assert torch.allclose(mean[key], 0.25 * a[key] + 0.75 * b[key])


def test_packing_against_a_different_layout_is_refused() -> None:
    state = _state()
    _, layout = pack_state_dict(state)
    renamed = dict(state)
    first = next(iter(renamed))
    renamed["other"] = renamed.pop(first)
    reshaped = {**state, first: state[first].reshape(-1)[:-1]}

    with pytest.raises(ValueError, match="names differ"):
        pack_state_dict(renamed, layout)
    with pytest.raises(ValueError, match="shape"):
        pack_state_dict(reshaped, layout)
    with pytest.raises(ValueError, match="shape"):
        unpack_state_dict(torch.zeros(layout.numel + 1), layout)
    with pytest.raises(ValueError, match="dtype"):
        unpack_state_dict(torch.zeros(layout.numel, dtype=torch.float64), layout)


@pytest.mark.parametrize("text", ["{}", "not json", '{"names": ["a"], "shapes": []}',
                                  '{"names": ["a"], "shapes": [[2]], "dtype": "nope"}'])
def test_malformed_layout_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        PackLayout.from_json(text)


def test_mixed_or_integer_dtypes_cannot_be_packed() -> None:
    with pytest.raises(ValueError, match="one floating dtype"):
        PackLayout.of({"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.int64)})
