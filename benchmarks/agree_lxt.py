"""tribute's LRP on a small Hugging Face BERT and ViT against LXT's (issue 13: "agrees with LXT where the rules are
the same").

LXT (Achtibat et al. 2024, "AttnLRP: Attention-Aware Layer-wise Relevance Propagation for Transformers", ICML; the
package ``lxt`` 2.1) computes LRP in the gradient × input form: it patches the model so that its ordinary gradient
is the LRP "modified gradient", and the relevance of any tensor h is h ⊙ ∂S/∂h (Arras et al. 2025).  Its
``lxt.efficient`` pieces, and the tribute rule each corresponds to:

=======================================  ==================================================  ======================
LXT (efficient)                          what it does to the backward pass                   tribute
=======================================  ==================================================  ======================
(nothing: linear layers, ``F.linear``,   the plain gradient; with h ⊙ ∂S/∂h at both ends     ε rule with ε → 0
conv patch embedding, additions)         this is LRP-0 / ε → 0 with the bias in z (the bias  (``lrp`` composite
                                         absorbs its share), and residual additions split    "epsilon", small
                                         R in proportion to the summands                     ``epsilon``; or
                                                                                             ``lrp_epsilon``)
``non_linear_forward`` /                 identity rule (AttnLRP Eq 9): the gradient is       the composites' rule at
``identity_rule_implicit`` on GELU,      f(z) / (z + 1e-10), so R_in = R_out                 nonlinearities: slope
the pooler's tanh                                                                            (f(z) − f(0))/z, the
                                                                                             same where f(0) = 0
``layer_norm_forward`` (nn.LayerNorm)    the standard deviation detached (Ali et al. 2022,   LayerNorm with the
                                         "XAI for Transformers: better explanations through  normalisation held
                                         conservative propagation"): LN is then linear in x  constant (issue 13)
``cp_wrap_attention_forward`` /          CP-LRP: query and key detached, so the softmax      CP-LRP attention (the
``cp_multi_head_attention_forward``      weights are constants and A·V is linear in V        default for LRP)
``divide_gradient`` (AttnLRP, the        the uniform rule (AttnLRP Eq 7): a bilinear product AttnLRP's uniform split
shipped BERT patch)                      splits R in halves between its two operands; the    and softmax rule (an
                                         softmax gets the gradient × input rule              option in tribute)
=======================================  ==================================================  ======================

LXT ships CP-LRP for torchvision's ViT and for Hugging Face models that call ``eager_attention_forward`` /
``ALL_ATTENTION_FUNCTIONS`` (``patch_cp_attention``; HF ViT does), and AttnLRP for BERT (a patched copy of
``modeling_bert``).  HF BERT 4.52 computes its attention inline, so for CP-LRP on BERT this script detaches the
query and key projections' outputs with forward hooks, which is what LXT's CP wrapper does to the attention
function's ``query`` and ``key`` arguments.  LXT's own AttnLRP on BERT is printed too, for reference.

The models: small random configs (nothing downloaded), float64, eval mode, every bias and normalisation affine
randomised (HF zeroes biases and makes LayerNorm the identity at initialisation, which would hide differences in
how biases absorb relevance).  Relevance is compared at the input embeddings for BERT (``inputs_embeds``: the
position and token-type embeddings are constant leaves whose relevance both sides leave out) and at the pixels for
ViT (the patch embedding is a convolution, the class token and position embeddings constant leaves).  It prints,
per model and tribute method: max |R_tribute − R_LXT|, that over max |R_LXT|, the correlation, and Σ R / S for
both; gradient × input beside, so a tribute result equal to it is visible.  Where tribute refuses the model
(UncoveredModelError: no rule yet for LayerNorm / attention), it prints the refusal.

Run in the LXT venv (lxt 2.1 needs transformers 4.x; torchvision is allowed there, never in the test env)::

    python -m venv /work/venvs/lxt
    /work/venvs/lxt/bin/pip install lxt==2.1 transformers==4.52.4      # torch 2.14.1 here
    PYTHONPATH=src /work/venvs/lxt/bin/python benchmarks/agree_lxt.py

tribute runs first on the unpatched models; LXT's patches replace ``nn.LayerNorm.forward`` and the attention
functions process-wide, so they are applied after, to fresh copies with the same weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import transformers  # noqa: E402
from common import tribute_source  # noqa: E402
from zoo_support import Logits, OnEmbeddings, realistic_state  # noqa: E402

import tribute  # noqa: E402
from tribute.core import UncoveredModelError  # noqa: E402

DT = torch.float64
N, TARGET, SEQ, VOCAB = 2, 1, 10, 40

# tribute's side: (label, method, options).  ε small, as LXT's linear layers have none.
TRIBUTE = [("lrp[epsilon] ε=1e-9", "lrp", {"composite": "epsilon", "epsilon": 1e-9}),
           ("lrp_epsilon (Ancona)", "lrp_epsilon", {})]


# --------------------------------------------------------------------------------------------------
# models

def _bert():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3,
                                     attn_implementation="eager")
    return transformers.BertForSequenceClassification(config)


def _vit():
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=3,
                                    attn_implementation="eager")
    return transformers.ViTForImageClassification(config)


def _cases(bias_free: bool):
    """(name, model as a function of the compared input, that input)."""
    torch.manual_seed(0)
    bert = realistic_state(_bert(), bias_free=bias_free)
    ids = torch.randint(5, VOCAB, (N, SEQ), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        embeddings = bert.bert.embeddings.word_embeddings(ids)
    bert_fn = OnEmbeddings(bert, torch.ones(N, SEQ, dtype=torch.long))
    torch.manual_seed(0)
    vit = realistic_state(_vit(), bias_free=bias_free)
    pixels = torch.randn(N, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=DT)
    cases = [("bert", bert_fn, embeddings), ("vit", Logits(vit), pixels)]
    try:  # torchvision's ViT, for which LXT ships its CP-LRP patch map (lxt.efficient.models.vit_torch)
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError:
        return cases
    torch.manual_seed(0)
    tv_vit = realistic_state(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                         mlp_dim=32, num_classes=3), bias_free=bias_free)
    return [*cases, ("torchvision vit", tv_vit, pixels)]


# --------------------------------------------------------------------------------------------------
# the two sides

def _constant_leaves(fn: nn.Module) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """What adds constants to the input's path: BERT's position and token-type embedding modules (their outputs),
    ViT's class token and position embeddings (parameters; torchvision's class_token and pos_embedding)."""
    modules, params = [], []
    for name, module in fn.named_modules():
        if name.endswith(("position_embeddings", "token_type_embeddings")) and isinstance(module, nn.Embedding):
            modules.append(module)
        for pname, p in module.named_parameters(recurse=False):
            if pname in ("cls_token", "position_embeddings", "class_token", "pos_embedding"):
                params.append(p)
    return modules, params


def gradient_x_input(fn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(h ⊙ ∂S/∂h at the input, S, the batch's total h ⊙ ∂S/∂h at the constant leaves): under LXT's patches
    this is its LRP relevance."""
    modules, params = _constant_leaves(fn)
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, a, out: seen.append(out)) for m in modules]
    leaf = x.detach().clone().requires_grad_(True)
    try:
        score = fn(leaf)[:, TARGET]
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(score.sum(), [leaf, *seen, *params], allow_unused=True)
    at_leaves = sum(float((t * g).sum()) for t, g in zip([*seen, *params], grads[1:], strict=True) if g is not None)
    return (leaf * grads[0]).detach(), score.detach(), at_leaves


