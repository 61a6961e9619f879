"""ACmix for MindSpore.

Importing the package sets two environment defaults before MindSpore is loaded by any submodule:
oneDNN on AVX-512 CPUs otherwise runs k x k convolutions on a reference path about 100x slower,
and MindSpore's C++ warnings drown every useful line. Both are `setdefault`, so a caller can
override them from the shell.
"""
import os

os.environ.setdefault('ONEDNN_MAX_CPU_ISA', 'AVX2')
os.environ.setdefault('GLOG_v', '3')
