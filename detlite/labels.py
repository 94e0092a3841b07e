"""The two special label values, shared by data, target assignment, the loss and the ops.

Ground-truth labels and per-anchor class targets are int64 tensors in which a value >= 0 is a
contiguous class index (see `detlite.data.CategoryMap`) and these two values mean:
"""

BACKGROUND = -1
"""No object: a padding row of a ground-truth batch, or an anchor matched to no box."""

IGNORE = -2
"""Neither positive nor negative: a crowd / ignore region in the ground truth, or an anchor
whose match is ambiguous or that such a region covers. Ignored anchors get no loss."""
