"""Compiles, in graph mode on CPU, small graphs that break each rule of the graph audit, for
tests/test_tools_audit_graph.py (run in a subprocess whose environment turns MindSpore's IR dump on).
Not collected by pytest (no test_ prefix).

    python tests/audit_violations_worker.py OUT_DIR

writes OUT_DIR/with_inf.mindir beside the IR dump.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import src  # noqa: E402,F401

# isort: split
import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

from src.engine.context import use_device  # noqa: E402


class Violations(nn.Cell):
    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(4, 8, 3, pad_mode='pad', padding=1, group=2, has_bias=False)  # not depthwise
        self.depthwise = nn.Conv2d(4, 4, 3, pad_mode='pad', padding=1, group=4, has_bias=False)  # allowed
        self.custom = ops.Custom(lambda x: x * 2, out_shape=lambda x: x, out_dtype=lambda x: x, func_type='pyfunc')
        self.bmm = ops.BatchMatMul()
        self.eye = Tensor(np.broadcast_to(np.eye(5, dtype=np.float32), (8, 5, 5)).copy())
        self.mask = Tensor(np.array([0.0, -np.inf, 0.0, 0.0, 0.0], np.float32))

    def construct(self, x):
        y = self.grouped(x) + ops.tile(self.depthwise(x), (1, 2, 1, 1))  # (B, 8, 5, 5)
        y = self.bmm(y.reshape(8, 5, 5), self.eye)  # an axis swap by identity matmuls
        y = self.custom(y)
        return ops.softmax(y + self.mask, axis=-1)


class WithInf(nn.Cell):
    def __init__(self):
        super().__init__()
        self.mask = Tensor(np.array([0.0, -np.inf, 0.0], np.float32))

    def construct(self, x):
        return ops.softmax(x + self.mask, axis=-1)


if __name__ == '__main__':
    ms.set_context(mode=ms.GRAPH_MODE)
    use_device('CPU')  # as the entry points set it up
    Violations()(Tensor(np.ones((1, 4, 5, 5), np.float32)))
    ms.export(WithInf(), Tensor(np.ones((2, 3), np.float32)), file_name=os.path.join(sys.argv[1], 'with_inf'),
              file_format='MINDIR')
