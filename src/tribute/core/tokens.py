"""Token inputs: baselines made of token ids, and one value per token from an embedding-space attribution.

A language model's input is a sequence of integer token ids, which have no gradient; attribution happens
at the embedding layer's output (Sundararajan et al. 2017, §6.3; Captum's ``LayerIntegratedGradients``), and
the reference is itself a sequence of tokens whose embeddings form the baseline activation.  Which token
stands for "no information" is a modelling choice: the pad token (then padded positions, already absent
under the attention mask, get exactly zero at any implementation), the mask token of a masked language
model, or the unknown token.  Special tokens ([CLS], [SEP], BOS, padding) keep their place in the
baseline by default: they carry the sequence's structure, not its content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

TOKEN_NAMES = ("pad", "mask", "unk")


def check_baseline_token(name: str, v: Any) -> Any:
    """Option check: a token id (int >= 0), one of :data:`TOKEN_NAMES` (needs ``tokenizer=``), or None."""
    if v is None or v in TOKEN_NAMES or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return v
    raise ValueError(f"{name} must be a token id (an int >= 0), one of {', '.join(map(repr, TOKEN_NAMES))} "
                     f"(with tokenizer=) or None; got {v!r}")


def token_id(token: int | str, tokenizer: Any) -> int:
    """The id of ``token``: an id as it is, a name (``"pad"``, ``"mask"``, ``"unk"``) through the tokenizer."""
    if isinstance(token, int):
        return token
    if tokenizer is None:
        raise ValueError(f"baseline_token={token!r} names a token: pass tokenizer= (a Hugging Face tokenizer) "
                         "or the token's id")
    found = getattr(tokenizer, f"{token}_token_id", None)
    if found is None:
        raise ValueError(f"the tokenizer has no {token} token ({token}_token_id is None); pass a token id")
    return int(found)


def special_ids(tokenizer: Any, keep: Sequence[int] | None) -> tuple[int, ...]:
    """The ids kept as they are in a token baseline: ``keep`` when given, else the tokenizer's special tokens
    (``all_special_ids``), else none."""
    if keep is not None:
        return tuple(int(k) for k in keep)
    if tokenizer is not None:
        return tuple(int(k) for k in getattr(tokenizer, "all_special_ids", ()))
    return ()


def token_baseline(ids: torch.Tensor, token: int, keep: Sequence[int] = ()) -> torch.Tensor:
    """``ids`` with every token replaced by ``token``, except the ids in ``keep``, which stay where they are."""
    if ids.is_floating_point():
        raise TypeError(f"a token baseline replaces token ids; the inputs are {ids.dtype}")
    base = torch.full_like(ids, token)
    if keep:
        kept = torch.isin(ids, torch.tensor(list(keep), dtype=ids.dtype, device=ids.device))
        base = torch.where(kept, ids, base)
    return base


TOKEN_REDUCTIONS = ("sum", "l2")


def check_token_reduce(name: str, v: Any) -> str | None:
    if v is not None and v not in TOKEN_REDUCTIONS:
        raise ValueError(f"{name} must be None or one of {', '.join(map(repr, TOKEN_REDUCTIONS))}; got {v!r}")
    return v


def per_token(attribution: torch.Tensor, how: str) -> torch.Tensor:
    """(N, T, E) embedding-space attributions → (N, T), one value per token: ``"sum"`` over the embedding
    (keeps completeness: the tokens' values sum to the total) or its ``"l2"`` norm (a magnitude)."""
    if attribution.dim() < 3:
        raise ValueError(f"per-token reduction takes (N, T, E) attributions, got shape {tuple(attribution.shape)}")
    if how == "sum":
        return attribution.sum(-1)
    return attribution.pow(2).sum(-1).sqrt()
