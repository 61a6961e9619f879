"""Device, execution mode and data-parallel set-up."""
import os

import mindspore as ms


class DeviceError(RuntimeError):
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


def setup_context(device_target='CPU', mode='graph', distributed=None, data_parallel=True):
    """Set the device and mode; when launched for several ranks, initialise communication and
    (unless data_parallel is False, a debugging control where ranks train independently on their
    shards) data-parallel mode.

    Returns (rank, group_size).
    """
    ms.set_context(mode=ms.GRAPH_MODE if mode == 'graph' else ms.PYNATIVE_MODE)
    devices = available_devices()
    if device_target not in devices:
        raise DeviceError(f"device_target '{device_target}' is not available here; this machine has: "
                          f"{', '.join(devices)}")
    device_id = os.environ.get('DEVICE_ID')  # set per rank by rank-table launch scripts
    if device_id is not None and device_target != 'CPU':
        ms.set_device(device_target, int(device_id))
    else:
        ms.set_device(device_target)
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
