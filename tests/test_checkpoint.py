"""The resume state loads with `torch.load(weights_only=True)`: tensors and plain values only, no code run.

The whole resume path (train, kill, resume) is tested in test_train.py; here: the random states survive the
plain form, numpy values are converted on saving, and a file holding any other object is refused unread.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tinyroberta_es.checkpoint import load_checkpoint, plain, rng_state, save_checkpoint, set_rng_state
from tinyroberta_es.errors import UserError


def draws() -> tuple[float, float, float, float]:
    """One number from each generator the resume state restores (numpy's gauss cache included)."""
    return random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(()))


def test_the_random_states_round_trip_through_a_weights_only_file(tmp_path):
    path = tmp_path / "state.pt"
    np.random.randn()  # leave a cached gaussian in numpy's state
    save_checkpoint(path, {"rng": [rng_state()], "progress": {"step": 3, "best": None}})
    expected = draws()
    torch.load(path, weights_only=True)  # what load_checkpoint does: raises on anything but plain values
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert draws() == expected


def test_numpy_values_are_saved_as_tensors_and_python_numbers(tmp_path):
    path = tmp_path / "state.pt"
    state = {"metrics": {"f1": np.float64(71.5), "n": np.int64(3)}, "order": np.arange(4), "t": (1, [2.0])}
    save_checkpoint(path, state)
    loaded = torch.load(path, weights_only=True)
    assert loaded["metrics"] == {"f1": 71.5, "n": 3} and type(loaded["metrics"]["f1"]) is float
    assert torch.equal(loaded["order"], torch.arange(4)) and loaded["t"] == (1, [2.0])


def test_an_object_that_would_not_load_weights_only_is_refused_when_saving(tmp_path):
    class Custom:
        pass

    with pytest.raises(TypeError, match="not Custom"):
        plain({"x": [Custom()]})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "state.pt", {"x": Custom()})
    assert not (tmp_path / "state.pt").exists()


class _RunsCode:
    """Unpickling this calls `Path.touch` on a marker file: what a malicious pickle could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_a_checkpoint_holding_other_objects_is_refused_unread(tmp_path):
    path, marker = tmp_path / "state.pt", tmp_path / "ran"
    torch.save({"module": {}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(UserError, match="holds objects other than tensors and plain values") as err:
        load_checkpoint(path)
    assert "delete it to start the run over" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()  # nothing in the file ran


def test_an_old_numpy_random_state_is_refused_with_the_fix(tmp_path):
    """Checkpoints of earlier versions pickled numpy's state as an ndarray: refused, not unpickled."""
    path = tmp_path / "state.pt"
    torch.save({"rng": [{"numpy": np.random.get_state()}]}, path)
    with pytest.raises(UserError, match=f"{path}.*delete it to start the run over"):
        load_checkpoint(path)
