"""Command-line entry points report bad input and refused writes as one short line, not a
traceback: exit code 2 for bad input (`UserError`), 1 for the environment (a full disk, a read-only
folder: `OutputWriteError`). Standard library only, so tools that run before MindSpore use it too."""
import os
import sys

from .errors import UserError
from .fileio import OutputWriteError


def run_main(main, argv=None):
    """Run main(argv); a user error prints 'error: ...' and returns 2, a refused write returns 1.
    ACMIX_DEBUG=1 shows the traceback."""
    try:
        return main(argv)
    except (UserError, OutputWriteError) as err:
        if os.environ.get('ACMIX_DEBUG') == '1':
            raise
        print(f'error: {err}', file=sys.stderr)
        return 1 if isinstance(err, OutputWriteError) else 2
