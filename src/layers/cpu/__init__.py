"""The CPU formulation: forms of the ACmix layers and of every Swin's LayerNorm, GELU and Dense layers
tuned for MindSpore's CPU kernels (identity-matmul axis swaps, Im2Col/Col2Im, hand-written backward
passes, C++ kernels for the Swin ACmix convolution path, LayerNorm and the exact GELU) that are exact
on CPU and not meant for other devices. `..formulation` decides when they are used."""
