"""Device, execution mode, device settings and data-parallel set-up."""
import os
import sys

import mindspore as ms

from ..errors import UserError


class DeviceError(UserError):
    """The requested device is not available in this MindSpore installation or machine."""


def available_devices():
    found = ['CPU']
    for name in ('GPU', 'Ascend'):
        try:
            module = getattr(ms.device_context, name.lower())
            if module.is_available():
                found.append(name)
        except Exception:  # noqa: BLE001  (a build without that backend raises various errors)
            pass
    return found


def launched_distributed():
    """True when started by msrun (MS_WORKER_NUM) or an Ascend rank table with several devices."""
    if int(os.environ.get('MS_WORKER_NUM', '1')) > 1:
        return True
    return bool(os.environ.get('RANK_TABLE_FILE')) and int(os.environ.get('RANK_SIZE', '1')) > 1


_memory_limit = []  # ms.runtime.set_memory may be called once per process

# MindSpore 2.10 hands every launch to a dispatch thread (AsyncRQueue), and the thread that waits for the
# result (the Python loop reading a loss, asnumpy) waits in a busy loop. On an accelerator the host's
# cores are otherwise idle; on CPU that loop takes a core from the kernels for the whole step (with two
# cores, half the machine). MS_DEV_HOST_BLOCKING_RUN=1, MindSpore's documented switch to single-threaded
# dispatch, runs each launch on the calling thread instead. It is read once, at the process's first
# launch, so it is set before anything runs; an explicit value in the environment wins.
HOST_BLOCKING_ENV = 'MS_DEV_HOST_BLOCKING_RUN'


def use_device(device_target, device_id=None):
    """ms.set_device(device_target[, device_id]); on CPU, first single-threaded dispatch (HOST_BLOCKING_ENV)
    unless the environment already sets it."""
    if device_target == 'CPU':
        os.environ.setdefault(HOST_BLOCKING_ENV, '1')
    if device_id is None:
        ms.set_device(device_target)
    else:
        ms.set_device(device_target, int(device_id))


def apply_device_settings(device_target, max_device_memory='', precision_mode=''):
    """The device settings of the config: the memory pool's limit (any device) and, on Ascend, the
    operator precision mode ('' keeps the framework's default for either)."""
    if max_device_memory:
        if not _memory_limit:
            ms.runtime.set_memory(max_size=max_device_memory)
            _memory_limit.append(max_device_memory)
        elif _memory_limit[0] != max_device_memory:
            raise DeviceError(f'max_device_memory is {_memory_limit[0]} in this process already; MindSpore '
                              f'sets it once per process (asked for {max_device_memory})')
    if precision_mode:
        if device_target == 'Ascend':
            ms.device_context.ascend.op_precision.precision_mode(precision_mode)
        else:
            print(f'note: ascend_precision_mode applies to Ascend only; ignored on {device_target}',
                  file=sys.stderr)


def setup_context(device_target='CPU', mode='graph', distributed=None, data_parallel=True,
                  max_device_memory='', precision_mode=''):
    """Set the device, mode and device settings (apply_device_settings); when launched for several
    ranks, initialise communication and (unless data_parallel is False, a debugging control where
    ranks train independently on their shards) data-parallel mode.

    Returns (rank, group_size).
    """
    ms.set_context(mode=ms.GRAPH_MODE if mode == 'graph' else ms.PYNATIVE_MODE)
    devices = available_devices()
    if device_target not in devices:
        raise DeviceError(f"device_target '{device_target}' is not available here; this machine has: "
                          f"{', '.join(devices)}")
    device_id = os.environ.get('DEVICE_ID')  # set per rank by rank-table launch scripts
    use_device(device_target, device_id if device_target != 'CPU' else None)
    apply_device_settings(device_target, max_device_memory, precision_mode)
    if distributed is None:
        distributed = launched_distributed()
    if not distributed:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init
    init()
    rank, group_size = get_rank(), get_group_size()
    if data_parallel:
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=group_size)
    return rank, group_size
