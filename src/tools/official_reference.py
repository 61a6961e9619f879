"""The official formulation of ACmix (Pan et al., CVPR 2022) in PyTorch, the reference our models are
compared with: by the parity tests (tests/test_parity_official.py) and by the benchmark's --official.
Needs torch (an optional extra: pip install torch==2.13.0); nothing else in src/ imports it.

A compact re-implementation of the forward passes of the official LeapLabTHU/ACmix models
(ResNet/test_bottleneck.py, ResNet/ResNet_ImageNet.py, Swin-Transformer/models/
swin_transformer_acmix.py) and of the plain microsoft/Swin-Transformer model. The Swin models take
any input size by zero-padding as the official Swin detection backbone (SwinTransformer/
Swin-Transformer-Object-Detection, mmdet/models/backbones/swin_transformer.py) does; without
padding (e.g. 224 with patch 4, window 7) they compute exactly the classification code. Module names,
state_dict keys, shapes, buffers and initialisation follow the official code, so a state_dict
of these models can be converted and loaded into the MindSpore port for parity tests.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- ResNet ACmix
def position(h, w, device=None):
    """(1, 2, h, w) grid in the default dtype: channel 0 varies along width, channel 1 along height."""
    xs = torch.linspace(-1.0, 1.0, w).unsqueeze(0).repeat(h, 1)
    ys = torch.linspace(-1.0, 1.0, h).unsqueeze(1).repeat(1, w)
    return torch.stack([xs, ys], 0).unsqueeze(0).to(device)


class ACmix(nn.Module):
    """The official ResNet ACmix layer: shared 1x1 q/k/v, local attention + shift convolution."""

    def __init__(self, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1, dilation=1):
        super().__init__()
        self.in_planes, self.out_planes, self.head = in_planes, out_planes, head
        self.kernel_att, self.kernel_conv, self.stride, self.dilation = kernel_att, kernel_conv, stride, dilation
        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        self.head_dim = out_planes // head
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1)
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        self.padding_att = (dilation * (kernel_att - 1) + 1) // 2
        self.pad_att = nn.ReflectionPad2d(self.padding_att)
        self.unfold = nn.Unfold(kernel_size=kernel_att, padding=0, stride=stride)
        self.softmax = nn.Softmax(dim=1)
        self.fc = nn.Conv2d(3 * head, kernel_conv * kernel_conv, 1, bias=False)
        # padding=1 is hard-coded in the official code; the bias is deleted (set to None) there too.
        self.dep_conv = nn.Conv2d(kernel_conv * kernel_conv * self.head_dim, out_planes, kernel_conv,
                                  groups=self.head_dim, padding=1, stride=stride, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.constant_(self.rate1, 0.5)
        nn.init.constant_(self.rate2, 0.5)
        kc = self.kernel_conv
        shift = torch.zeros(kc * kc, kc, kc)
        for i in range(kc * kc):
            shift[i, i // kc, i % kc] = 1.0
        with torch.no_grad():
            self.dep_conv.weight.copy_(shift.repeat(self.out_planes, 1, 1, 1))

    def forward(self, x):
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        b, c, h, w = q.shape
        s, nh, hd, ka2 = self.stride, self.head, self.head_dim, self.kernel_att ** 2
        ho, wo = h // s, w // s
        # attention path (head-major channel split, q scaled here only)
        pe = self.conv_p(position(h, w, x.device))
        q_att = q.view(b * nh, hd, h, w) * float(hd) ** -0.5
        k_att = k.view(b * nh, hd, h, w)
        v_att = v.view(b * nh, hd, h, w)
        q_pe = pe
        if s > 1:
            q_att, q_pe = q_att[:, :, ::s, ::s], pe[:, :, ::s, ::s]
        k_win = self.unfold(self.pad_att(k_att)).view(b * nh, hd, ka2, ho, wo)
        pe_win = self.unfold(self.pad_att(pe)).view(1, hd, ka2, ho, wo)
        att = self.softmax((q_att.unsqueeze(2) * (k_win + q_pe.unsqueeze(2) - pe_win)).sum(1))
        v_win = self.unfold(self.pad_att(v_att)).view(b * nh, hd, ka2, ho, wo)
        out_att = (att.unsqueeze(1) * v_win).sum(2).view(b, self.out_planes, ho, wo)
        # convolution path (unscaled q; fc sees [q heads, k heads, v heads] with (hd, h*w) as space)
        qkv = torch.cat([t.view(b, nh, hd, h * w) for t in (q, k, v)], 1)
        f_conv = self.fc(qkv).permute(0, 2, 1, 3).reshape(b, -1, h, w)
        out_conv = self.dep_conv(f_conv)
        return self.rate1 * out_att + self.rate2 * out_conv


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck; conv2 (which carries the stride) is built by `conv2_fn`."""
    expansion = 4

    def __init__(self, inplanes, planes, conv2_fn, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv2_fn(planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Torchvision-style ResNet (7x7/2 stem, maxpool, four stages, avgpool + fc)."""

    def __init__(self, layers, conv2_fn, num_classes=1000, base_channels=64):
        super().__init__()
        self.inplanes = base_channels
        self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, n in enumerate(layers):
            stage = self._make_layer(base_channels * 2 ** i, n, conv2_fn, 1 if i == 0 else 2)
            setattr(self, f'layer{i + 1}', stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(base_channels * 8 * Bottleneck.expansion, num_classes)
        for m in self.modules():  # overwrites every Conv2d, incl. ACmix's dep_conv, conv_p and fc
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes, blocks, conv2_fn, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        mods = [Bottleneck(self.inplanes, planes, conv2_fn, stride, downsample)]
        self.inplanes = planes * 4
        mods += [Bottleneck(self.inplanes, planes, conv2_fn) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def acmix_resnet(layers, num_classes=1000, base_channels=64):
    """Official ACmix ResNet (k_att=7, head=4, k_conv=3); base_channels != 64 only for tiny tests."""
    return ResNet(layers, lambda c, s: ACmix(c, c, 7, 4, 3, stride=s), num_classes, base_channels)


def resnet_plain(layers, num_classes=1000, base_channels=64):
    """Same ResNet with a plain 3x3 conv2 (torchvision ResNet-50 for layers [3, 4, 6, 3])."""
    return ResNet(layers, lambda c, s: nn.Conv2d(c, c, 3, stride=s, padding=1, bias=False),
                  num_classes, base_channels)


# ----------------------------------------------------------------------------- Swin
def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _ceil_div(a, b):
    return -(-a // b)


def window_partition(x, ws):
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows, ws, h, w):
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class DropPath(nn.Module):
    """Per-sample stochastic depth (identity in eval mode)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class WindowAttention(nn.Module):
    """Plain Swin W-MSA with relative position bias. Maps a (shifted) (B, H, W, C) map to the same shape."""

    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        grid = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij')).flatten(1)
        rel = (grid[:, :, None] - grid[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer('relative_position_index', rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1])
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def _attend(self, qkv_windows, mask):
        """qkv_windows: (nW*B, N, 3C) -> proj(attention output): (nW*B, N, C)."""
        bw, n, c3 = qkv_windows.shape
        c, nh = c3 // 3, self.num_heads
        q, k, v = qkv_windows.reshape(bw, n, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, nh, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, nh, n, n)
        attn = self.attn_drop(self.softmax(attn))
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))

    def forward(self, x, mask=None):
        b, h, w, c = x.shape
        ws = self.window_size
        win = window_partition(x, ws).view(-1, ws * ws, c)
        out = self.proj_drop(self._attend(self.qkv(win), mask))
        return window_reverse(out.view(-1, ws, ws, c), ws, h, w)


class WindowAttentionACmix(WindowAttention):
    """Official Swin ACmix: qkv on the whole shifted map, window attention + shift-conv path on it."""

    def __init__(self, dim, window_size, num_heads):
        super().__init__(dim, window_size, num_heads)
        hd = dim // num_heads
        self.fc = nn.Conv2d(3 * num_heads, 9, 1, bias=True)
        self.dep_conv = nn.Conv2d(9 * hd, dim, 3, groups=hd, padding=1, bias=False)
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))
        shift = torch.zeros(9, 3, 3)
        for i in range(9):
            shift[i, i // 3, i % 3] = 1.0
        with torch.no_grad():
            self.dep_conv.weight.copy_(shift.repeat(dim, 1, 1, 1))

    def forward(self, x, mask=None):
        b, h, w, c = x.shape
        ws, nh = self.window_size, self.num_heads
        qkv = self.qkv(x)
        f_all = qkv.reshape(b, h * w, 3 * nh, -1).permute(0, 2, 1, 3)  # B, 3*nh, HW, hd (unscaled q)
        f_conv = self.fc(f_all).permute(0, 3, 1, 2).reshape(b, 9 * c // nh, h, w)
        out_conv = self.dep_conv(f_conv).permute(0, 2, 3, 1)
        out = self._attend(window_partition(qkv, ws).view(-1, ws * ws, 3 * c), mask)
        out = window_reverse(out.view(-1, ws, ws, c), ws, h, w)
        return self.proj_drop(self.rate1 * out + self.rate2 * out_conv)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(nn.Module):
    """Swin block for a fixed (H, W); the map is zero-padded to whole windows as in the detection backbone."""

    def __init__(self, dim, resolution, num_heads, window_size, shift_size, drop_path, acmix):
        super().__init__()
        self.dim, self.input_resolution = dim, tuple(resolution)
        side = min(resolution)
        # classification Swin: one window, no shift, for a stage no larger than the window; kept where
        # that window tiles the map exactly (the detection backbone has no such rule and pads)
        if side <= window_size and all(r % side == 0 for r in resolution):
            shift_size, window_size = 0, side
        self.window_size, self.shift_size = window_size, shift_size
        # padded size: bottom/right zeros up to whole windows (equal to resolution when it divides)
        self.padded_resolution = tuple(_ceil_div(r, window_size) * window_size for r in resolution)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = (WindowAttentionACmix if acmix else WindowAttention)(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * 4.0))
        attn_mask = None
        if shift_size > 0:  # built for the padded map, as the detection backbone's BasicLayer does
            h, w = self.padded_resolution
            img = torch.zeros((1, h, w, 1))
            cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
            for i, (hs, wsl) in enumerate((a, b) for a in cuts for b in cuts):
                img[:, hs, wsl, :] = i
            mw = window_partition(img, window_size).view(-1, window_size * window_size)
            diff = mw.unsqueeze(1) - mw.unsqueeze(2)
            attn_mask = diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)
        self.register_buffer('attn_mask', attn_mask)

    def forward(self, x):
        h, w = self.input_resolution
        b, n, c = x.shape
        assert n == h * w, 'input feature has wrong size'
        s = self.shift_size
        hp, wp = self.padded_resolution
        y = self.norm1(x).view(b, h, w, c)
        if hp != h or wp != w:  # skipped when not needed, so unpadded sizes stay bit-identical
            y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h))
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(y, self.attn_mask)  # ACmix: qkv and the conv path also run on the padded map
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        if hp != h or wp != w:
            y = y[:, :h, :w, :].contiguous()
        x = x + self.drop_path(y.view(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 merge; odd sides are zero-padded at the bottom/right first (detection backbone), output ceil(H/2, W/2)."""

    def __init__(self, resolution, dim):
        super().__init__()
        self.input_resolution, self.dim = tuple(resolution), dim
        self.output_resolution = tuple(_ceil_div(r, 2) for r in resolution)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        h, w = self.input_resolution
        b, n, c = x.shape
        assert n == h * w, 'input feature has wrong size'
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    def __init__(self, dim, resolution, depth, num_heads, window_size, drop_path, downsample, acmix):
        super().__init__()
        self.input_resolution = tuple(resolution)
        self.blocks = nn.ModuleList([
            SwinBlock(dim, resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                      drop_path[i], acmix) for i in range(depth)])
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    """Patch projection; an (h, w) input is zero-padded at the bottom/right to whole patches (detection backbone)."""

    def __init__(self, img_size, patch_size, embed_dim):
        super().__init__()
        self.img_size, self.patch_size = _pair(img_size), patch_size
        self.patches_resolution = tuple(_ceil_div(r, patch_size) for r in self.img_size)
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        assert tuple(x.shape[-2:]) == self.img_size, 'input size does not match the model'
        h, w = self.img_size
        p = self.patch_size
        if w % p:
            x = F.pad(x, (0, p - w % p))
        if h % p:
            x = F.pad(x, (0, 0, 0, p - h % p))
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    """Swin (ape=False, patch_norm=True, mlp_ratio 4, qkv_bias); ACmix attention when acmix=True."""

    def __init__(self, acmix, img_size, patch_size, embed_dim, depths, num_heads, window_size,
                 num_classes, drop_path_rate):
        super().__init__()
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        self.pos_drop = nn.Dropout(0.0)
        res = [self.patch_embed.patches_resolution]
        for _ in depths[1:]:  # PatchMerging pads odd sides: stage i+1 = ceil(stage i / 2)
            res.append(tuple(_ceil_div(r, 2) for r in res[-1]))
        self.stage_resolutions = res
        dpr = [v.item() for v in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList([
            BasicLayer(embed_dim * 2 ** i, res[i], d, num_heads[i], window_size,
                       dpr[sum(depths[:i]):sum(depths[:i + 1])], i < len(depths) - 1, acmix)
            for i, d in enumerate(depths)])
        self.norm = nn.LayerNorm(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        x = torch.flatten(self.avgpool(self.norm(x).transpose(1, 2)), 1)
        return self.head(x)


def swin(acmix: bool, img_size=224, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
         window_size=7, num_classes=1000, drop_path_rate=0.0):
    """Official SwinTransformer_acmix (acmix=True) or the plain microsoft SwinTransformer (acmix=False).

    img_size is an int or an (h, w) pair; any size works (padded as the Swin detection backbone).
    """
    return SwinTransformer(acmix, img_size, patch_size, embed_dim, list(depths), list(num_heads), window_size,
                           num_classes, drop_path_rate)


# ----------------------------------------------------------------------------- parity helpers
@torch.no_grad()
def randomize_for_parity(model, seed=0):
    """Make BN statistics/affine, rates, biases, LN, rel-pos tables and dep_conv non-trivial (in place)."""
    g = torch.Generator().manual_seed(seed)

    def uni(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    def nrm(t, std):
        t.copy_(torch.randn(t.shape, generator=g) * std)

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            uni(m.weight, 0.5, 1.5)
            nrm(m.bias, 0.1)
            nrm(m.running_mean, 0.1)
            uni(m.running_var, 0.5, 1.5)
        elif isinstance(m, nn.LayerNorm):
            uni(m.weight, 0.5, 1.5)
            nrm(m.bias, 0.1)
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nrm(m.bias, 0.1)
        if isinstance(m, (ACmix, WindowAttentionACmix)):
            uni(m.rate1, 0.2, 1.5)
            uni(m.rate2, 0.2, 1.5)
            m.dep_conv.weight.add_(torch.randn(m.dep_conv.weight.shape, generator=g) * 0.1)
        if isinstance(m, WindowAttention):
            nrm(m.relative_position_bias_table, 0.5)
    return model


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


if __name__ == '__main__':
    torch.manual_seed(0)
    expected = [
        ('acmix_resnet([1,2,4,1])', lambda: acmix_resnet([1, 2, 4, 1]), 10_487_816, 224),
        ('acmix_resnet([2,3,5,2])', lambda: acmix_resnet([2, 3, 5, 2]), 14_410_896, 224),
        ('acmix_resnet([3,4,6,3])', lambda: acmix_resnet([3, 4, 6, 3]), 18_333_976, 224),
        ('swin(True, (2,2,6,2))', lambda: swin(True), 28_649_908, 224),
        ('swin(True, (2,2,18,2))', lambda: swin(True, depths=(2, 2, 18, 2)), 50_345_080, 224),
        ('swin(False, (2,2,6,2))', lambda: swin(False), 28_288_354, 224),
        ('ACmix(64, 64)', lambda: ACmix(64, 64), 17_822, None),
    ]
    ok = True
    for name, build, want, size in expected:
        model = randomize_for_parity(build().eval())
        got = count_params(model)
        ok &= got == want
        msg = f'{name:26s} params {got:>12,} (expected {want:,}) {"OK" if got == want else "MISMATCH"}'
        if size is not None:
            with torch.no_grad():
                out = model(torch.randn(1, 3, size, size))
            msg += f'  out {tuple(out.shape)} finite={bool(torch.isfinite(out).all())}'
        print(msg)
    with torch.no_grad():
        out = randomize_for_parity(ACmix(64, 64, stride=2))(torch.randn(1, 64, 14, 14))
    print('ACmix(64, 64, stride=2) on 1x64x14x14 ->', tuple(out.shape))
    assert ok, 'parameter count mismatch'
