"""What training, export, conversion and the benchmark write goes through here (checkpoints,
metrics, configs, logs, exported graphs; not the demo's PNGs): written to a temporary file beside
the target and renamed into place, so an interrupted or failed write leaves the old file or the new
one, never a truncated one; and a write the machine refuses (no space, permissions, not a directory,
read-only file system) becomes one OutputWriteError naming the file and the reason, with its
temporary file removed. Entry points report OutputWriteError with exit code 1 (the environment), bad
input with 2.
"""
import glob
import logging
import os
import re
import secrets
import sys

# Temporary files are '.<target name>.<8 hex digits>.partial<suffix>' in the target's folder; a
# writer may add its own suffix to that (ms.save_checkpoint writes '<stem>.tmp' first). The second
# form is what checkpoint saves left before this helper existed ('.epoch_002.ckpt.k2j4_x9a.tmp.tmp').
_TEMPORARY = re.compile(r'^\..+\.[0-9a-f]{8}\.partial|^\..+\.ckpt\.[a-z0-9_]{8}\.tmp\.(ckpt|tmp)$')


class OutputWriteError(Exception):
    """The machine refused a write: no space left, no permission, not a directory, read-only."""


def _reason(err):
    return err.strerror or str(err) or type(err).__name__


def make_dirs(folder):
    """os.makedirs(folder, exist_ok=True), or an OutputWriteError naming the folder."""
    try:
        os.makedirs(folder, exist_ok=True)  # a file of that name: FileExistsError
    except OSError as err:
        raise OutputWriteError(f'cannot create the folder {folder}: {_reason(err)}') from None
    return folder


def atomic_write(path, write, suffix=''):
    """write(tmp_path) writes the content to tmp_path; it is then renamed to `path`. Returns the
    absolute path. `suffix` ends the temporary name, for writers that insist on an extension."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    make_dirs(folder)
    stem = os.path.join(folder, f'.{name}.{secrets.token_hex(4)}.partial')
    tmp = stem + suffix
    try:
        write(tmp)
        _fsync(tmp)  # the data is on disk before the new name is, so a power cut leaves one or the other
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as err:
        raise OutputWriteError(f'cannot write {path}: {_reason(err)}') from None
    finally:
        for leftover in glob.glob(glob.escape(stem) + '*'):
            try:
                os.remove(leftover)
            except OSError:
                pass
    return path


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # on file systems that allocate late, a full disk shows here
    finally:
        os.close(fd)


def _fsync_folder(folder):
    try:
        _fsync(folder)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself has happened


def write_text(path, text):
    """Atomically write a text file."""
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    return atomic_write(path, write)


def check_writable(folder):
    """Prove that `folder` can be created (if missing) and written to, before work that a failed
    first write would lose. Leaves nothing behind: a probe file goes into the nearest existing
    folder on the path and is removed (named as a temporary file, so a leftover is cleaned up)."""
    folder = os.path.abspath(folder)
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputWriteError(f'cannot create the folder {folder}: {existing} is a file')
    probe = os.path.join(existing, f'.write_test.{secrets.token_hex(4)}.partial')
    try:
        with open(probe, 'w') as f:
            f.write('ok')
    except OSError as err:
        raise OutputWriteError(f'cannot write in the folder {existing}: {_reason(err)}') from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def claim_file(path):
    """Create the empty file `path` unless it exists: True when this call created it. Creation is
    exclusive (O_EXCL), also on NFS: of several processes claiming one path, exactly one gets True."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        return False
    except OSError as err:
        raise OutputWriteError(f'cannot create {path}: {_reason(err)}') from None


def remove_stale_temporaries(folder):
    """Remove temporary files an interrupted write left in `folder`; returns their paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _TEMPORARY.match(name) and os.path.isfile(path):
            try:
                os.remove(path)
                removed.append(path)
            except OSError as err:
                raise OutputWriteError(f'cannot remove the stale temporary file {path}: {_reason(err)}') from None
    return removed


class LogFileHandler(logging.FileHandler):
    """A logging.FileHandler whose failed writes raise OutputWriteError. The standard handler
    prints '--- Logging error ---' and goes on, so a run on a full disk would keep training with
    a log that silently stopped."""

    def __init__(self, path):
        try:
            super().__init__(path)
        except OSError as err:
            raise OutputWriteError(f'cannot write {os.path.abspath(path)}: {_reason(err)}') from None

    def handleError(self, record):  # noqa: N802 (logging's name)
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            raise OutputWriteError(f'cannot write {self.baseFilename}: {_reason(err)}') from None
        super().handleError(record)
