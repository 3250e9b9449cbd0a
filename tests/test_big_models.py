"""Big models: an inspection's limits follow the model's size on disk, and a 4 GiB model
(a sparse safetensors state dict) is used from Java with large_model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import big_model
from tests._security_base import expand, inference
from tests._service_helpers import Service, expansion_request

REPO = Path(__file__).resolve().parent.parent


def test_inspection_limits_grow_with_the_model_size(tmp_path):
    # 384 MiB of weights (a hole on disk) under a 128 MiB limit for small models: the file is
    # mapped whole, so it passes only because the limit grew with its size.
    root = tmp_path / "roots"
    root.mkdir()
    model = root / "big.safetensors"
    rows = (384 << 20) // (1024 * 4)
    big_model.write_sparse_safetensors(model, rows, 1024)
    service = Service("--port", "0", "--inspect-memory-mb", "128", "--inspect-timeout", "60",
                      "--inspect-cpu-seconds", "60", "--model-root", str(root),
                      "--allow", "tests.models.*", log_path=tmp_path / "service.log",
                      # This checkout's tests package first: a third-party distribution
                      # installs a top-level "tests" too, which --allow would refuse.
                      env={"PYTHONPATH": os.pathsep.join(
                          [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])})
    try:
        with service.channel() as channel:
            response = expand(channel, expansion_request(inference(
                framework="pytorch", model_uri=str(model), model_class="tests.models:BigTable",
                model_params={"rows": rows})), 180)
        assert not response.error, response.error
        assert "limits grown with the model's size" in service.log()
        assert "1280 MiB" in service.log()  # 128 + 3 x 384
    finally:
        service.stop()


@pytest.mark.java
@pytest.mark.slow
def test_a_4_gib_model_from_java_with_large_model(tmp_path):
    from tests._java import PrismJobServer

    (tmp_path / "prism").mkdir()
    prism = PrismJobServer(tmp_path / "prism")
    try:
        result = big_model.run(prism, tmp_path, gib=4.0, n=40)
    finally:
        prism.stop()
        for f in (tmp_path / "models").glob("*"):
            f.unlink()  # the file is sparse; never leave 4 GiB of apparent size behind
    done = result["done"]
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    assert result["model_bytes"] >= 4 << 30
    print(f"\n4 GiB model from Java: {result['seconds']:.0f} s; peak RSS MiB "
          f"{result['peaks_mib']}")
    labels = [p["label"] for p in sorted(result["predictions"], key=lambda p: p["id"])]
    assert labels == result["expected"]
