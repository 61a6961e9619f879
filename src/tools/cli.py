"""Command-line entry points report bad input as one short line, not a traceback."""
import os
import sys

from ..config import ConfigError
from ..data.imagefolder import DataError
from ..engine.checkpoint import CheckpointMismatchError
from ..engine.context import DeviceError
from ..engine.trainer import TrainingError
from ..models import InputSizeError, UnknownModelError
from .pth2ckpt import ConversionError

USER_ERRORS = (ConfigError, DataError, DeviceError, CheckpointMismatchError, TrainingError, ConversionError,
               UnknownModelError, InputSizeError, FileNotFoundError)


def run_main(main, argv=None):
    """Run main(argv); a user error prints 'error: ...' and returns 2. ACMIX_DEBUG=1 shows the traceback."""
    try:
        return main(argv)
    except USER_ERRORS as err:
        if os.environ.get('ACMIX_DEBUG') == '1':
            raise
        print(f'error: {err}', file=sys.stderr)
        return 2
