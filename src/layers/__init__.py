"""Pure Cells: no configuration, no training code."""
from .acmix import ACMIX_PATHS, LocalAttentionACmix
from .activation import GELU
from .conv_path import ConvolutionPath, shift_kernels
from .drop_path import DropPath
from .formulation import FORMULATIONS, resolve_formulation
from .local_attention import LocalAttention
from .window_acmix import WindowAttention, WindowAttentionACmix
from .window_ops import relative_position_index, roll_hw, shifted_window_mask, window_partition, window_reverse

__all__ = ['ACMIX_PATHS', 'LocalAttentionACmix', 'ConvolutionPath', 'shift_kernels', 'GELU', 'DropPath', 'FORMULATIONS',
           'resolve_formulation', 'LocalAttention', 'WindowAttention', 'WindowAttentionACmix',
           'relative_position_index', 'roll_hw', 'shifted_window_mask', 'window_partition', 'window_reverse']
