"""What training minimises beyond the model's own cross-entropy: location tokens trained towards a
Gaussian over the bins and weighted against the words (:func:`location_smoothed_loss`), the KL
divergence to a starting model where it is right (:func:`distillation_loss`), and the jittered
location tokens the decoder reads (:func:`jitter_locations`). The trainer's ``loc_sigma``,
``loc_weight``, ``distill`` and ``loc_jitter`` settings choose them.
"""

from __future__ import annotations

import torch

from florence2.train.batches import IGNORE_INDEX


def location_smoothed_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    first_loc_id: int,
    num_bins: int,
    sigma: float,
    loc_weight: float = 1.0,
) -> torch.Tensor:
    """Mean token cross-entropy of ``logits`` (B, L, V) against ``labels`` (B, L; -100 ignored) where
    each location label ``first_loc_id + k`` is replaced by a Gaussian over the ``num_bins`` location
    tokens centred on bin k (standard deviation ``sigma`` bins, normalised over the bins; ``sigma`` 0
    keeps the one-hot target). Other tokens keep their one-hot target. Location bins are ordered, and
    one-hot targets treat a box one bin off as wrong as one 500 bins off; the Gaussian gives the near
    miss most of the credit (the README reports what it did for training from scratch).
    ``loc_weight`` scales the location tokens' terms (the mean is still over all tokens): below 1 the
    words of a target (labels, texts) count for more than its coordinates. With ``sigma`` 0 and
    ``loc_weight`` 1 this is plain cross-entropy."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    valid = labels != IGNORE_INDEX
    bins = labels - first_loc_id
    is_loc = valid & (bins >= 0) & (bins < num_bins)
    plain = valid & ~is_loc
    total = -log_probs[plain].gather(-1, labels[plain].unsqueeze(-1)).sum()
    # a batch without location labels selects nothing here and adds 0
    if sigma > 0:
        centres = bins[is_loc].to(log_probs.dtype).unsqueeze(-1)
        grid = torch.arange(num_bins, device=logits.device, dtype=log_probs.dtype)
        target = torch.softmax(-0.5 * ((grid - centres) / sigma) ** 2, dim=-1)
        loc_loss = -(target * log_probs[is_loc][:, first_loc_id : first_loc_id + num_bins]).sum()
    else:
        loc_loss = -log_probs[is_loc].gather(-1, labels[is_loc].unsqueeze(-1)).sum()
    return (total + loc_weight * loc_loss) / valid.sum().clamp(min=1)


DISTILL_BIN_TOLERANCE = 25  # a location target the teacher places within this many bins counts as known


def distillation_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, first_loc_id: int, num_bins: int
) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions, summed over the target positions the
    teacher already gets right and divided by all target tokens (``labels`` != -100), so that it adds
    to the mean cross-entropy with a comparable weight. Right: a word (any non-location token) the
    teacher ranks first, or a location whose most likely bin lies within
    :data:`DISTILL_BIN_TOLERANCE` bins of the target's. Elsewhere (a category the teacher has never
    seen, and the boxes that follow it, where its context is new to it) the teacher would pull
    against what the targets teach, and the cross-entropy alone trains."""
    valid = labels != IGNORE_INDEX
    bins = labels - first_loc_id
    is_loc = valid & (bins >= 0) & (bins < num_bins)
    teacher_log_probs = torch.log_softmax(teacher_logits.float(), dim=-1)
    guess = teacher_log_probs.argmax(-1)
    near = (guess - labels).abs() <= DISTILL_BIN_TOLERANCE
    guess_is_loc = (guess >= first_loc_id) & (guess < first_loc_id + num_bins)
    keep = (is_loc & guess_is_loc & near) | (valid & ~is_loc & (guess == labels))
    student = torch.log_softmax(logits.float()[keep], dim=-1)
    teacher = teacher_log_probs[keep]
    kl = (teacher.exp() * (teacher - student)).sum()
    return kl / valid.sum().clamp(min=1)


def jitter_locations(ids: torch.Tensor, first_loc_id: int, num_bins: int, max_shift: int) -> torch.Tensor:
    """``ids`` with every location token moved by a random whole number of bins in
    ``[-max_shift, max_shift]``, clamped to ``[0, num_bins)``; other tokens unchanged. Draws from
    torch's global generator (the trainer seeds it per micro-step)."""
    bins = ids - first_loc_id
    is_loc = (bins >= 0) & (bins < num_bins)
    shift = torch.randint(-max_shift, max_shift + 1, ids.shape).to(ids.device)
    return torch.where(is_loc, (bins + shift).clamp(0, num_bins - 1) + first_loc_id, ids)
