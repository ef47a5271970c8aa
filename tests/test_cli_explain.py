"""``tribute explain`` and the loading it shares with ``evaluate`` (:mod:`tribute.commands`), in process: image
preparation worked by hand, class names and targets, and the command's attributions equal to the Python API's
under equivalent formulations (a normalisation given as --mean/--std or built into the model, a .pt or a .npy file,
any batch size, a resumed run)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from cli_fixture import make_workdir
from torch import nn

import tribute
from tribute.cli import main
from tribute.commands import CommandError
from tribute.commands.inputs import fit_size
from tribute.commands.models import Transformed, parse_size
from tribute.commands.targets import class_index, resolve_target
from tribute.data import imagenet_classes
from tribute.run_directory import RunDirectory


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("cli_explain") / "work")


@pytest.fixture
def workdir(made, monkeypatch):
    """The prepared folder as the working directory; the import path and modules restored afterwards."""
    monkeypatch.chdir(made)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield made
    sys.modules.pop("mymodels", None)


def model_of(workdir):
    sys.path.insert(0, str(workdir))
    import mymodels

    model = mymodels.make()
    model.load_state_dict(torch.load(workdir / "mymodel.pt", weights_only=True))
    return model.eval()


USER = ["--model", "mymodels:make", "--weights", "mymodel.pt", "--quiet"]


def test_fit_size_keeps_the_aspect_and_crops_the_centre():
    # a 4 x 8 image whose left half is 0 and right half 1 ... scaled by 1 to cover 4 x 4: the central columns 2..5
    image = torch.zeros(1, 4, 8)
    image[..., 4:] = 1.0
    out = fit_size(image, (4, 4))
    assert out.shape == (1, 4, 4)
    assert torch.equal(out[0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    # a tall 64 x 32 image already covers 32 x 32 at scale 1: its central rows 16..47, untouched
    tall = torch.rand(3, 64, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fit_size(tall, (32, 32)), tall[:, 16:48])
    assert fit_size(tall, (16, 16)).shape == (3, 16, 16)  # scale 1/2, then rows 8..23 of the 32 x 16
    constant = torch.full((3, 30, 50), 0.3)
    torch.testing.assert_close(fit_size(constant, (32, 32)), torch.full((3, 32, 32), 0.3))
    assert parse_size("224x160") == (224, 160) and parse_size(32) == (32, 32)
    with pytest.raises(CommandError, match="positive size"):
        parse_size("0x3")


def test_class_names_match_synonyms_and_suggest_the_closest():
    classes = list(imagenet_classes())
    assert class_index("tabby cat", classes, 1000) == 281 and class_index("  Tabby ", classes, 1000) == 281
    assert resolve_target("predicted", classes, 1000) is None and resolve_target("7", None, 10) == 7
    with pytest.raises(CommandError, match="the closest: 'tabby, tabby cat'"):
        class_index("taby cat", classes, 1000)
    with pytest.raises(CommandError, match="class names are unknown"):
        class_index("cat", None, 10)
    with pytest.raises(CommandError, match="classes 0 to 9"):
        class_index("10", None, 10)


def test_explain_equals_the_api_and_does_not_depend_on_the_batch_size(workdir):
    assert main(["explain", "digits.pt", *USER, "--methods", "saliency,integrated_gradients", "--out", "a"]) == 0
    assert main(["explain", "digits.pt", *USER, "--methods", "saliency,integrated_gradients", "--out", "b",
                 "--batch-size", "3"]) == 0
    data = torch.load("digits.pt", weights_only=True)
    model = model_of(workdir)
    a, b = RunDirectory("a").stores(), RunDirectory("b").stores()
    for m in ("saliency", "integrated_gradients"):
        expected = tribute.explain(model, data["inputs"], m)
        torch.testing.assert_close(a[m].attributions(), expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(b[m].attributions(), a[m].attributions(), rtol=1e-5, atol=1e-7)
        assert torch.equal(a[m].targets(), model(data["inputs"]).argmax(1))


def test_a_npy_file_and_a_pt_file_of_the_same_inputs_give_the_same_run(workdir):
    data = torch.load("digits.pt", weights_only=True)
    np.save("digits.npy", data["inputs"].numpy())
    assert main(["explain", "digits.npy", *USER, "--methods", "gradient", "--target", "3", "--out", "npy"]) == 0
    assert main(["explain", "digits.pt", *USER, "--methods", "gradient", "--target", "3", "--out", "pt",
                 "--save", "pt"]) == 0
    npy, pt = RunDirectory("npy"), RunDirectory("pt")
    assert torch.equal(npy.stores()["gradient"].attributions(), pt.stores()["gradient"].attributions())
    saved = torch.load("pt/attributions/gradient.pt", weights_only=True)
    assert torch.equal(saved["attributions"], pt.stores()["gradient"].attributions())
    assert saved["targets"].tolist() == [3] * data["inputs"].shape[0]
    assert pt.inputs().labels.tolist() == data["labels"].tolist() and npy.inputs().labels is None


def test_mean_and_std_equal_the_normalisation_built_into_the_model(workdir):
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    assert main(["explain", "photos", *USER, "--methods", "integrated_gradients", "--mean", "0.4,0.5,0.6", "--std",
                 "0.2,0.25,0.3", "--target", "cat", "--out", "normalised"]) == 0
    run = RunDirectory("normalised")
    x = run.inputs().inputs
    assert x.min() >= 0 and x.max() <= 1  # pixels: the normalisation is the methods' input_transform
    whole = Transformed(model_of(workdir), tribute.Normalize(mean, std)).eval()
    expected = tribute.explain(whole, x, "integrated_gradients", target=3)
    torch.testing.assert_close(run.stores()["integrated_gradients"].attributions(), expected, rtol=1e-5, atol=1e-7)


def test_a_rerun_resumes_and_the_log_records_each_command(workdir):
    argv = ["explain", "cat.png", *USER, "--methods", "saliency", "--out", "again"]
    assert main(argv) == 0 and main(argv) == 0
    run = RunDirectory("again")
    records = run.records()
    assert [r["command"] for r in records] == ["explain", "explain"] and records[-1]["argv"] == ["tribute", *argv]
    assert records[-1]["seeds"] == {"seed": 0} and set(records[-1]["methods"]) == {"saliency"}
    assert "torch" in records[-1]["versions"] and records[-1]["settings"]["size"] == [32, 32]
    shards = run.stores()["saliency"].run_log["runs"][-1]["shards"]
    assert [s["status"] for s in shards] == ["kept"]
    # another computation in the same folder is refused, naming the way out
    assert main([*argv, "--target", "2"]) == 2


def test_evaluate_out_writes_the_table_the_api_computes(workdir):
    assert main(["evaluate", *USER, "--data", "digits.pt", "--methods", "gradient,random", "--metrics", "aopc_morf",
                 "--out", "evaluated", "--json", "table.json"]) == 0
    data = torch.load("digits.pt", weights_only=True)
    direct = tribute.evaluate(model_of(workdir), (data["inputs"], data["labels"]), ["gradient", "random"],
                              ["aopc_morf"], progress=False)
    run = RunDirectory("evaluated")
    assert run.metrics().equals(direct) and run.records()[-1]["command"] == "evaluate"
    assert torch.equal(run.inputs().inputs, data["inputs"])


def test_images_of_different_sizes_need_a_size(workdir, tmp_path, monkeypatch, capsys):
    (tmp_path / "plain.py").write_text("from torch import nn\n\n\ndef make():\n"
                                       "    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), "
                                       "nn.Flatten())\n")
    monkeypatch.chdir(tmp_path)
    for name in ("cat", "coffee"):
        (tmp_path / f"{name}.png").write_bytes((workdir / "photos" / f"{name}.png").read_bytes())
    assert main(["explain", "cat.png", "coffee.png", "--model", "plain:make", "--quiet"]) == 2
    assert "different sizes" in capsys.readouterr().err
    assert main(["explain", "cat.png", "coffee.png", "--model", "plain:make", "--size", "20x24", "--quiet",
                 "--channels", "1"]) == 2  # one channel for a model of three: the model's own error, named
    assert "fails on inputs of shape (1, 1, 20, 24)" in capsys.readouterr().err
    sys.modules.pop("plain", None)


def test_the_demo_model_brings_in_its_preprocessing_and_class_names():
    pytest.importorskip("efficientnet_lite_pytorch")
    from tribute.commands.models import load_model

    loaded = load_model("demo")
    assert loaded.size == (224, 224) and loaded.classes[281] == "tabby, tabby cat"
    with pytest.raises(CommandError, match="do not apply|do\\(es\\) not apply"):
        load_model("demo", size="32")
    assert isinstance(loaded.model, nn.Module)


def test_set_gives_method_options_as_the_api_takes_them(workdir):
    """--set steps=8 reaches every chosen method that takes steps; METHOD.OPTION reaches one; values parse as JSON."""
    assert main(["explain", "digits.pt", *USER, "--methods", "integrated_gradients,smoothgrad,saliency",
                 "--set", "steps=8", "--set", "smoothgrad.samples=3", "--set", "smoothgrad.noise_level=0.2",
                 "--target", "2", "--out", "set"]) == 0
    data, model = torch.load("digits.pt", weights_only=True), model_of(workdir)
    stores = RunDirectory("set").stores()
    torch.testing.assert_close(stores["integrated_gradients"].attributions(),
                               tribute.explain(model, data["inputs"], "integrated_gradients", 2, steps=8),
                               rtol=1e-5, atol=1e-7)
    sg = tribute.explain(model, data["inputs"], "smoothgrad", 2, samples=3, noise_level=0.2, seed=0)
    torch.testing.assert_close(stores["smoothgrad"].attributions(), sg, rtol=1e-5, atol=1e-7)
    record = RunDirectory("set").records()[-1]
    assert record["methods"]["smoothgrad"]["options"] == {"samples": 3, "noise_level": 0.2}
    assert record["methods"]["saliency"]["options"] == {}


@pytest.mark.parametrize("item, message", [
    ("steps", "expected OPTION=VALUE"),
    ("gradcam.layer=x", "'gradcam' is not among --methods"),
    ("windows=3", "no chosen method takes 'windows'"),
    ("seed=3", "give seed with --seed"),
])
def test_set_refuses_what_no_chosen_method_takes(workdir, item, message, capsys):
    status = main(["explain", "digits.pt", *USER, "--methods", "integrated_gradients", "--set", item, "--out", "bad"])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
