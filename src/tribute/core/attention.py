"""Attention as the engine sees it: fused kernels taken apart into the ops rules are written for.

``F.scaled_dot_product_attention`` (HF BERT and ViT call it by default) is one C++ call: a function mode sees its
inputs and output, never the product QKᵀ, the softmax and the product with V inside, so no family's rules could
reach them.  Under an op handler (:mod:`tribute.core.family_rules`, LRP) the interception mode therefore calls
:func:`attention_by_parts` instead, with itself re-entered, so each part meets its family's rule: a product of two
tensors on the input's path, a softmax.  ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) is Python
around linear layers and that kernel, but it begins by handing itself to the active function mode, so it cannot run
with the mode re-entered (it would hand itself over again): :func:`multi_head_attention_by_parts` writes it out.
The parts compute the kernel's math backend (Vaswani et al. 2017, Eq 1): softmax(QKᵀ·scale + mask) V.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_by_parts(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                       scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` written as its parts: softmax(Q Kᵀ · scale + mask) V.

    A boolean mask keeps the entries where it is True (the others get −∞ before the softmax); a float mask is
    added.  A query row that every key is masked from attends to nothing (zeros), as torch's math backend does.
    Dropout on the attention weights would make the attribution random: a ``dropout_p`` other than 0 (a model
    in train mode) is refused.  ``enable_gqa`` repeats each key/value head for its group of query heads."""
    if dropout_p:
        raise ValueError(f"scaled_dot_product_attention with dropout_p={dropout_p} on the input's path: attention "
                         "dropout makes the attribution random; call model.eval() first")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        group = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(group, dim=-3)
        value = value.repeat_interleave(group, dim=-3)
    return torch.matmul(attention_weights(query, key, attn_mask, is_causal, scale), value)


def attention_weights(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool,
                      scale: float) -> torch.Tensor:
    """softmax(Q Kᵀ · scale + mask) with the masking of :func:`attention_by_parts`."""
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    keep = None
    if is_causal:
        t, s = query.shape[-2], key.shape[-2]
        keep = torch.ones(t, s, dtype=torch.bool, device=query.device).tril()  # top-left, as torch
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = attn_mask if keep is None else keep & attn_mask
        else:
            scores = scores + attn_mask
    if keep is not None:
        scores = scores.masked_fill(~keep, -math.inf)
    weights = torch.softmax(scores, dim=-1)
    if keep is not None:  # rows with every key masked: 0/0 in the softmax, zeros in torch's math backend
        weights = weights.masked_fill(~keep.any(-1, keepdim=True), 0.0)
    return weights


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, E) → (N, heads, L, E / heads)."""
    n, length, e = t.shape
    return t.reshape(n, length, heads, e // heads).permute(0, 2, 1, 3)


def _refuse(**unsupported) -> None:
    used = [k for k, v in unsupported.items() if v is not None and v is not False]
    if used:
        raise ValueError(f"multi_head_attention_forward with {', '.join(used)} on the input's path: tribute takes "
                         "nn.MultiheadAttention apart for its rules and does not support these options")


def multi_head_attention_by_parts(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias,
                                  bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias,
                                  training=True, key_padding_mask=None, need_weights=True, attn_mask=None,
                                  use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None,
                                  v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
                                  is_causal=False):
    """``F.multi_head_attention_forward`` (Vaswani et al. 2017, §3.2.2) as linear layers around
    :func:`attention_weights`: the same arguments, (L, N, E) or unbatched (L, E) inputs, masks that are True (or
    −∞) where attention is *not* allowed.  Extra key/value biases, zero attention and static keys are refused.
    The parts run batch first (the sequences are transposed in and out), as rules that pair each input row with
    its reference row along dimension 0 (DeepLIFT, RevealCancel) need."""
    _refuse(bias_k=bias_k, bias_v=bias_v, add_zero_attn=add_zero_attn, static_k=static_k, static_v=static_v,
            dropout=bool(training and dropout_p))
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (N, L, E)
    if use_separate_proj_weight:
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        weights = in_proj_weight.chunk(3)
    biases = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
    q, k, v = (_heads(F.linear(t, w, b), num_heads) for t, w, b in zip((query, key, value), weights, biases,
                                                                       strict=True))
    n, length, source = q.shape[0], q.shape[2], k.shape[2]
    mask = None  # additive, (N, heads, L, S)
    if attn_mask is not None:
        mask = _additive(attn_mask, q.dtype).reshape(-1, length, source)
        mask = mask.reshape(n, num_heads, length, source) if mask.shape[0] == n * num_heads else mask
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, q.dtype).reshape(n, 1, 1, source)
        mask = padding if mask is None else mask + padding
    causal = is_causal and attn_mask is None
    weights = attention_weights(q, k, mask, causal, 1.0 / math.sqrt(q.shape[-1]))
    out = torch.matmul(weights, v).permute(0, 2, 1, 3).reshape(n, length, -1)
    out = F.linear(out, out_proj_weight, out_proj_bias).transpose(0, 1)
    if need_weights:
        weights = weights.mean(1) if average_attn_weights else weights
    if unbatched:
        out = out.squeeze(1)
        weights = weights.squeeze(0) if need_weights else None
    return out, (weights if need_weights else None)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A mask that is True where attention is not allowed, as −∞ there and 0 elsewhere; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)
    return mask.to(dtype)


#: fused calls the interception mode runs as their parts, re-entered so that every part meets its rule
BY_PARTS = {F.scaled_dot_product_attention: attention_by_parts,
            F.multi_head_attention_forward: multi_head_attention_by_parts}