def _detach_output(module, args, output):
    return output.detach()


def lxt_cp(fn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LXT's CP-LRP (patches applied process-wide; call after every tribute run)."""
    from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_cp_attention, patch_method

    patch_method(layer_norm_forward, nn.LayerNorm)
    for act in (transformers.activations.GELUActivation, nn.Tanh):
        patch_method(non_linear_forward, act, keep_original=True)
    import transformers.models.vit.modeling_vit as modeling_vit
    patch_cp_attention(modeling_vit)
    try:  # torchvision's ViT: LXT's shipped map (GELU identity, LayerNorm, MultiheadAttention with q, k detached)
        import torchvision.models.vision_transformer as vision_transformer
        from lxt.efficient import monkey_patch

        monkey_patch(vision_transformer)
    except ImportError:
        pass
    handles = []
    for module in fn.modules():  # BERT computes attention inline: detach q and k as LXT's wrapper does
        if isinstance(module, transformers.models.bert.modeling_bert.BertSelfAttention):
            handles += [module.query.register_forward_hook(_detach_output),
                        module.key.register_forward_hook(_detach_output)]
    try:
        return gradient_x_input(fn, x)
    finally:
        for h in handles:
            h.remove()


def lxt_attnlrp_bert(bert_fn: OnEmbeddings, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LXT's shipped AttnLRP patch of ``modeling_bert`` (uniform rule at QKᵀ and AV), on a same-weights copy."""
    import transformers.models.bert.modeling_bert as modeling_bert
    from lxt.efficient import monkey_patch

    monkey_patch(modeling_bert)
    fresh = modeling_bert.BertForSequenceClassification(bert_fn.model.config).to(DT)
    fresh.load_state_dict(bert_fn.model.state_dict())
    return gradient_x_input(OnEmbeddings(fresh.eval(), bert_fn.mask), x)


def tribute_side(fn: nn.Module, x: torch.Tensor):
    """{label: relevance or the refusal's text}."""
    out = {}
    for label, method, options in TRIBUTE:
        try:
            out[label] = tribute.explain(fn, x, method, target=TARGET, **options).detach()
        except UncoveredModelError as e:
            text = str(e)
            ops = text.split("plain gradient: ")[-1].split(". Register")[0] if "plain gradient: " in text else text
            out[label] = f"refused: {ops[:100]}"
        except Exception as e:  # noqa: BLE001 (reported, not hidden)
            out[label] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    return out


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> str:
    a, b = ours.flatten().double(), theirs.flatten().double()
    diff = (a - b).abs().max().item()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    return f"max|Δ| {diff:.2e}  rel {diff / b.abs().max().item():.2e}  corr {corr:.6f}"


def conservation(r: torch.Tensor, score: torch.Tensor, at_leaves: float | None = None) -> str:
    ratio = r.flatten(1).sum(1) / score
    text = f"ΣR/S {ratio.min().item():.4g}..{ratio.max().item():.4g}"
    if at_leaves is not None:  # the batch's relevance at the inputs and the constant leaves over its total score
        text += f", (ΣR+leaves)/ΣS {(r.sum().item() + at_leaves) / score.sum().item():.6f}"
    return text


STATES = ("realistic", "bias-free")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    warnings.filterwarnings("ignore")
    import lxt

    print(f"tribute vs LXT: python {platform.python_version()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, lxt {getattr(lxt, '__version__', '2.1')}, tribute {tribute.__version__} "
          f"{tribute_source()}; float64, {N} samples, target {TARGET}")
    cases = {state: _cases(state == "bias-free") for state in STATES}
    # 1. every unpatched computation first: plain gradient × input, tribute
    plain = {(st, name): gradient_x_input(fn, x) for st in STATES for name, fn, x in cases[st]}
    ours = {(st, name): tribute_side(fn, x) for st in STATES for name, fn, x in cases[st]}
    # 2. LXT, patched process-wide from here on
    theirs = {(st, name): lxt_cp(fn, x) for st in STATES for name, fn, x in cases[st]}
    attn = {st: lxt_attnlrp_bert(cases[st][0][1], cases[st][0][2]) for st in STATES}
    for st in STATES:
        for name, _, x in cases[st]:
            r_lxt, score, leaves = theirs[st, name]
            print(f"\n## {name}, {st}  (input {tuple(x.shape)}, S = {', '.join(f'{v:.4g}' for v in score.tolist())})")
            print(f"  LXT CP-LRP                     {conservation(r_lxt, score, leaves)}")
            r_plain = plain[st, name][0]
            print(f"  gradient × input               {conservation(r_plain, score, plain[st, name][2])}")
            print(f"  {'':<31}vs LXT CP-LRP: {compare(r_plain, r_lxt)}")
            if name == "bert":
                print(f"  LXT AttnLRP (for reference)    {conservation(*attn[st])}")
                print(f"  {'':<31}vs LXT CP-LRP: {compare(attn[st][0], r_lxt)}")
            for label, r in ours[st, name].items():
                if isinstance(r, str):
                    print(f"  tribute {label:<22} {r}")
                else:
                    print(f"  tribute {label:<22} {conservation(r, score)}")
                    print(f"  {'':<31}vs LXT CP-LRP: {compare(r, r_lxt)}")


if __name__ == "__main__":
    main()
