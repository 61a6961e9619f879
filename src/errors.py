"""The one base class of bad-input errors.

Every error the user can fix by changing what they passed (a config key, a path, a checkpoint, the
model name, the input size, a device this machine does not have, a recipe whose loss diverges)
derives from `UserError`. The entry points catch it alone (`src.cli.run_main`), print one
`error: <message>` line and exit with code 2; a write the machine refuses is
`src.fileio.OutputWriteError` (exit code 1). Anything else is a bug and shows its traceback.
"""
import argparse


class UserError(Exception):
    """Bad input: its message says what was wrong and, where there is one, what to do instead."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (a missing or invalid option) are a UserError, reported like every other
    bad input instead of argparse's usage text and `prog: error:` line."""

    def error(self, message):
        raise UserError(f'{message} (see --help)')
