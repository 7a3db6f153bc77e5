"""Tracks: the boxes of a video's sampled frames linked into objects that last from frame to frame.

Labeling a video labels each sampled frame on its own, so the boxes of one frame say nothing of the
boxes of the next. :func:`link_tracks` gives every box a track id (an IoU tracker): a box continues
the live track of the same label whose last box it overlaps most, at IoU ``iou`` or more; a track
that finds no box goes on through up to ``max_gap`` sampled frames in a row (an occlusion, a missed
detection) and ends after that; a box that continues no track starts a new one. Matching is greedy,
the highest IoU first, ties broken by track and then box order, so the same boxes always give the
same tracks.

With ``by_label=False`` a box may continue a track of any label: a detector that names one object
differently from frame to frame (a car, then a truck) then still gives one track, whose label the
caller can take by vote.

Only overlap links boxes, so the frames must be sampled densely enough for an object to overlap
itself from one sample to the next (a car crossing the picture in two seconds does not, at one
frame a second): label videos for tracking with ``--video-fps`` high enough, or lower ``iou``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from florence2.errors import Florence2Error
from florence2.scoring import box_iou

DEFAULT_IOU = 0.3
DEFAULT_GAP = 2

Box = Sequence[float]


@dataclass
class _Track:
    id: int
    label: str
    box: Box
    missed: int = 0


def check_tracking(iou: float, max_gap: int) -> None:
    """Raise :class:`~florence2.errors.Florence2Error` unless ``0 < iou <= 1`` and ``max_gap`` is a
    whole number >= 0."""
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not (0 < iou <= 1 and math.isfinite(iou)):
        raise Florence2Error(f"the tracking IoU must be in (0, 1], got {iou!r}")
    if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 0:
        raise Florence2Error(f"the tracking gap must be a whole number of frames >= 0, got {max_gap!r}")


def link_tracks(
    frames: Sequence[Sequence[tuple[Box, str]]],
    iou: float = DEFAULT_IOU,
    max_gap: int = DEFAULT_GAP,
    by_label: bool = True,
) -> list[list[int]]:
    """Track ids for the boxes of a video's frames, in order (see the module docstring).

    Args:
        frames: per sampled frame, in time order, its ``(XYXY box, label)`` pairs.
        iou: the least overlap of a box with a track's last box to continue it.
        max_gap: how many sampled frames in a row a track may miss and still go on.
        by_label: a box continues only a track of its own label (else of any label).

    Returns:
        Per frame, the track id of each of its boxes: whole numbers from 1, in order of first
        appearance; no two boxes of one frame share an id.
    """
    check_tracking(iou, max_gap)
    live: list[_Track] = []
    next_id = 1
    linked: list[list[int]] = []
    for boxes in frames:
        ids = [0] * len(boxes)
        if live and boxes:
            overlap = box_iou([track.box for track in live], [box for box, _ in boxes])
            pairs = sorted(
                (-overlap[t, b], t, b)
                for t, track in enumerate(live)
                for b, (_, label) in enumerate(boxes)
                if (label == track.label or not by_label) and overlap[t, b] >= iou
            )
            taken: set[int] = set()
            for _, t, b in pairs:
                if t in taken or ids[b]:
                    continue
                taken.add(t)
                ids[b] = live[t].id
                live[t].box, live[t].missed = boxes[b][0], 0
            for t, track in enumerate(live):
                track.missed += t not in taken
        else:
            for track in live:
                track.missed += 1
        live = [track for track in live if track.missed <= max_gap]
        for b, (box, label) in enumerate(boxes):
            if not ids[b]:
                ids[b] = next_id
                live.append(_Track(next_id, label, box))
                next_id += 1
        linked.append(ids)
    return linked
