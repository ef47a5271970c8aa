"""The run directory (tribute.run_directory): inputs, stores, metrics and the log written and read back."""

import pytest
import torch
from torch import nn

pytest.importorskip("safetensors")

import tribute  # noqa: E402
from tribute.run_directory import RunDirectory, RunDirectoryError, open_run  # noqa: E402


def test_inputs_stores_and_log_read_back(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    x = torch.rand(5, 1, 8, 8)
    run.write_inputs(x, names=list("abcde"), labels=torch.arange(5), classes=[f"c{i}" for i in range(10)])
    got = run.inputs()
    assert torch.equal(got.inputs, x) and got.names == list("abcde") and torch.equal(got.labels, torch.arange(5))
    assert got.classes[3] == "c3" and got.kind == "image" and got.display is None
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    tribute.store.compute_store(run.store_path("gradient"), model, (x, torch.arange(5)), "gradient",
                                target="label", chunk_size=2)
    stores = run.stores()
    assert list(stores) == ["gradient"]
    expected = tribute.explain(model, x, "gradient", torch.arange(5))
    torch.testing.assert_close(stores["gradient"].attributions(), expected)
    run.log({"command": "explain"})
    run.log({"command": "evaluate"})
    assert [r["command"] for r in open_run(run.path).records()] == ["explain", "evaluate"]
    assert open_run(run.store_path("gradient")).is_store()


def test_bad_run_directories_are_named(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirectoryError, match="is not a run directory"):
        open_run(tmp_path / "empty")
    run = RunDirectory(tmp_path / "r", create=True)
    with pytest.raises(RunDirectoryError, match="2 names for 3 samples"):
        run.write_inputs(torch.zeros(3, 2), names=["a", "b"])
    with pytest.raises(RunDirectoryError, match="kind must be one of"):
        run.write_inputs(torch.zeros(3, 2), kind="video")
    assert run.inputs() is None and run.metrics() is None and run.stores() == {}


def test_display_images_may_be_the_inputs_themselves(tmp_path):
    run = RunDirectory(tmp_path / "r", create=True)
    x = torch.rand(2, 3, 4, 4)
    run.write_inputs(x, display=x)
    assert torch.equal(run.inputs().display, x) and torch.equal(run.inputs().inputs, x)
