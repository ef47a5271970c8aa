"""The HTML report (tribute.report, ``tribute report RUN_DIR``): what the page holds, checked against the run's own
files — each embedded map is the store's map encoded, each table cell the evaluation table's number, directions
from the registry — on a full run directory, a single store, degenerate maps and paths that are not runs."""

from __future__ import annotations

import base64
import math
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("jinja2")
pytest.importorskip("safetensors")

import tribute  # noqa: E402
from tribute.reporting.build import build_page, render  # noqa: E402
from tribute.reporting.samples import samples_section  # noqa: E402
from tribute.run_directory import RunDirectory, RunDirectoryError, RunInputs  # noqa: E402
from tribute.store import compute_store  # noqa: E402
from tribute.viz.encode import encode_map, high_percentile  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
METHODS = ("gradient", "input_x_gradient", "smoothgrad")
CLASSES = ["cat", "dog", "cow"]


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


def make_run(path: Path, n: int = 7, metrics=("aopc_morf", "deletion", "completeness_gap")) -> RunDirectory:
    """A run directory as explain + evaluate --out write it: inputs, one store per method, metrics.json, a log."""
    model = tiny_cnn()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    run = RunDirectory(path, create=True)
    run.write_inputs(x, names=[f"photo {i}" for i in range(n)], labels=y, classes=CLASSES)
    for m in METHODS:
        compute_store(run.store_path(m), model, (x, y), m, target="label", chunk_size=3,
                      **({"samples": 4} if m == "smoothgrad" else {}))
    if metrics:
        run.write_metrics(tribute.evaluate(model, (x, y), METHODS, list(metrics), target="label", progress=False))
    run.log({"command": "explain", "seconds": 2.5, "seed": 0, "versions": {"tribute": tribute.__version__}})
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDirectory:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def images_of(html: str) -> list[bytes]:
    return [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_each_embedded_map_is_the_store_map_encoded(run):
    page = build_page(run.path, max_samples=4)
    section = page.samples
    assert section.total == 7 and len(section.rows) == 4 and section.methods == list(METHODS)
    assert "showing the first 4 of 7 samples (max_samples=4)" in section.notes
    stores = run.stores()
    for row in section.rows:
        for cell in row.cells:
            a = stores[cell.method][row.index]
            signed = bool((stores[cell.method].attributions(0, 4) < 0).any())
            expected = encode_map(a, signed=signed)
            assert cell.uri == expected.data_uri()
            assert cell.scale == pytest.approx(high_percentile(np.abs(a.sum(0).numpy()).ravel(), 99.5))
            target = int(stores[cell.method].targets(row.index, row.index + 1)[0])
            assert cell.target == f"{target} ({CLASSES[target]})"
        assert row.name == f"photo {row.index}" and row.image.startswith("data:image/png;base64,")
    labels = run.inputs().labels
    assert [r.label for r in section.rows] == [f"{int(v)} ({CLASSES[int(v)]})" for v in labels[:4]]


def test_one_scale_per_method_on_request(run):
    section = build_page(run.path, max_samples=5, scale="method").samples
    stores = run.stores()
    for j, m in enumerate(METHODS):
        scales = {row.cells[j].scale for row in section.rows}
        maps = stores[m].attributions(0, 5).sum(1).abs().numpy().ravel()
        assert len(scales) == 1 and scales.pop() == pytest.approx(high_percentile(maps, 99.5))


def test_the_page_is_self_contained_and_holds_every_piece(run, tmp_path):
    out = tribute.report(run.path, tmp_path / "sub" / "r.html", max_samples=3, title="Run <A> & B")
    html = out.read_text()
    assert out == tmp_path / "sub" / "r.html"
    assert not re.search(r"<script|<link|src=\"http|url\(", html)  # nothing fetched from anywhere
    assert "Run &lt;A&gt; &amp; B" in html  # escaped by the template engine
    pngs = images_of(html)
    # 3 samples × (image + 3 maps), 2 colour bars, one curve figure per metric with curves (aopc_morf, deletion)
    assert len(pngs) == 3 * 4 + 2 + 2
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    text = unescape(html)
    for piece in ("seed", "versions.tribute", "smoothgrad", '{"samples": 4, "seed": 0}'):
        assert piece in text
    # the log's commands wrote the stores: their time is the run log's, not added to the stores' own
    assert "time spent by the run: 2.5 s (from the run log's records)" in text
    default = tribute.report(run.path)
    assert default == run.path / "report.html" and default.exists()


def test_metric_table_with_directions_and_best_means(run):
    table = run.metrics()
    page = build_page(run.path)
    t = page.metrics
    assert [(c.label, c.arrow) for c in t.columns[1:4]] == [("aopc_morf", "↑"), ("deletion", "↓"),
                                                           ("completeness_gap", "↓")]
    assert [r[0].text for r in t.rows] == list(METHODS)
    for k, metric in enumerate(table.metrics, start=1):
        means = [table.mean(m, metric) for m in METHODS]
        best = int(np.argmax(means) if table.better[metric] == "higher" else np.argmin(means))
        assert [r[k].best for r in t.rows] == [i == best for i in range(3)]
        for i, m in enumerate(METHODS):
            assert t.rows[i][k].text == f"{table.mean(m, metric):.4g} ± {table.std(m, metric):.3g}"
    html = render(page)
    assert html.count("<tr>") >= 1 + len(METHODS)
    assert "higher is better" in html and "lower is better" in html


def test_a_single_store_directory(tmp_path):
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    compute_store(tmp_path / "store", tiny_cnn(), x, "gradient", chunk_size=2)
    page = build_page(tmp_path / "store")
    assert [len(r.cells) for r in page.samples.rows] == [1] * 5
    assert page.samples.rows[0].image is None and page.samples.rows[0].name == "sample 0"
    assert any("no inputs.safetensors" in n for n in page.notes)
    assert any("no metrics.json" in n for n in page.notes)
    info = page.info
    assert info.stores[0].method == "gradient" and info.seconds == info.stores[0].seconds is not None
    assert info.seconds_source == "the stores' run logs"
    html = tribute.report(tmp_path / "store").read_text()
    assert "No metric table" in html and len(images_of(html)) == 5 + 2
    # the report file does not stop the store from being resumed
    compute_store(tmp_path / "store", tiny_cnn(), x, "gradient", chunk_size=2)


def test_mismatched_store_and_missing_pieces_are_named(tmp_path):
    run = make_run(tmp_path / "run", n=4, metrics=())
    compute_store(run.store_path("extra"), tiny_cnn(), torch.rand(3, 3, 8, 8), "gradient")
    page = build_page(run.path)
    assert "attributions/extra holds 3 samples but the run has 4: its maps are not shown" in page.samples.notes
    assert "extra" not in page.samples.methods
    assert any("no metrics.json" in n for n in page.notes)
    empty = RunDirectory(tmp_path / "only-log", create=True)
    empty.log({"command": "evaluate", "seconds": 1.0})
    html = render(build_page(empty.path))
    assert "no attribution store" in html and "No metric table" in html


class FakeStore:
    """The reading side of a store (what the samples section uses), over given attributions."""

    def __init__(self, a: torch.Tensor):
        self.a = a
        self.shape = a.shape[1:]

    def __len__(self):
        return self.a.shape[0]

    def attributions(self, start=0, stop=None):
        return self.a[start:stop]

    def targets(self, start=0, stop=None):
        return torch.zeros(len(self.a[start:stop]), dtype=torch.long)


def test_degenerate_maps_are_drawn_and_named():
    n = 4
    zero = torch.zeros(n, 1, 5, 5)
    bad = torch.randn(n, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    bad[:, 0, 0, 0] = math.nan
    bad[:, 1, 1, 1] = math.inf
    const = torch.full((n, 5, 5), 2.0)
    extreme = torch.randn(n, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 1e30
    inputs = RunInputs(torch.rand(n, 1, 5, 5), [str(i) for i in range(n)])
    section = samples_section(inputs, {"zero": FakeStore(zero), "bad": FakeStore(bad), "const": FakeStore(const),
                                       "extreme": FakeStore(extreme)})
    first = {c.method: c for c in section.rows[0].cells}
    assert first["zero"].notes == ["all values are zero"] and first["zero"].scale == 0.0
    assert first["bad"].notes == ["1 NaN, 1 +inf shown in green"]
    assert not first["const"].signed and first["const"].scale == 2.0
    assert first["extreme"].scale > 1e29 and first["extreme"].signed
    assert section.rows[0].image is not None  # a single-channel input, shown in grey


def test_token_and_feature_maps_are_strips():
    n, t = 3, 9
    a = torch.randn(n, t, 4, generator=torch.Generator().manual_seed(2))
    inputs = RunInputs(torch.randint(0, 50, (n, t)), ["a", "b", "c"], kind="tokens")
    section = samples_section(inputs, {"gradient": FakeStore(a)})
    cell = section.rows[0].cells[0]
    assert cell.strip and section.rows[0].image is None
    assert cell.uri == encode_map(a[0].sum(-1)[None], signed=True).data_uri()
    features = samples_section(RunInputs(torch.rand(n, 6), ["a", "b", "c"], kind="features"),
                               {"g": FakeStore(torch.rand(n, 6))})
    assert features.rows[1].cells[0].strip and not features.rows[1].cells[0].signed


def test_bad_options_and_paths(tmp_path, run):
    with pytest.raises(ValueError, match="max_samples must be a positive int"):
        build_page(run.path, max_samples=0)
    with pytest.raises(ValueError, match="scale must be one of map, method"):
        build_page(run.path, scale="global")
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        build_page(run.path, percentile=120)
    with pytest.raises(RunDirectoryError, match="is not a run directory"):
        tribute.report(tmp_path)
    with pytest.raises(RunDirectoryError, match="does not exist"):
        tribute.report(tmp_path / "nowhere")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "tribute", "report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_line(run, tmp_path):
    done = cli(str(run.path), "--out", "page.html", "--max-samples", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tribute report: wrote {Path('page.html')}"
    assert len(images_of((tmp_path / "page.html").read_text())) == 2 * 4 + 2 + 2
    for args, message in [((str(tmp_path / "missing"),), "the folder does not exist"),
                          ((str(tmp_path),), "is not a run directory"),
                          ((str(run.path), "--max-samples", "0"), "max_samples must be a positive int")]:
        bad = cli(*args, cwd=tmp_path)
        assert bad.returncode == 2 and bad.stdout == ""
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tribute report: error: ") and message in lines[0]


def test_damaged_pieces_are_named_and_the_rest_stands(tmp_path):
    run = make_run(tmp_path / "run", n=3)
    (run.path / "metrics.json").write_text('{"format": "something else"}')
    (run.path / "inputs.json").write_text('{"format": "tribute.run/0"}')
    page = build_page(run.path)
    assert any(n.startswith("metrics.json could not be read and is left out: ") and "not a tribute evaluation table"
               in n for n in page.notes)
    assert any(n.startswith("inputs.safetensors / inputs.json could not be read") for n in page.notes)
    assert page.metrics is None and len(page.samples.rows) == 3 and page.samples.rows[0].image is None
    assert not any(n.startswith("no metrics.json") or n.startswith("no inputs") for n in page.notes)


def test_without_matplotlib_the_curves_are_a_note(run, monkeypatch):
    import tribute.viz.curves as curves
    from tribute._optional import MissingExtraError

    def missing(*args, **kwargs):
        raise MissingExtraError("metric curve figures need the optional module 'matplotlib.figure', which is not "
                                "installed; install it with: pip install 'tribute[viz]'")

    monkeypatch.setattr(curves, "new_figure", missing)
    page = build_page(run.path, max_samples=1)
    assert page.curves == [] and page.metrics is not None
    assert any(n.startswith("the metric curves are not drawn: ") and "pip install 'tribute[viz]'" in n
               for n in page.notes)


def test_options_recorded_as_digests_read_as_shapes_and_class_names():
    from tribute.reporting.runinfo import compact

    recorded = {"input_transform": {"object": "torchvision.transforms.Normalize", "state": {"mean": {
        "tensor_sha256": "8d93", "shape": [3], "dtype": "torch.float64"}}},
        "references": {"tensor_sha256": "ab", "shape": [8, 3, 4, 4], "dtype": "torch.float32"}, "steps": 64}
    assert compact(recorded) == ('{"input_transform": "Normalize", "references": "tensor (8, 3, 4, 4) float32", '
                                 '"steps": 64}')


def test_tokens_with_their_text_are_written_coloured_by_their_attribution(tmp_path):
    """A run of token inputs that records their text: each word on the page in the colour of its attribution
    (summed over the embedding) at the map's scale, as the strip would draw it; the largest |φ| at full colour."""
    from tribute.viz.encode import value_colors

    n, t = 2, 4
    a = torch.tensor([[[1.0, 1.0], [-1.0, 0.0], [0.0, 0.0], [0.5, -0.25]],
                      [[0.0, 0.0], [3.0, 0.0], [0.0, -3.0], [0.0, 0.0]]])
    words = [["the", "film", "was", "<b>"], ["not", "bad", "at", "all"]]
    inputs = RunInputs(torch.randint(0, 50, (n, t)), ["s0", "s1"], kind="tokens", tokens=words)
    section = samples_section(inputs, {"gradient": FakeStore(a)}, percentile=100)
    first = section.rows[0].cells[0]
    assert first.scale == 2.0 and [w for w, _ in first.words] == words[0]
    # −0.5 and 0.125 of the scale in the 255-step palette
    assert [c for _, c in first.words] == ["#ff0000", "#7e7eff", "#ffffff", "#ffdfdf"]
    assert value_colors([2.0, -2.0, 0.0, math.nan], signed=True, scale=2.0) == ["#ff0000", "#0000ff", "#ffffff",
                                                                                 "#00c800"]
    # through a run directory: embeddings (N, T, 2) explained by a linear model, the words escaped on the page
    run = RunDirectory(tmp_path / "run", create=True)
    embeddings = torch.randn(n, t, 2, generator=torch.Generator().manual_seed(0))
    run.write_inputs(embeddings, names=inputs.names, kind="tokens", tokens=words)
    assert run.inputs().tokens == words
    with pytest.raises(RunDirectoryError, match="one text per token"):
        run.write_inputs(embeddings, kind="tokens", tokens=[["a"], ["b"]])
    torch.manual_seed(0)
    compute_store(run.store_path("gradient"), nn.Sequential(nn.Flatten(), nn.Linear(2 * t, 3)).eval(), embeddings,
                  "gradient", target=0)
    page = render(build_page(run.path))
    assert page.count("&lt;b&gt;</span>") == 1 and ">film</span>" in page and "<b>" not in page
