"""Swin Transformer with ACmix (the official SwinTransformer_acmix of LeapLabTHU/ACmix) or with
plain window attention (Swin, Liu et al. 2021)."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..layers import (
    WindowAttention,
    WindowAttentionACmix,
    resolve_formulation,
    roll_hw,
    shifted_window_mask,
)
from ..layers.padding import zero_pad_axis
from ..layers.window_acmix import swin_dense_init
from .interface import check_out_indices, feature_info, forget_compiled_graphs
from .registry import InputSizeError, register_model


def _pair(size):
    """(h, w) of an int or a pair; anything else is returned as it is, for stage_resolutions to reject."""
    if isinstance(size, int):
        return size, size
    return tuple(size) if isinstance(size, (tuple, list)) else size


def _ceil_div(n, d):
    return -(-n // d)


def stage_resolutions(img_size, patch_size, num_stages):
    """Token-grid size (h, w) of every stage: the patch embedding pads the image to a multiple of
    the patch size, each patch merging pads an odd side by one. InputSizeError for a size that is
    not a positive int or (h, w) pair."""
    size = _pair(img_size)
    sides = size if isinstance(size, tuple) else ()
    positive = [isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides]
    if len(positive) != 2 or not all(positive):
        raise InputSizeError(f'image size must be a positive int or (height, width) pair, got {img_size!r}')
    res = [tuple(_ceil_div(s, patch_size) for s in size)]
    for _ in range(num_stages - 1):
        res.append(tuple(_ceil_div(r, 2) for r in res[-1]))
    return res


def pad_bottom_right(x, h_axis, pad_h, pad_w):
    """x with pad_h zero rows at the bottom and pad_w zero columns on the right, its height on axis
    h_axis and its width on the next (concatenation with zeros: see src/layers/padding.py)."""
    return zero_pad_axis(zero_pad_axis(x, h_axis, 0, pad_h), h_axis + 1, 0, pad_w)


# The blocks below take the model's resolved Formulation (src/layers/formulation.py): it builds their
# LayerNorms (torch's epsilon), GELUs, Dense layers and DropPath, and their attention's layers.
class Mlp(nn.Cell):
    def __init__(self, dim, hidden, formulation, drop=0.0):
        super().__init__()
        self.fc1 = formulation.dense(dim, hidden, **swin_dense_init())
        self.act = formulation.gelu()  # exact (erf), as torch's default
        self.fc2 = formulation.dense(hidden, dim, **swin_dense_init())
        self.drop = nn.Dropout(p=drop)

    def construct(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(nn.Cell):
    """(Shifted-)window attention block on a (h, w) token grid.

    A stage whose shorter side is no larger than the window and tiles the grid exactly uses windows
    of that side and no shift, as classification Swin does for a stage no larger than its window (at
    224 px the last stage is one 7x7 window). Otherwise a side the window does not divide is
    zero-padded at the bottom/right after norm1, shifted, attended and cropped back, as in the
    official Swin detection backbone (which has no such rule); the shift mask is built for the
    padded size."""

    def __init__(self, dim, resolution, num_heads, window_size, shift_size, formulation, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0,
                 acmix=True, **acmix_kwargs):
        super().__init__()
        self.resolution = resolution
        side = min(resolution)
        if side <= window_size and all(r % side == 0 for r in resolution):
            shift_size, window_size = 0, side
        self.window_size, self.shift_size = window_size, shift_size
        h, w = resolution
        self.padded_resolution = (_ceil_div(h, window_size) * window_size, _ceil_div(w, window_size) * window_size)
        self.pad = (self.padded_resolution[0] - h, self.padded_resolution[1] - w)
        self.norm1 = formulation.layer_norm(dim)
        attn_cls = WindowAttentionACmix if acmix else WindowAttention
        self.attn = attn_cls(dim, window_size, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                             attn_drop=attn_drop, proj_drop=drop, formulation=formulation, **acmix_kwargs)
        self.drop_path = formulation.drop_path(drop_path)
        self.norm2 = formulation.layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), formulation, drop)
        self.attn_mask = None
        if shift_size > 0:
            self.attn_mask = Tensor(shifted_window_mask(*self.padded_resolution, window_size, shift_size), ms.float32)

    def construct(self, x):
        b, length, c = x.shape
        h, w = self.resolution
        s = self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        if self.pad != (0, 0):
            y = pad_bottom_right(y, 1, *self.pad)  # (B, Hp, Wp, C)
        if s > 0:
            y = roll_hw(y, -s, -s)
        y = self.attn(y, self.attn_mask)
        if s > 0:
            y = roll_hw(y, s, s)
        if self.pad != (0, 0):
            y = ops.slice(y, (0, 0, 0, 0), (b, h, w, c))
        x = x + self.drop_path(y.reshape(b, length, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Cell):
    """2x2 neighbourhood -> LN(4C) -> Linear(4C, 2C); an odd side is zero-padded by one at the
    bottom/right first (as the official detection backbone). The four neighbours are taken by
    reshaping rather than strided slicing, whose gradient crashes on CPU."""

    def __init__(self, resolution, dim, formulation):
        super().__init__()
        self.resolution = resolution
        h, w = resolution
        self.pad = (h % 2, w % 2)
        self.norm = formulation.layer_norm(4 * dim)
        self.reduction = formulation.dense(4 * dim, 2 * dim, has_bias=False, **swin_dense_init())

    def construct(self, x):
        b, _, c = x.shape
        h, w = self.resolution
        if self.pad != (0, 0):
            x = pad_bottom_right(x.view(b, h, w, c), 1, *self.pad)
            h, w = h + h % 2, w + w % 2
        x = x.view(b, h // 2, 2, w // 2, 2, c)  # (B, h/2, row parity, w/2, col parity, C)
        # Order of the official cat: (0::2, 0::2), (1::2, 0::2), (0::2, 1::2), (1::2, 1::2).
        x = ops.cat((x[:, :, 0, :, 0], x[:, :, 1, :, 0], x[:, :, 0, :, 1], x[:, :, 1, :, 1]), -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Cell):
    """A stage: its blocks, then the patch merging into the next one. construct returns both the
    stage's output and the merged map (the output itself for the last stage)."""

    def __init__(self, dim, resolution, depth, num_heads, window_size, drop_path, downsample, formulation,
                 **kwargs):
        super().__init__()
        self.resolution = resolution
        self.blocks = nn.CellList([
            SwinBlock(dim, resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, formulation,
                      drop_path=drop_path[i], **kwargs) for i in range(depth)])
        self.downsample = PatchMerging(resolution, dim, formulation) if downsample else None

    def construct(self, x):
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is None:
            return x, x
        return x, self.downsample(x)


