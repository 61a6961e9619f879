"""An msrun worker for test_engine_distributed: each rank gives AllRanksFinite (the train step's
reduction of the overflow decision) its own local verdict and prints what comes back."""
import src  # noqa: F401  (environment defaults before MindSpore loads)

# isort: split
import mindspore as ms
from mindspore.communication import get_group_size, get_rank, init

from src.engine.context import use_device
from src.engine.train_step import AllRanksFinite

ms.set_context(mode=ms.GRAPH_MODE)
use_device('CPU')
init()
rank, group_size = get_rank(), get_group_size()
all_ranks_finite = AllRanksFinite()
# Which ranks see an overflow locally, per case.
CASES = {'none': (), 'only rank 1': (1,), 'only rank 0': (0,), 'all': tuple(range(group_size))}
for case, overflowed in CASES.items():
    local = rank not in overflowed
    reduced = bool(all_ranks_finite(ms.Tensor(local)).asnumpy())
    print(f'rank {rank}/{group_size} case {case}: local finite {local}, all ranks finite {reduced}', flush=True)
