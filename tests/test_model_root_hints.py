"""A model outside the service's roots: the error names what fixes it, for the client that sent
the request (Java's CrossInference methods for the Java library, the service's flags else)."""

from __future__ import annotations

import pytest

from crossinfer._errors import ModelLoadError
from crossinfer._repository import Repository


@pytest.mark.parametrize("java", [True, False])
def test_no_repository(java):
    with pytest.raises(ModelLoadError) as caught:
        Repository().admit("/models/m.pkl", code=True, what="a pickle", java=java)
    message = str(caught.value)
    assert "--model-root" in message and "--trusted-model-root" in message
    assert ("withModelRoots(DIR)" in message and "withTrustedModelRoots(DIR)" in message) == java


@pytest.mark.parametrize("java", [True, False])
def test_outside_the_roots(tmp_path, java):
    (tmp_path / "root").mkdir()
    repository = Repository(roots=[str(tmp_path / "root")])
    with pytest.raises(ModelLoadError) as caught:
        repository.admit(str(tmp_path / "elsewhere.onnx"), code=False, what="x", java=java)
    assert ("CrossInference.withModelRoots(DIR)" in str(caught.value)) == java


@pytest.mark.parametrize("java", [True, False])
def test_code_outside_a_trusted_root(tmp_path, java):
    (tmp_path / "m.pkl").write_bytes(b"not read")
    repository = Repository(roots=[str(tmp_path)])
    with pytest.raises(ModelLoadError) as caught:
        repository.admit(str(tmp_path / "m.pkl"), code=True, what="a pickle", java=java)
    assert "--trusted-model-root" in str(caught.value)
    assert ("CrossInference.withTrustedModelRoots(DIR)" in str(caught.value)) == java
