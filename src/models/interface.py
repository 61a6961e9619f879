"""What the model families share beyond their layers: the check of `out_indices` and timm's
`feature_info` records for `features_only=True`, and forgetting compiled graphs when a model's
structure changes (`reset_classifier`)."""
import time


def check_out_indices(out_indices, num_stages):
    """`out_indices` as a sorted tuple of distinct stage indices in [0, num_stages); ValueError
    otherwise."""
    indices = tuple(out_indices)
    if (not indices or len(set(indices)) != len(indices)
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_stages for i in indices)):
        raise ValueError(f'out_indices must be distinct stage indices in 0..{num_stages - 1}, got {out_indices!r}')
    return tuple(sorted(indices))


def feature_info(channels, reductions, modules, out_indices):
    """One record per output, as timm's `feature_info`: `num_chs` (channels), `reduction` (input
    pixels per feature-map pixel, along each axis) and `module` (the Cell whose output it is)."""
    return [dict(num_chs=channels[i], reduction=reductions[i], module=modules[i]) for i in out_indices]


def forget_compiled_graphs(cell):
    """Make the next call of `cell` compile its graph again. MindSpore 2.10 finds a Cell's compiled
    graph by phase, id and creation time, not by its sub-Cells, so a classifier replaced after the
    first graph-mode call would silently keep computing the old one; a new creation time gives the
    Cell a new cache key (tests/test_models_backbone.py checks that it does). A Cell that wraps the
    model and was already compiled (a training step, a loss Cell) keeps its own key: change the
    classifier before wrapping the model."""
    object.__setattr__(cell, '_create_time', time.time_ns())
