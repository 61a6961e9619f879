"""Mixup / CutMix with label smoothing, as a per-batch map on NumPy arrays (timm's semantics:
one lambda per batch, the batch mixed with its reverse, cutmix lambda corrected to the box area)."""
import numpy as np


def smooth_one_hot(labels, num_classes, smoothing, over='all'):
    """Label-smoothed one-hot targets. over='all' (timm's, the official Swin recipe): smoothing /
    num_classes on every class, 1 - smoothing + that on the label; over='others' (the official ResNet
    recipe's smooth_loss): 1 - smoothing on the label, smoothing / (num_classes - 1) on each other class."""
    off = smoothing / num_classes if over == 'all' else smoothing / (num_classes - 1)
    out = np.full((len(labels), num_classes), off, np.float32)
    out[np.arange(len(labels)), labels] = 1.0 - smoothing + off if over == 'all' else 1.0 - smoothing
    return out


class MixupCutmix:
    """Callable(images NCHW float32, labels int) -> (images, soft targets float32 (N, classes)).

    timm's Mixup in 'batch' mode with correct_lam: with probability mix_prob the batch is mixed with
    its reverse; mixup_alpha / cutmix_alpha are the Beta parameters (0 = off); with both on, cutmix is
    chosen with probability switch_prob; cutmix's lambda is corrected to the area of its box (clipped
    at the border). Targets are label-smoothed one-hots, mixed with the same lambda. With both alphas 0
    it only builds the smoothed targets. The draws are NumPy's legacy generator's, in timm's order, so
    a MixupCutmix seeded with s mixes as timm's Mixup after np.random.seed(s) (tests/test_data_augment.py).
    """

    def __init__(self, num_classes, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5, smoothing=0.1, seed=None,
                 smoothing_over='all', mix_prob=1.0):
        self.num_classes, self.smoothing_over = num_classes, smoothing_over
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.switch_prob, self.smoothing, self.mix_prob = switch_prob, smoothing, mix_prob
        self.rng = np.random.RandomState(seed)

    def _cutmix_box(self, h, w, lam):
        """(y0, y1, x0, x1): a box of sqrt(1 - lam) of each side, centred at a uniform pixel, clipped."""
        ratio = np.sqrt(1.0 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = self.rng.randint(0, h), self.rng.randint(0, w)
        y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
        x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
        return y0, y1, x0, x1

    def _draw(self):
        """(lam, cutmix?) of one batch; lam 1 leaves it unmixed."""
        use_mixup, use_cutmix = self.mixup_alpha > 0, self.cutmix_alpha > 0
        if not (use_mixup or use_cutmix) or self.rng.rand() >= self.mix_prob:
            return 1.0, False
        cut = use_cutmix and (not use_mixup or self.rng.rand() < self.switch_prob)
        alpha = self.cutmix_alpha if cut else self.mixup_alpha
        return float(self.rng.beta(alpha, alpha)), cut

    def __call__(self, images, labels):
        images = np.asarray(images, np.float32)
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        targets = smooth_one_hot(labels, self.num_classes, self.smoothing, self.smoothing_over)
        lam, cut = self._draw()
        if lam == 1.0:
            return images, targets
        flipped = images[::-1]
        if cut:
            h, w = images.shape[2], images.shape[3]
            y0, y1, x0, x1 = self._cutmix_box(h, w, lam)
            images = images.copy()
            images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        else:
            images = lam * images + (1.0 - lam) * flipped
        targets = lam * targets + (1.0 - lam) * targets[::-1]
        return images.astype(np.float32), targets.astype(np.float32)
