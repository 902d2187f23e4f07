"""Device picking for ``--device``."""

from __future__ import annotations

import pytest
import torch

from pleura.device import pick_device


def test_cpu_and_auto() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_device_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose auto, cpu or cuda"):
        pick_device("tpu")
