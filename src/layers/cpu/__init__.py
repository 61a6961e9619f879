"""The CPU formulation of the ACmix layers: forms tuned for MindSpore's CPU kernels (identity-matmul
axis swaps, Im2Col/Col2Im, hand-written backward passes, a C++ kernel) that are exact on CPU and not
meant for other devices. `..formulation` decides when they are used."""
