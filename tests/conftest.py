"""Shared test set-up: CPU, graph mode (the project's default), fixed seeds."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import src  # noqa: E402,F401  (sets oneDNN/GLOG defaults before MindSpore loads)
import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device('CPU')


@pytest.fixture(autouse=True)
def _seed():
    ms.set_seed(0)
    np.random.seed(0)
