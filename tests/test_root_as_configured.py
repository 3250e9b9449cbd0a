"""A model root configured through a symbolic link shows in messages as it was configured,
never as the directory it resolves to (which may say more of the host than the operator
chose to)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossinfer import _repository
from crossinfer._errors import ModelLoadError


def test_errors_and_admitted_paths_show_the_configured_root(tmp_path: Path) -> None:
    real = tmp_path / "hidden-real-location" / "models"
    real.mkdir(parents=True)
    (real / "model.onnx").write_bytes(b"x")
    link = tmp_path / "configured"
    link.symlink_to(real)
    repository = _repository.Repository((str(link),), ())
    assert repository.admit(f"{link}/model.onnx", code=False, what="ONNX") == \
        f"{link}/model.onnx"
    with pytest.raises(ModelLoadError) as missing:
        repository.admit(f"{link}/absent.onnx", code=False, what="ONNX")
    assert str(link) in str(missing.value)
    assert "hidden-real-location" not in str(missing.value)
    assert all("hidden-real-location" not in line for line in repository.describe())
