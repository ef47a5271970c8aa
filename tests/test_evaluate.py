"""tribute.evaluate: per-sample scores equal the metric functions', do not depend on batch size, and come back the
same twice; efficiency columns from the engine's pass counter; CSV and JSON round trips; clear errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import residual_cnns

import tribute
from tribute.metrics import (
    EvaluationTable,
    completeness_gap,
    efficiency,
    evaluate,
    max_sensitivity,
    pixel_perturbation,
    resolve_target,
)

METHODS = ["gradient", ("ig", "integrated_gradients", {"steps": 8}), ("sg", "smoothgrad", {"samples": 4}), "random"]
METRICS = ["aopc_morf", ("aopc_lerf@5", "aopc_lerf", {"steps": 5}), "completeness_gap",
           ("max_sens", "max_sensitivity", {"samples": 3})]


def model_and_data(n: int = 10):
    model = residual_cnns()["modules"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (n,), generator=g)
    return model, x, y


def state(model):
    return [v.detach().clone() for v in model.state_dict().values()], [m.training for m in model.modules()]


def test_scores_are_the_metric_functions_on_each_methods_attributions():
    model, x, y = model_and_data()
    table = evaluate(model, (x, y), ["gradient", ("ig", "integrated_gradients", {"steps": 8})],
                     ["aopc_morf", "completeness_gap", ("max_sens", "max_sensitivity", {"samples": 3})],
                     progress=False)
    target = resolve_target(model, x, None)
    grad = tribute.explain(model, x, "gradient", target)
    ig = tribute.explain(model, x, "integrated_gradients", target, steps=8)
    assert torch.equal(table["gradient", "aopc_morf"], pixel_perturbation(model, x, grad, target).score)
    assert torch.equal(table["ig", "completeness_gap"], completeness_gap(model, x, ig, target).abs())
    from tribute.metrics.common import derived_seed
    expected = max_sensitivity(model, x, "gradient", target, samples=3, seed=derived_seed(0, "metric/max_sens"))
    assert torch.equal(table["gradient", "max_sens"], expected)
    assert table["gradient", "aopc_morf"].dtype == torch.float64 and table.samples == 10
    curve = pixel_perturbation(model, x, grad, target).curve
    assert torch.equal(table.curves["gradient", "aopc_morf"], curve)  # kept for internal consistency
    assert ("gradient", "completeness_gap") not in table.curves
    assert table.mean("ig", "aopc_morf") == pytest.approx(float(table["ig", "aopc_morf"].mean()))
    assert table.std("ig", "aopc_morf") == pytest.approx(float(table["ig", "aopc_morf"].std()))


def test_the_same_seed_gives_the_same_table_and_per_sample_scores_do_not_depend_on_the_batch_size():
    model, x, y = model_and_data()
    before = state(model)
    a = evaluate(model, (x, y), METHODS, METRICS, batch_size=3, seed=4, progress=False)
    b = evaluate(model, (x, y), METHODS, METRICS, batch_size=3, seed=4, progress=False)
    assert a.equals(b)
    whole = evaluate(model, (x, y), METHODS, METRICS, batch_size=10, seed=4, progress=False)
    batches = evaluate(model, [(x[:4], y[:4]), (x[4:5], y[4:5]), (x[5:], y[5:])], METHODS, METRICS, seed=4,
                       progress=True)
    for other in (whole, batches):
        assert other.methods == a.methods and other.metrics == a.metrics
        for key, s in a.scores.items():
            assert torch.allclose(s, other.scores[key], rtol=1e-10, atol=1e-12), key
        assert other.forward_rows == a.forward_rows and other.backward_rows == a.backward_rows
    assert not evaluate(model, (x, y), METHODS, METRICS, batch_size=3, seed=5, progress=False).equals(a)
    after = state(model)
    assert all(torch.equal(p, q) for p, q in zip(before[0], after[0], strict=True)) and before[1] == after[1]


def test_efficiency_counts_the_rows_each_method_sends_through_the_model():
    model, x, y = model_and_data(6)
    table = efficiency(model, x, METHODS, batch_size=4, progress=False)
    assert table.metrics == () and table.rows[0]["method"] == "gradient"
    # the class is fixed before the method runs, so a method makes only its own passes
    assert table.efficiency("gradient")["forward_per_sample"] == 1 and \
        table.efficiency("gradient")["backward_per_sample"] == 1
    assert table.efficiency("ig")["forward_per_sample"] == 8 and table.efficiency("ig")["backward_per_sample"] == 8
    assert table.efficiency("sg")["backward_per_sample"] == 4
    assert table.efficiency("random")["forward_per_sample"] is None  # it never calls the model
    assert all(table.seconds[m] > 0 for m in table.methods)


def test_csv_and_json_round_trips(tmp_path):
    model, x, y = model_and_data(5)
    table = evaluate(model, (x, y), METHODS[:2], METRICS[:3], progress=False)
    table.to_csv(tmp_path / "t.csv")
    rows = EvaluationTable.read_csv(tmp_path / "t.csv")
    assert rows == table.rows
    assert list(rows[0]) == ["method", "samples", "aopc_morf_mean", "aopc_morf_std", "aopc_lerf@5_mean",
                             "aopc_lerf@5_std", "completeness_gap_mean", "completeness_gap_std",
                             "seconds_per_sample", "forward_per_sample", "backward_per_sample"]
    table.to_json(tmp_path / "t.json")
    back = EvaluationTable.from_json(tmp_path / "t.json")
    assert back.equals(table, timings=True) and back.rows == table.rows
    assert json.loads((tmp_path / "t.json").read_text())["scores"]["gradient"]["aopc_morf"] == \
        table["gradient", "aopc_morf"].tolist()
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a tribute evaluation table"):
        EvaluationTable.from_json(tmp_path / "other.json")


def test_nan_scores_are_left_out_of_the_summary_and_written_as_null(tmp_path):
    model, x, y = model_and_data(4)

    def half_defined(model, inputs, attributions, target):
        s = attributions.flatten(1).sum(1).to(torch.float64)
        s[::2] = math.nan
        return s

    table = evaluate(model, (x, y), ["gradient"], [half_defined], progress=False)
    s = table["gradient", "half_defined"]
    assert table.mean("gradient", "half_defined") == pytest.approx(float(s[1::2].mean()))
    table.to_json(tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["scores"]["gradient"]["half_defined"][0] is None
    assert EvaluationTable.from_json(tmp_path / "t.json").equals(table)


def test_callable_metrics_get_attributions_or_the_method_by_their_third_parameter():
    model, x, y = model_and_data(4)
    seen = {}

    def of_attributions(model, inputs, attributions, target):
        seen["attributions"] = attributions
        return attributions.flatten(1).abs().sum(1)

    def of_method(model, inputs, method, target, *, seed):
        seen["method"], seen["seed"] = method, seed
        return torch.zeros(inputs.shape[0])

    table = evaluate(model, (x, y), ["gradient"], [of_attributions, ("m", of_method)], target="label",
                     progress=False)
    assert torch.equal(seen["attributions"], tribute.explain(model, x, "gradient", y))
    assert seen["method"] == "gradient" and isinstance(seen["seed"], int)
    assert table.better == {"of_attributions": "", "m": ""}
    text = str(table)
    assert "gradient" in text and "±" in text and "of_attributions" in text


def test_targets_label_int_tensor_and_the_prediction():
    model, x, y = model_and_data(6)
    by_label = evaluate(model, (x, y), ["gradient"], ["aopc_morf"], target="label", batch_size=4, progress=False)
    by_tensor = evaluate(model, x, ["gradient"], ["aopc_morf"], target=y, batch_size=4, progress=False)
    assert torch.equal(by_label["gradient", "aopc_morf"], by_tensor["gradient", "aopc_morf"])
    by_int = evaluate(model, x, ["gradient"], ["aopc_morf"], target=2, progress=False)
    grad = tribute.explain(model, x, "gradient", 2)
    assert torch.equal(by_int["gradient", "aopc_morf"], pixel_perturbation(model, x, grad, 2).score)


def test_bad_input_raises_clear_errors():
    model, x, y = model_and_data(4)
    with pytest.raises(ValueError, match="no samples"):
        evaluate(model, x[:0], ["gradient"], ["aopc_morf"], progress=False)
    with pytest.raises(ValueError, match="no samples"):
        evaluate(model, [], ["gradient"], ["aopc_morf"], progress=False)
    with pytest.raises(ValueError, match="unknown metric 'aopc_mrf'; did you mean 'aopc_morf'"):
        evaluate(model, x, ["gradient"], ["aopc_mrf"], progress=False)
    with pytest.raises(ValueError, match="did you mean 'integrated_gradients'"):
        evaluate(model, x, ["integrated_gradient"], ["aopc_morf"], progress=False)
    with pytest.raises(ValueError, match="method 'flat'.*shape"):
        evaluate(model, x, [("flat", lambda m, inputs, t: inputs.flatten(1))], ["aopc_morf"], progress=False)
    with pytest.raises(ValueError, match="metric 'bad' must give one score per sample"):
        evaluate(model, x, ["gradient"], [("bad", lambda m, inputs, a, t: a.sum())], progress=False)
    with pytest.raises(ValueError, match="needs labels"):
        evaluate(model, x, ["gradient"], ["aopc_morf"], target="label", progress=False)
    with pytest.raises(ValueError, match="two metrics are labelled"):
        evaluate(model, x, ["gradient"], ["aopc_morf", "aopc_morf"], progress=False)
    with pytest.raises(ValueError, match="batch_size applies to tensor data"):
        evaluate(model, [x], ["gradient"], ["aopc_morf"], batch_size=2, progress=False)
    with pytest.raises(ValueError, match="target has 3 entries"):
        evaluate(model, x, ["gradient"], ["aopc_morf"], target=y[:3], progress=False)
    with pytest.raises(TypeError, match="data must be"):
        evaluate(model, 3.0, ["gradient"], ["aopc_morf"], progress=False)


def test_the_public_face_and_the_command_line(tmp_path, monkeypatch, capsys):
    assert tribute.evaluate is evaluate
    model, x, y = model_and_data(4)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save((x, y), tmp_path / "data.pt")
    tests = str(Path(__file__).parent)
    (tmp_path / "evalmodel.py").write_text(f"import sys\nsys.path.insert(0, {tests!r})\n"
                                           "from conftest import ResidualCNN\n"
                                           "def make():\n    return ResidualCNN().double()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from tribute.cli import main

    code = main(["evaluate", "--model", "evalmodel:make", "--weights", str(tmp_path / "w.pt"), "--data",
                 str(tmp_path / "data.pt"), "--methods", "gradient,input_x_gradient", "--metrics", "aopc_morf",
                 "--target", "label", "--csv", str(tmp_path / "t.csv"), "--json", str(tmp_path / "t.json"),
                 "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "input_x_gradient" in out and "aopc_morf" in out
    table = EvaluationTable.from_json(tmp_path / "t.json")
    direct = evaluate(model, (x, y), ["gradient", "input_x_gradient"], ["aopc_morf"], target="label",
                      progress=False)
    assert table.equals(direct)
    sys.modules.pop("evalmodel", None)
