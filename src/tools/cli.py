"""Command-line entry points report bad input and refused writes as one short line, not a
traceback: exit code 2 for bad input, 1 for the environment (a full disk, a read-only folder)."""
import os
import sys

from ..config import ConfigError
from ..data.imagefolder import DataError
from ..engine.checkpoint import CheckpointMismatchError, CheckpointReadError
from ..engine.context import DeviceError
from ..engine.resume import ResumeError
from ..engine.trainer import TrainingError
from ..fileio import OutputWriteError
from ..models import InputSizeError, UnknownModelError
from .pth2ckpt import ConversionError

USER_ERRORS = (ConfigError, DataError, DeviceError, CheckpointMismatchError, CheckpointReadError, ResumeError,
               TrainingError, ConversionError, UnknownModelError, InputSizeError, FileNotFoundError)
ENVIRONMENT_ERRORS = (OutputWriteError,)


def run_main(main, argv=None):
    """Run main(argv); a user error prints 'error: ...' and returns 2, a refused write returns 1.
    ACMIX_DEBUG=1 shows the traceback."""
    try:
        return main(argv)
    except USER_ERRORS + ENVIRONMENT_ERRORS as err:
        if os.environ.get('ACMIX_DEBUG') == '1':
            raise
        print(f'error: {err}', file=sys.stderr)
        return 1 if isinstance(err, ENVIRONMENT_ERRORS) else 2