class PatchEmbed(nn.Cell):
    """Non-overlapping patch projection + LayerNorm; the image is zero-padded at the bottom/right
    to a multiple of the patch size first (as the official detection backbone)."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim, formulation):
        super().__init__()
        h, w = img_size
        self.pad = (-h % patch_size, -w % patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, pad_mode='valid',
                              has_bias=True)
        self.norm = formulation.layer_norm(embed_dim)

    def construct(self, x):
        if self.pad != (0, 0):
            x = pad_bottom_right(x, 2, *self.pad)
        x = self.proj(x)  # (B, C, h, w)
        b, c = x.shape[0], x.shape[1]
        return self.norm(x.reshape(b, c, -1).swapaxes(1, 2))  # (B, h*w, C)


class SwinTransformer(nn.Cell):
    """Swin Transformer; ACmix window attention when acmix=True.

    img_size: any size, int or (h, w), fixed at build time. Where the patch size, a patch merging
    or the window does not divide a side, the map is zero-padded at the bottom/right and cropped
    back, as in the official Swin detection backbone; sizes that need no padding (224 at window 7)
    compute exactly the official classification model. Absolute position embedding is not supported
    (the official ACmix models do not use it). `formulation` ('portable', 'cpu' or None: the device
    target decides, see src/layers/formulation.py) picks the ACmix layers' convolution path, how
    DropPath applies its mask and how LayerNorm and Dense compute, in the ACmix and the plain Swin.

    features_only: instead of logits, construct returns a tuple of NCHW maps, one per stage in
    `out_indices` (each stage's output before its patch merging, normalised by a LayerNorm of its
    own, `norm{i}`, as the official detection backbone); `feature_info` describes them. The final
    norm and the head are not built; stages after the last output are built (checkpoints still load
    strictly) but not run.
    """

    classifier_name = 'head'  # parameters left out when fine-tuning with a new head

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
                 acmix=True, kernel_conv=3, paths='both', learnable_shift=True, formulation=None,
                 features_only=False, out_indices=(0, 1, 2, 3)):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f'depths {depths} and num_heads {num_heads} differ in length')
        self.img_size = _pair(img_size)
        self.resolutions = tuple(stage_resolutions(self.img_size, patch_size, len(depths)))
        self.formulation = formulation = resolve_formulation(formulation)  # builds the layers below
        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim, formulation)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        acmix_kwargs = dict(kernel_conv=kernel_conv, paths=paths, learnable_shift=learnable_shift) if acmix else {}
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        stages = []
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            stages.append(BasicLayer(
                dims[i], self.resolutions[i], depth, num_heads[i], window_size,
                dpr[start:start + depth], i < len(depths) - 1, formulation, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                acmix=acmix, **acmix_kwargs))
        self.layers = nn.CellList(stages)
        # whether some map is zero-padded: not a size the official classification model takes
        pads = [self.patch_embed.pad] + [cell.pad for layer in stages for cell in
                                         list(layer.blocks) + ([layer.downsample] if layer.downsample else [])]
        self.padded = any(pad != (0, 0) for pad in pads)
        self.num_features = dims[-1]
        self.features_only = features_only
        self.checkpoint_skip_prefixes, self.optional_checkpoint_prefixes = (), ()
        if features_only:
            self.out_indices = check_out_indices(out_indices, len(depths))
            self.feature_info = feature_info(dims, [patch_size * 2 ** i for i in range(len(depths))],
                                             [f'layers.{i}' for i in range(len(depths))], self.out_indices)
            self.out_norm_names = tuple(f'norm{i}' for i in self.out_indices)
            for name, i in zip(self.out_norm_names, self.out_indices):
                setattr(self, name, formulation.layer_norm(dims[i]))
            # a classification checkpoint has the final norm and head, and no per-output norms
            self.checkpoint_skip_prefixes = ('norm.', 'head.')
            self.optional_checkpoint_prefixes = tuple(name + '.' for name in self.out_norm_names)
            self.num_classes = 0
        else:
            self.norm = formulation.layer_norm(self.num_features)
            self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes):
        """A new, freshly initialised head for `num_classes` (0: none, forward_head returns the
        pooled features)."""
        if self.features_only:
            raise ValueError('a features_only model has no classifier')
        self.num_classes = num_classes
        self.head = (self.formulation.dense(self.num_features, num_classes, **swin_dense_init()) if num_classes > 0
                     else nn.Identity())
        forget_compiled_graphs(self)

    def _embed(self, x):
        if x.shape[2] != self.img_size[0] or x.shape[3] != self.img_size[1]:
            raise ValueError('SwinTransformer: the input size differs from the img_size the model '
                             'was built for; build it with create_model(..., img_size=...).')
        return self.pos_drop(self.patch_embed(x))

    def forward_features(self, x):
        """(B, 3, H, W) -> the last stage's normalised tokens (B, h*w, C), before pooling."""
        if self.features_only:
            raise ValueError('forward_features: a features_only model returns its maps from construct')
        x = self._embed(x)
        for layer in self.layers:
            _, x = layer(x)
        return self.norm(x)

    def forward_head(self, x):
        """Tokens (B, h*w, C) of forward_features -> logits (B, num_classes)."""
        return self.head(x.mean(1))

    def _feature_maps(self, x):
        x = self._embed(x)
        maps, j = (), 0
        for i, layer in enumerate(self.layers):
            if i <= self.out_indices[-1]:
                out, x = layer(x)
                if i in self.out_indices:
                    h, w = self.resolutions[i]
                    out = getattr(self, self.out_norm_names[j])(out)  # (B, h*w, C)
                    maps = maps + (ops.transpose(out.view(out.shape[0], h, w, -1), (0, 3, 1, 2)),)
                    j += 1
        return maps

    def construct(self, x):
        if self.features_only:
            return self._feature_maps(x)
        return self.forward_head(self.forward_features(x))


_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)
# For 32 px CPU demos and tests: 16/8/4/2 token grids, shifted windows in the first two stages.
_MINI = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
             window_size=4, drop_path_rate=0.1)


@register_model(sized=True, settings=dict(_TINY, acmix=True))
def acmix_swin_tiny(**kwargs):
    return SwinTransformer(**kwargs)


@register_model(sized=True, settings=dict(_SMALL, acmix=True))
def acmix_swin_small(**kwargs):
    return SwinTransformer(**kwargs)


@register_model(sized=True, settings=dict(_TINY, acmix=False))
def swin_tiny(**kwargs):
    return SwinTransformer(**kwargs)


@register_model(sized=True, settings=dict(_SMALL, acmix=False))
def swin_small(**kwargs):
    return SwinTransformer(**kwargs)


@register_model(sized=True, settings=dict(_MINI, acmix=True))
def acmix_swin_mini(**kwargs):
    return SwinTransformer(**kwargs)


@register_model(sized=True, settings=dict(_MINI, acmix=False))
def swin_mini(**kwargs):
    return SwinTransformer(**kwargs)
