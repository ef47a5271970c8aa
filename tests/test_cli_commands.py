"""Every ``tribute ...`` line of the ```sh blocks of README.md and docs/cli.md, run as written by the ``tribute``
console script in a prepared working directory (tests/cli_fixture.py: a user module, its weights, photos, a saved
tensor), with this checkout's ``src`` first on PYTHONPATH; each must exit 0 and write what it promises, and what it
writes must equal what the Python API computes.  Lines ending in ``# not run by the tests`` are skipped.

Bad input (a missing file, an unreadable image, an unknown method, class or module, a factory that is not one,
weights that do not fit) must give one line on stderr, exit status 2 and no traceback: checked through the same
console script from a working directory that holds the user's module.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixture import make_workdir

import tribute
from tribute.run_directory import RunDirectory

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOCUMENTS = ("README.md", "docs/cli.md")
SKIP_MARK = "# not run by the tests"


def documented_commands() -> list[tuple[str, int, str]]:
    """(document, line number, command) for every ``tribute ...`` line inside a ```sh block."""
    found = []
    for doc in DOCUMENTS:
        path = ROOT / doc
        if not path.exists():
            continue
        inside = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            fence = line.strip()
            if fence.startswith("```"):
                inside = not inside and fence[3:].strip() in ("sh", "bash", "shell", "console")
                continue
            command = fence.removeprefix("$ ")
            if inside and command.startswith("tribute ") and not command.endswith(SKIP_MARK):
                found.append((doc, number, command))
    return found


COMMANDS = documented_commands()


