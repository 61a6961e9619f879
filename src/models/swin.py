"""Swin Transformer with ACmix (the official SwinTransformer_acmix of LeapLabTHU/ACmix) or with
plain window attention (Swin, Liu et al. 2021)."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..layers import DropPath, WindowAttention, WindowAttentionACmix, roll_hw, shifted_window_mask
from ..layers.window_acmix import dense
from .registry import InputSizeError, register_model


def layer_norm(dim):
    # MindSpore's default epsilon is 1e-7; Swin uses torch's 1e-5.
    return nn.LayerNorm((dim,), epsilon=1e-5)


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def stage_resolutions(img_size, patch_size, window_size, num_stages):
    """Token-grid size (h, w) of every stage; raises InputSizeError, naming sizes that work, when
    the patch size, the patch merging (halving) or the window size does not divide a stage."""
    img_size = _pair(img_size)

    def resolutions(size):
        if size % patch_size:
            return None
        res = [size // patch_size]
        for _ in range(num_stages - 1):
            if res[-1] % 2:
                return None
            res.append(res[-1] // 2)
        # A stage no larger than the window becomes one window; larger stages must tile by it.
        if any(r > window_size and r % window_size for r in res):
            return None
        return res

    per_axis = [resolutions(s) for s in img_size]
    if None in per_axis:
        limit = max(2 * max(img_size), 512)
        working = [s for s in range(patch_size, limit + 1, patch_size) if resolutions(s)]
        raise InputSizeError(
            f'image size {img_size[0]}x{img_size[1]} does not fit patch_size={patch_size}, '
            f'window_size={window_size} and {num_stages} stages: every stage must be divisible by the '
            f'window (or no larger than it) and even before each patch merging. Sizes that work '
            f'up to {limit}: {", ".join(map(str, working)) or "none"}.')
    return list(zip(*per_axis))


class Mlp(nn.Cell):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = dense(dim, hidden)
        self.act = nn.GELU(approximate=False)  # exact (erf) GELU, as torch's default
        self.fc2 = dense(hidden, dim)
        self.drop = nn.Dropout(p=drop)

    def construct(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(nn.Cell):
    """(Shifted-)window attention block. A stage no larger than the window uses one window and no
    shift, as in Swin."""

    def __init__(self, dim, resolution, num_heads, window_size, shift_size, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0,
                 acmix=True, **acmix_kwargs):
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window_size:
            shift_size, window_size = 0, min(resolution)
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = layer_norm(dim)
        attn_cls = WindowAttentionACmix if acmix else WindowAttention
        self.attn = attn_cls(dim, window_size, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                             attn_drop=attn_drop, proj_drop=drop, **acmix_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.attn_mask = None
        if shift_size > 0:
            self.attn_mask = Tensor(shifted_window_mask(*resolution, window_size, shift_size), ms.float32)

    def construct(self, x):
        b, length, c = x.shape
        h, w = self.resolution
        s = self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        if s > 0:
            y = roll_hw(y, -s, -s)
        y = self.attn(y, self.attn_mask)
        if s > 0:
            y = roll_hw(y, s, s)
        x = x + self.drop_path(y.view(b, length, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Cell):
    """2x2 neighbourhood -> LN(4C) -> Linear(4C, 2C). The four neighbours are taken by reshaping
    rather than strided slicing, whose gradient crashes on CPU."""

    def __init__(self, resolution, dim):
        super().__init__()
        self.resolution = resolution
        self.norm = layer_norm(4 * dim)
        self.reduction = dense(4 * dim, 2 * dim, has_bias=False)

    def construct(self, x):
        b, _, c = x.shape
        h, w = self.resolution
        x = x.view(b, h // 2, 2, w // 2, 2, c)  # (B, h/2, row parity, w/2, col parity, C)
        # Order of the official cat: (0::2, 0::2), (1::2, 0::2), (0::2, 1::2), (1::2, 1::2).
        x = ops.cat((x[:, :, 0, :, 0], x[:, :, 1, :, 0], x[:, :, 0, :, 1], x[:, :, 1, :, 1]), -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Cell):
    def __init__(self, dim, resolution, depth, num_heads, window_size, drop_path, downsample, **kwargs):
        super().__init__()
        self.blocks = nn.CellList([
            SwinBlock(dim, resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                      drop_path=drop_path[i], **kwargs) for i in range(depth)])
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def construct(self, x):
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class PatchEmbed(nn.Cell):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, pad_mode='valid',
                              has_bias=True)
        self.norm = layer_norm(embed_dim)

    def construct(self, x):
        x = self.proj(x)  # (B, C, h, w)
        b, c = x.shape[0], x.shape[1]
        return self.norm(x.reshape(b, c, -1).swapaxes(1, 2))  # (B, h*w, C)


class SwinTransformer(nn.Cell):
    """Swin Transformer; ACmix window attention when acmix=True.

    img_size may be any size (int or (h, w)) that patch_size, patch merging and window_size divide
    at every stage; the official code accepts 224 only. Absolute position embedding is not
    supported (the official ACmix models do not use it). `formulation` ('portable', 'cpu' or None:
    the device target decides, see src/layers/formulation.py) applies to the ACmix layers; it has
    no effect on the plain Swin.
    """

    classifier_name = 'head'  # parameters left out when fine-tuning with a new head

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
                 acmix=True, kernel_conv=3, paths='both', learnable_shift=True, formulation=None):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f'depths {depths} and num_heads {num_heads} differ in length')
        self.img_size = _pair(img_size)
        resolutions = stage_resolutions(self.img_size, patch_size, window_size, len(depths))
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        acmix_kwargs = dict(kernel_conv=kernel_conv, paths=paths, learnable_shift=learnable_shift,
                            formulation=formulation) if acmix else {}
        layers = []
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            layers.append(BasicLayer(
                embed_dim * 2 ** i, resolutions[i], depth, num_heads[i], window_size,
                dpr[start:start + depth], downsample=i < len(depths) - 1, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                acmix=acmix, **acmix_kwargs))
        self.layers = nn.CellList(layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = layer_norm(self.num_features)
        self.head = dense(self.num_features, num_classes)

    def construct(self, x):
        if x.shape[2] != self.img_size[0] or x.shape[3] != self.img_size[1]:
            raise ValueError('SwinTransformer: the input size differs from the img_size the model '
                             'was built for; build it with create_model(..., img_size=...).')
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(1))


_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)
# For 32 px CPU demos and tests: 16/8/4/2 token grids, shifted windows in the first two stages.
_MINI = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
             window_size=4, drop_path_rate=0.1)


def _swin(settings, acmix, kwargs):
    return SwinTransformer(acmix=acmix, **{**settings, **kwargs})


@register_model(sized=True)
def acmix_swin_tiny(**kwargs):
    return _swin(_TINY, True, kwargs)


@register_model(sized=True)
def acmix_swin_small(**kwargs):
    return _swin(_SMALL, True, kwargs)


@register_model(sized=True)
def swin_tiny(**kwargs):
    return _swin(_TINY, False, kwargs)


@register_model(sized=True)
def swin_small(**kwargs):
    return _swin(_SMALL, False, kwargs)


@register_model(sized=True)
def acmix_swin_mini(**kwargs):
    return _swin(_MINI, True, kwargs)


@register_model(sized=True)
def swin_mini(**kwargs):
    return _swin(_MINI, False, kwargs)
