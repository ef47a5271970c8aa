"""DeepLIFT's cost beside one forward + backward pass, and its summation-to-delta gap, per model.

DeepLIFT runs input and reference as one batch of 2N rows, with rules at every nonlinearity and (since issue 13)
an op handler at every op on the path: exact rules at products, quotients, softmax and the normalisations.  This
script times it on the CIFAR ResNet-18 (benchmarks/models.py), where the handler meets only linear ops, and, when
``transformers`` is installed, on the test zoo's tiny Hugging Face models (tests/test_zoo.py, tests/conftest.py),
in float32, one thread, CPU time (``time.process_time``, less disturbed by other work on the machine than wall
time), the minimum over repeats.  Columns: DeepLIFT ms, forward + backward of the N rows ms, their ratio, and
max_i |Σφ_i − ΔS_i| / max_i |ΔS_i| (relative to the batch's largest difference: a sample whose
scores nearly agree, ΔS ~ 1e-5, would show float32's rounding as a large relative gap).

``--ab`` first times the op handler's own cost on the ResNet-18, in one process, alternating: DeepLIFT with
the family's op rules registered and with them taken out (elementwise rules only: no handler).

    python benchmarks/bench_deeplift.py [--repeats 9] [--batch 8] [--ab]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from models import resnet18_cifar  # noqa: E402

import tribute  # noqa: E402
from tribute.core import register_rule, rule_table, unregister_rule  # noqa: E402
from tribute.core.rule_registry import RuleKind  # noqa: E402


def cpu_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return 1e3 * best


def measure(name, model, x, repeats, forward_kwargs=None, logits=lambda out: out):
    kw = forward_kwargs or {}
    explainer = tribute.DeepLift(model)

    def deeplift():
        return explainer.attribute(x, target=1, forward_kwargs=kw or None)

    def plain():
        leaf = x.clone().requires_grad_()
        logits(model(leaf, **kw))[:, 1].sum().backward()

    a, b = cpu_ms(deeplift, repeats), cpu_ms(plain, repeats)
    with torch.no_grad():
        delta = (logits(model(x, **kw)) - logits(model(torch.zeros_like(x), **kw)))[:, 1].double()
    gap = ((deeplift().flatten(1).sum(1).double() - delta).abs().max() / delta.abs().max()).item()
    print(f"{name:14s} {a:9.1f} {b:9.1f} {a / b:6.2f}   {gap:.1e}")


def handler_cost(model, x, rounds: int = 6) -> None:
    ops = {op: r for op, r in rule_table("deeplift").items() if r.kind is not RuleKind.ELEMENTWISE}
    times: dict[str, list[float]] = {"with the op handler": [], "elementwise rules only": []}

    def run():
        return cpu_ms(lambda: tribute.DeepLift(model).attribute(x, target=1), 3)

    for _ in range(rounds):
        times["with the op handler"].append(run())
        for op in ops:
            unregister_rule("deeplift", op)
        try:
            times["elementwise rules only"].append(run())
        finally:
            for op, rule in ops.items():
                register_rule("deeplift", op, rule)
    for k, v in times.items():
        v = sorted(v)
        print(f"resnet18 cifar, {k:24s} min {v[0]:7.1f} ms, median of {rounds} rounds {v[len(v) // 2]:7.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ab", action="store_true", help="time the op handler's own cost first")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if args.ab:
        handler_cost(resnet18_cifar(), torch.randn(args.batch, 3, 32, 32))
    print(f"{'model':14s} {'deeplift':>9s} {'fwd+bwd':>9s} {'ratio':>6s}   gap (float32, batch {args.batch})")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    measure("resnet18 cifar", resnet18_cifar(), x, args.repeats)
    try:
        import test_zoo
        from conftest import OnEmbeddings, text_batch, text_model
    except Exception as e:  # noqa: BLE001 - transformers absent: the CNN row alone
        print(f"(no zoo: {type(e).__name__}: {e})")
        return
    for name in ("convnext", "efficientnet", "vit", "swin"):
        model = copy.deepcopy(test_zoo._model(name)).float()
        measure(name, model, x, args.repeats, logits=lambda out: out.logits)
    ids, mask = text_batch(args.batch, 16)
    for arch in ("bert", "gpt2"):
        model = OnEmbeddings(text_model(arch)).float().eval()
        measure(arch, model, model.embed(ids), args.repeats, forward_kwargs={"attention_mask": mask})


if __name__ == "__main__":
    main()