def console_script() -> str:
    """The ``tribute`` script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "tribute"
    found = str(beside) if beside.exists() else shutil.which("tribute")
    if found is None:
        pytest.skip("the tribute console script is not installed (pip install -e .)")
    return found


def run_tribute(argv: list[str], cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([console_script(), *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("cli") / "work")


def option(argv: list[str], name: str, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def user_model(workdir: Path):
    """mymodels.make() with mymodel.pt, loaded here as the command loads it."""
    spec = importlib.util.spec_from_file_location("mymodels_here", workdir / "mymodels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.make()
    model.load_state_dict(torch.load(workdir / "mymodel.pt", weights_only=True))
    return model.eval()


def check_explain(argv: list[str], workdir: Path) -> None:
    """The run directory of ``tribute explain``: stores equal to the Python API's attributions, heat maps, files."""
    run = RunDirectory(workdir / option(argv, "--out", "tribute-explain"))
    methods = option(argv, "--methods", "integrated_gradients").split(",")
    inputs = run.inputs()
    stores = run.stores()
    assert set(methods) <= set(stores), (methods, list(stores))
    if argv[1] == "photos/":
        assert sorted(inputs.names) == ["astronaut", "cat", "coffee"]
        assert inputs.inputs.shape == (3, 3, 32, 32) and 0 <= inputs.inputs.min() and inputs.inputs.max() <= 1
    assert run.records()[-1]["command"] == "explain" and run.records()[-1]["argv"][1:] == argv
    model = None if option(argv, "--model") == "demo" else user_model(workdir)
    for m in methods:
        store = stores[m]
        assert len(store) == inputs.inputs.shape[0]
        targets = store.targets()
        if option(argv, "--target") == "tabby cat":
            assert targets.tolist() == [281] * len(store)  # ImageNet's "tabby, tabby cat"
        elif option(argv, "--target", "predicted") != "predicted":
            assert targets.tolist() == [int(option(argv, "--target"))] * len(store)
        if model is not None:
            with torch.no_grad():
                if option(argv, "--target", "predicted") == "predicted":
                    assert torch.equal(targets, model(inputs.inputs).argmax(1))
            expected = tribute.explain(model, inputs.inputs, m, target=targets)
            torch.testing.assert_close(store.attributions(), expected, rtol=1e-5, atol=1e-7)
        if inputs.kind == "image":
            for name in inputs.names:
                assert run.heatmap_path(m, name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (m, name)
        save = option(argv, "--save", "none")
        if save == "npy":
            np.testing.assert_array_equal(np.load(run.path / "attributions" / f"{m}.npy"), store.attributions().numpy())
        elif save == "pt":
            assert torch.equal(torch.load(run.path / "attributions" / f"{m}.pt")["attributions"], store.attributions())


def check_evaluate(argv: list[str], workdir: Path) -> None:
    """``evaluate --out``: metrics.json is the table the Python API computes on the same model and data."""
    run = RunDirectory(workdir / option(argv, "--out"))
    table = run.metrics()
    methods = option(argv, "--methods").split(",")
    metrics = option(argv, "--metrics").split(",")
    assert list(table.methods) == methods
    data = torch.load(workdir / option(argv, "--data"), weights_only=True)
    assert torch.equal(run.inputs().inputs, data["inputs"]) and torch.equal(run.inputs().labels, data["labels"])
    direct = tribute.evaluate(user_model(workdir), (data["inputs"], data["labels"]), methods, metrics, progress=False)
    assert table.equals(direct)
    assert run.records()[-1]["command"] == "evaluate"


def check_outputs(argv: list[str], workdir: Path) -> None:
    command, out = argv[0], option(argv, "--out")
    if command == "explain":
        check_explain(argv, workdir)
    elif command == "evaluate" and out is not None:
        check_evaluate(argv, workdir)
    elif command == "demo":
        assert (workdir / out / "methods.png").stat().st_size > 0 and (workdir / out / "summary.json").exists()
    elif command == "report":
        assert "<html" in (workdir / argv[1] / "report.html").read_text(encoding="utf-8").lower()
    elif command == "experiment":
        assert (workdir / out / "run.json").exists()


def ensure_run_directory(folder: str, workdir: Path) -> None:
    """Run the documented command that writes ``folder`` when no earlier test has (a test run alone, or xdist)."""
    if (workdir / folder).exists():
        return
    for _, _, command in COMMANDS:
        argv = shlex.split(command)[1:]
        if option(argv, "--out") == folder:
            result = run_tribute(argv, workdir)
            assert result.returncode == 0, result.stderr
            return
    pytest.fail(f"no documented command writes {folder}")


def _param(doc: str, number: int, command: str):
    # every documented line runs in the default test run, the demo's (about a minute) and the smoke experiment's too
    return pytest.param(command, id=f"{doc}:{number}:{' '.join(shlex.split(command)[1:3])}")


@pytest.mark.parametrize("command", [_param(*c) for c in COMMANDS])
def test_a_documented_command_runs_as_written(command, workdir):
    argv = shlex.split(command)[1:]
    if argv[0] == "report":
        ensure_run_directory(argv[1], workdir)
    result = run_tribute(argv, workdir)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    check_outputs(argv, workdir)


def test_the_documents_hold_the_agreed_commands():
    lines = {c for _, _, c in COMMANDS}
    for agreed in (
        "tribute explain photos/ --model mymodels:make --weights mymodel.pt --methods integrated_gradients,gradcam "
        "--out explain-run",
        'tribute explain cat.png --model demo --methods gradcam,integrated_gradients --target "tabby cat" '
        "--out cat-run",
        "tribute explain digits.pt --model mymodels:make --weights mymodel.pt --methods saliency --target 3 --save npy "
        "--out digits-run",
        "tribute evaluate --model mymodels:make --weights mymodel.pt --data digits.pt --methods "
        "gradient,integrated_gradients,random --metrics aopc_morf,aopc_lerf --out eval-run",
        "tribute report explain-run",
    ):
        assert agreed in lines, agreed


# -- bad input: one line, exit 2, no traceback --------------------------------------------------------------------
@pytest.fixture(scope="module")
def baddir(workdir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    for name in ("mymodels.py", "mymodel.pt", "cat.png", "digits.pt"):
        shutil.copy(workdir / name, folder / name)
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "badmodels.py").write_text("def make():\n    return 3\n\n\nMODEL = 4\n")
    torch.save(torch.nn.Linear(3, 2).state_dict(), folder / "other.pt")
    return folder


USER = ["--model", "mymodels:make", "--weights", "mymodel.pt", "--quiet", "--out", "bad-run"]
BAD = {
    "missing file": (["explain", "nothere.png", *USER], r"no such file or folder: nothere\.png"),
    "unreadable image": (["explain", "broken.png", *USER], r"cannot read image broken\.png"),
    "unknown method": (["explain", "cat.png", *USER, "--methods", "integrated_gradient"],
                       r"unknown method 'integrated_gradient' \(did you mean 'integrated_gradients'"),
    "unknown class": (["explain", "cat.png", *USER, "--target", "kat"],
                      r"--target 'kat' is not a class name of the model; the closest: 'cat'"),
    "class index out of range": (["explain", "cat.png", *USER, "--target", "12"], r"classes 0 to 9"),
    "module not importable": (["explain", "cat.png", "--model", "nomodule:make"],
                              r"cannot import module 'nomodule'.*the working directory .* is on the import path"),
    "not a callable": (["explain", "cat.png", "--model", "badmodels:MODEL"],
                       r"badmodels:MODEL is not callable \(it is a int\)"),
    "not a module": (["explain", "cat.png", "--model", "badmodels:make"], r"returned 'int', not a torch\.nn\.Module"),
    "weights that do not fit": (["explain", "cat.png", "--model", "mymodels:make", "--weights", "other.pt"],
                                r"does not fit the model \(missing from the file: 0\.weight, 0\.bias, 3\.weight …; "
                                r"not in the model: weight, bias"),
    "missing weights": (["explain", "cat.png", "--model", "mymodels:make", "--weights", "no.pt"],
                        r"--weights: no such file: no\.pt"),
    "demo with weights": (["explain", "cat.png", "--model", "demo", "--weights", "mymodel.pt"],
                          r"--weights do\(es\) not apply to --model demo"),
    "evaluate without data": (["evaluate", "--model", "mymodels:make"], r"--data is needed"),
    "evaluate, missing data": (["evaluate", "--model", "mymodels:make", "--data", "none.pt"],
                               r"no such file: none\.pt"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_one_line_exit_2_and_no_traceback(case, baddir):
    argv, pattern = BAD[case]
    result = run_tribute(argv, baddir, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"tribute {argv[0]}: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
