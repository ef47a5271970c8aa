"""The attribution store: what it holds equals the method called directly, it resumes after SIGKILL with the
contents of an uninterrupted run, it finds damaged shards, it refuses another computation's directory, and two
processes write the store one process writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from store_script import CHUNK, OPTIONS, SAMPLES, build, run

import tribute
import tribute.store as ts
from tribute.store.shards import decode

SCRIPT = Path(__file__).with_name("store_script.py")
SRC = Path(__file__).resolve().parents[1] / "src"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _manifest(path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


def _shard_digests(path) -> list[str]:
    return [e["sha256"] for e in _manifest(path)["shards"]]


# -- round trip ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_the_store_holds_the_methods_attributions_for_the_predicted_class(tmp_path, method):
    model, x, labels = build()
    store = run(str(tmp_path / "s"), method)
    direct = tribute.explain(model, x, method, batch_size=8, **OPTIONS[method])  # seeded: per-sample streams
    predicted = model(x).argmax(1)
    assert len(store) == SAMPLES and store.shard_count == -(-SAMPLES // CHUNK)
    torch.testing.assert_close(store.attributions(), direct, rtol=1e-5, atol=1e-7)
    assert torch.equal(store.targets(), predicted)
    assert store.shape == x.shape[1:] and store.dtype == torch.float32
    for shard in store.shards():
        assert torch.equal(shard.indices, torch.arange(shard.start, shard.stop))


@pytest.mark.parametrize("method, options", [
    ("gradcam", {}),                                                  # a map per image, (1, H, W)
    ("layer_integrated_gradients", {"layer": "conv", "steps": 4}),    # the layer's shape
    ("expected_gradients", {"samples": 4, "seed": 2}),                # references and α drawn per sample
    ("feature_ablation", {}),
])
def test_any_method_and_result_shape_round_trips(tmp_path, method, options):
    model, x, _ = build()
    if method == "expected_gradients":
        options = {**options, "references": torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))}
    store = ts.compute_store(tmp_path / "s", model, x, method, chunk_size=7, **options)
    direct = tribute.explain(model, x, method, **options)
    assert store.shape == direct.shape[1:]
    torch.testing.assert_close(store.attributions(), direct, rtol=1e-5, atol=1e-7)


def test_targets_int_tensor_and_label_are_the_classes_explained(tmp_path):
    model, x, labels = build()
    explainer = tribute.IntegratedGradients(model, steps=4)
    for k, target in enumerate([2, labels.flip(0), "label"]):
        store = ts.compute_store(tmp_path / f"s{k}", model, (x, labels), "integrated_gradients", target,
                                 chunk_size=7, steps=4)
        classes = {0: torch.full((SAMPLES,), 2), 1: labels.flip(0), 2: labels}[k]
        assert torch.equal(store.targets(), classes)
        torch.testing.assert_close(store.attributions(), explainer.attribute(x, classes), rtol=1e-5, atol=1e-7)


def test_indexing_ranges_and_iteration_agree(tmp_path):
    store = run(str(tmp_path / "s"))
    every = store.attributions()
    assert torch.equal(torch.stack([store[i] for i in range(len(store))]), every)
    assert torch.equal(store[-1], every[-1])
    assert torch.equal(store[4:17], every[4:17]) and torch.equal(store[::4], every[::4])
    assert torch.equal(store.attributions(2, 11), every[2:11])  # across shards, partial at both ends
    assert torch.equal(store.targets(5, 6), store.targets()[5:6])
    assert store.attributions(6, 6).shape == (0, *store.shape)
    assert torch.equal(torch.cat([s.attributions for s in store.shards()]), every)
    with pytest.raises(IndexError, match="out of range"):
        store[SAMPLES]
    with pytest.raises(IndexError, match="out of bounds"):
        store.attributions(3, SAMPLES + 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_the_stored_dtype_is_kept_as_written(tmp_path, dtype):
    model, x, _ = build()
    computed = tribute.IntegratedGradients(model, steps=4).attribute(x, model(x).argmax(1))
    store = ts.compute_store(tmp_path / "s", model, x, "integrated_gradients", chunk_size=8, dtype=dtype, steps=4)
    again = ts.open_store(tmp_path / "s")
    assert again.dtype == dtype and again.attributions().dtype == dtype and again[3].dtype == dtype
    torch.testing.assert_close(again.attributions(), computed.to(dtype), rtol=1e-5, atol=1e-7)
    assert _manifest(tmp_path / "s")["attributions"]["dtype"] == str(dtype) and store.dtype == dtype


def test_a_float64_model_gives_float64_attributions_equal_to_the_method(tmp_path):
    model, x, _ = build()
    model, x = model.double(), x.double()
    store = ts.compute_store(tmp_path / "s", model, x, "gradient", chunk_size=4)
    direct = tribute.explain(model, x, "gradient")
    assert store.dtype == torch.float64
    torch.testing.assert_close(store.attributions(), direct, rtol=1e-12, atol=1e-14)


class _Images(torch.utils.data.Dataset):
    def __init__(self, x, labels):
        self.x, self.labels = x, labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i])


def test_a_dataset_and_tensors_give_the_same_store(tmp_path):
    model, x, labels = build()
    kw = {"chunk_size": 4, "steps": 4}
    ts.compute_store(tmp_path / "tensors", model, (x, labels), "integrated_gradients", "label", **kw)
    ts.compute_store(tmp_path / "dataset", model, _Images(x, labels), "integrated_gradients", "label", **kw)
    a, b = _manifest(tmp_path / "tensors"), _manifest(tmp_path / "dataset")
    assert a["data"] == b["data"] and a["identity_sha256"] == b["identity_sha256"]
    assert _shard_digests(tmp_path / "tensors") == _shard_digests(tmp_path / "dataset")
    # a list of samples without labels is the same data as the tensor of those samples
    ts.compute_store(tmp_path / "tensor", model, x, "integrated_gradients", **kw)
    ts.compute_store(tmp_path / "list", model, list(x), "integrated_gradients", **kw)
    assert _shard_digests(tmp_path / "tensor") == _shard_digests(tmp_path / "list")
    # and a Dataset resumes a store written from tensors: nothing is computed again
    ts.compute_store(tmp_path / "tensors", model, _Images(x, labels), "integrated_gradients", "label", **kw)
    last = ts.open_store(tmp_path / "tensors").run_log["runs"][-1]
    assert {s["status"] for s in last["shards"]} == {"kept"}


def test_a_method_instance_and_its_name_give_the_same_store(tmp_path):
    model, x, _ = build()
    ts.compute_store(tmp_path / "name", model, x, "smoothgrad", chunk_size=8, samples=3, seed=1)
    explainer = tribute.SmoothGrad(model, samples=3, seed=1)
    ts.compute_store(tmp_path / "instance", None, x, explainer, chunk_size=8)
    assert _manifest(tmp_path / "name")["identity_sha256"] == _manifest(tmp_path / "instance")["identity_sha256"]
    assert _shard_digests(tmp_path / "name") == _shard_digests(tmp_path / "instance")


def test_the_manifest_records_the_computation(tmp_path):
    model, x, labels = build()
    run(str(tmp_path / "s"))
    m = _manifest(tmp_path / "s")
    assert m["format_version"] == ts.FORMAT_VERSION and m["complete"] is True
    assert m["versions"] == {"tribute": tribute.__version__, "torch": torch.__version__}
    assert m["method"] == {"name": "integrated_gradients", "options": {"steps": 4, "seed": 0}}
    assert m["model"]["class"].endswith("SmallCNN") and len(m["model"]["state_dict_sha256"]) == 64
    assert m["data"]["count"] == SAMPLES and m["data"]["sample_shape"] == [3, 8, 8] and m["data"]["labels"]
    assert m["settings"] == {"chunk_size": CHUNK, "batch_size": 8, "dtype": None, "target": {"kind": "predicted"}}
    assert [(e["start"], e["stop"]) for e in m["shards"]] == [(i, min(i + CHUNK, SAMPLES))
                                                            for i in range(0, SAMPLES, CHUNK)]
    for e in m["shards"]:
        data = (tmp_path / "s" / e["file"]).read_bytes()
        assert __import__("hashlib").sha256(data).hexdigest() == e["sha256"]
    log = ts.open_store(tmp_path / "s").run_log["runs"]
    assert len(log) == 1 and log[0]["world_size"] == 1 and log[0]["method"]["options"]["seed"] == 0
    assert {s["status"] for s in log[0]["shards"]} == {"computed"} and log[0]["versions"]["python"]
    assert not [p for p in (tmp_path / "s").rglob("*.tmp")]


def test_progress_reports_over_shards(tmp_path, capsys):
    run(str(tmp_path / "s"), progress="storing")
    err = capsys.readouterr().err
    assert "storing" in err and f"{SAMPLES // CHUNK}/{SAMPLES // CHUNK}" in err


# -- corruption ------------------------------------------------------------------------------------------------
def _flip(file: Path, offset_from_end: int = 5) -> None:
    data = bytearray(file.read_bytes())
    data[-offset_from_end] ^= 0x10
    file.write_bytes(bytes(data))


def test_a_flipped_byte_is_found_on_read_and_the_shard_recomputed_on_resume(tmp_path):
    path = tmp_path / "s"
    run(str(path))
    digests = _shard_digests(path)
    target = path / "shards" / "shard-00004.safetensors"
    _flip(target)
    store = ts.open_store(path)
    store[0]  # an intact shard reads
    with pytest.raises(ts.CorruptShardError, match="shard-00004"):
        store[4 * CHUNK + 1]
    with pytest.raises(ts.CorruptShardError, match="shard-00004"):
        store.verify()
    with pytest.warns(UserWarning, match="shard-00004.*damaged"):
        run(str(path))
    assert _shard_digests(path) == digests
    shards = ts.open_store(path).run_log["runs"][-1]["shards"]
    assert [s["shard"] for s in shards if s["status"] != "kept"] == [4]
    assert shards[4]["status"] == "recomputed" and "damaged" in shards[4]["reason"]


def test_a_damaged_header_or_a_truncated_shard_is_refused(tmp_path):
    path = tmp_path / "s"
    run(str(path))
    header, truncated = path / "shards" / "shard-00001.safetensors", path / "shards" / "shard-00002.safetensors"
    data = bytearray(header.read_bytes())
    data[12] ^= 0x01  # inside the JSON header
    header.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-7])
    store = ts.open_store(path)
    for i in (1, 2):
        with pytest.raises(ts.CorruptShardError, match=f"shard-0000{i}"):
            store.shard(i)
        with pytest.raises(ts.CorruptShardError, match="damaged|cannot be read|header"):
            decode((path / "shards" / f"shard-0000{i}.safetensors").read_bytes(), "x")


def test_a_shard_of_another_run_is_not_taken(tmp_path):
    run(str(tmp_path / "a"))
    run(str(tmp_path / "b"), "smoothgrad")
    foreign = (tmp_path / "b" / "shards" / "shard-00000.safetensors").read_bytes()
    with pytest.raises(ts.CorruptShardError, match="another run"):
        decode(foreign, "x", run=_manifest(tmp_path / "a")["identity_sha256"])


# -- another computation ---------------------------------------------------------------------------------------
def _changed(tmp_path, what):
    """compute_store arguments for the base run and for the run differing in ``what``."""
    model, x, labels = build()
    base = dict(model=model, data=x, method="integrated_gradients", target=None, chunk_size=6, steps=4)
    other = dict(base)
    if what == "model":
        other["model"], _, _ = build()
        with torch.no_grad():
            other["model"].fc.bias[0] += 1e-3
    elif what == "data":
        other["data"] = x.clone()
        other["data"][SAMPLES - 1, 0, 0, 0] += 1e-3  # in the last shard: all of the data is digested
    elif what == "method":
        other["method"] = "gradient"
        del other["steps"]
    elif what == "options":
        other["steps"] = 5
    elif what == "seed":
        other["seed"] = 1
    else:
        other[what] = {"target": 1, "chunk_size": 5, "batch_size": 4, "dtype": torch.float16}[what]
    return base, other


def _store(path, args):
    args = dict(args)
    return ts.compute_store(path, args.pop("model"), args.pop("data"), args.pop("method"), args.pop("target"), **args)


@pytest.mark.parametrize("what, field", [("model", "model.state_dict_sha256"), ("data", "data.sha256"),
                                         ("method", "method.name"), ("options", "method.options.steps"),
                                         ("seed", "method.options.seed"), ("target", "settings.target"),
                                         ("chunk_size", "settings.chunk_size"), ("batch_size", "settings.batch_size"),
                                         ("dtype", "settings.dtype")])
def test_a_store_of_another_computation_is_refused_naming_the_difference(tmp_path, what, field):
    base, other = _changed(tmp_path, what)
    path = tmp_path / "s"
    _store(path, base)
    before = _shard_digests(path)
    with pytest.raises(ts.StoreMismatchError, match=rf"{field}.*overwrite=True") as e:
        _store(path, other)
    assert "new directory" in str(e.value)
    assert _shard_digests(path) == before  # nothing changed
    _store(path, {**other, "overwrite": True})
    fresh = tmp_path / "fresh"
    _store(fresh, other)
    assert _shard_digests(path) == _shard_digests(fresh)  # overwrite=True is a fresh run
    assert len(ts.open_store(path).run_log["runs"]) == 1


def test_another_format_version_or_tribute_version_is_refused(tmp_path):
    path = tmp_path / "s"
    run(str(path))
    m = _manifest(path)
    (path / "manifest.json").write_text(json.dumps({**m, "format_version": ts.FORMAT_VERSION + 1}))
    with pytest.raises(ts.StoreMismatchError, match="format version 2.*version 1"):
        ts.open_store(path)
    with pytest.raises(ts.StoreMismatchError, match="format version 2"):
        run(str(path))
    (path / "manifest.json").write_text(json.dumps({**m, "versions": {**m["versions"], "tribute": "0.0.1"}}))
    ts.open_store(path).verify()  # readable: the format is the same
    with pytest.raises(ts.StoreMismatchError, match="versions.tribute is \"0.0.1\" in the store"):
        run(str(path))
    run(str(path), overwrite=True)
    assert _manifest(path) == m  # computed afresh: the same shards, byte for byte
    assert [s["status"] for s in ts.open_store(path).run_log["runs"][-1]["shards"]] == ["computed"] * (SAMPLES // CHUNK)


def test_directories_that_are_not_stores_are_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ts.StoreError, match="not a store's"):
        run(str(tmp_path), overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ts.StoreError, match="no manifest.json"):
        ts.open_store(tmp_path)


# -- bad input -------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_the_way_out(tmp_path):
    model, x, labels = build()
    p = tmp_path / "s"
    cases = [
        (dict(target=lambda out: out[:, 0]), ValueError, "callable.*1-D tensor"),
        (dict(target="label"), ValueError, "needs a data set with labels"),
        (dict(chunk_size=0), ValueError, "chunk_size must be an integer >= 1"),
        (dict(dtype=torch.int32), ValueError, "dtype must be None"),
        (dict(method="gradient", seed=3), TypeError, "draws no random numbers"),
        (dict(forward_args=(torch.zeros(SAMPLES),)), ValueError, "per-sample forward arguments"),
        (dict(data=(x, labels[:-1])), ValueError, "one entry per sample"),
        (dict(data=x[:0]), ValueError, "no samples"),
        (dict(data=iter(x)), TypeError, "DataLoader or a generator"),
        (dict(data=[x[0], x[1, :2]]), ValueError, "sample 1 of the data set has shape"),
        (dict(method=tribute.Gradient(model), steps=3), TypeError, "give them to its constructor"),
        (dict(method=tribute.Gradient(build()[0])), ValueError, "not the model of the given method"),
        (dict(method="no_such_method"), ValueError, "unknown method"),
    ]
    for change, error, message in cases:
        args = {"model": model, "data": x, "method": "integrated_gradients", "target": None, **change}
        with pytest.raises(error, match=message):
            _store(p, args)
    assert not p.exists() or not any(p.iterdir())


def test_an_interrupted_store_cannot_be_read_until_finished(tmp_path):
    path = tmp_path / "s"
    run(str(path))
    m = _manifest(path)
    m["complete"], m["shards"][3]["sha256"] = False, None
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ts.StoreError, match="1 of 10 shards missing.*compute_store again"):
        ts.open_store(path)
    run(str(path))
    assert ts.open_store(path).run_log["runs"][-1]["shards"][3]["status"] == "kept"  # it checked itself


# -- SIGKILL and resume ----------------------------------------------------------------------------------------
def _valid_shards(path: Path) -> dict[int, int]:
    """Shard number → inode of every shard file that decodes as this run's shard."""
    run_id, found = _manifest(path)["identity_sha256"], {}
    for f in sorted((path / "shards").glob("shard-*.safetensors")):
        i = int(f.stem.split("-")[1])
        decode(f.read_bytes(), f.name, run=run_id, index=i)  # raises if damaged: no corrupt shard
        found[i] = f.stat().st_ino
    return found


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_store(tmp_path):
    path, reference = tmp_path / "killed", tmp_path / "reference"
    cmd = [sys.executable, str(SCRIPT), str(path), "--slow"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((path / "shards").glob("shard-*.safetensors"))) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "the run wrote no shards"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not _manifest(path)["complete"]
    before = _valid_shards(path)
    assert 3 <= len(before) < SAMPLES // CHUNK
    subprocess.run(cmd, env=_env(), check=True, capture_output=True)
    run(str(reference))  # uninterrupted, in this process
    assert _shard_digests(path) == _shard_digests(reference)
    store = ts.open_store(path)
    store.verify()
    assert torch.equal(store.attributions(), ts.open_store(reference).attributions())
    shards = store.run_log["runs"][-1]["shards"]
    assert {s["shard"] for s in shards if s["status"] == "kept"} == set(before)
    assert {s["shard"] for s in shards if s["status"] == "computed"} == set(range(SAMPLES // CHUNK)) - set(before)
    after = _valid_shards(path)
    assert all(after[i] == inode for i, inode in before.items())  # kept files were not rewritten
    assert not list(path.rglob("*.tmp"))


# -- two processes ---------------------------------------------------------------------------------------------
def test_two_processes_under_torchrun_write_the_store_of_one(tmp_path):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch has no torch.distributed with the gloo backend: torchrun cannot run the store")
    path, single = tmp_path / "two", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
           str(path), "--distributed", "--method", "smoothgrad"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    run(str(single), "smoothgrad")
    assert _shard_digests(path) == _shard_digests(single)
    m2, m1 = _manifest(path), _manifest(single)
    assert m2 == m1
    log = ts.open_store(path).run_log["runs"][-1]
    assert log["world_size"] == 2 and [p["rank"] for p in log["processes"]] == [0, 1]
    assert [s["rank"] for s in log["shards"]] == [i % 2 for i in range(SAMPLES // CHUNK)]


# -- what identifies a computation -----------------------------------------------------------------------------
def test_options_are_summarised_so_that_any_change_shows():
    from tribute.store.identity import summarise

    def scale(k):
        return lambda x: x * k

    assert summarise(scale(2)) != summarise(scale(3))  # the closure's value
    assert summarise(lambda x: x * 2) != summarise(lambda x: x + 2)  # the code
    assert summarise(scale(2)) == summarise(scale(2))
    assert summarise(tribute.Normalize([0.5], [0.2])) != summarise(tribute.Normalize([0.5], [0.3]))
    t = torch.arange(4.0)
    assert summarise(t)["shape"] == [4] and summarise(t) != summarise(t + 1) and summarise(t) == summarise(t.clone())
    assert summarise((1, "a", None, 2.5, float("inf"))) == [1, "a", None, 2.5, "inf"]
    with pytest.raises(ts.UnrecordableOptionError, match="options.*cannot be recorded"):
        summarise(iter([]), "options")


def test_an_input_transform_is_part_of_the_identity(tmp_path):
    model, x, _ = build()
    ts.compute_store(tmp_path, model, x, "gradient", chunk_size=10, input_transform=tribute.Normalize([0.5] * 3,
                                                                                                     [0.2] * 3))
    with pytest.raises(ts.StoreMismatchError, match="method.options.input_transform"):
        ts.compute_store(tmp_path, model, x, "gradient", chunk_size=10,
                         input_transform=tribute.Normalize([0.5] * 3, [0.25] * 3))
