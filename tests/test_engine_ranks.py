"""What the ranks agree on outside the training step (src/engine/ranks.py), one rank of two played
in this process: its peer's side of each collective call is given. (Under msrun, with folders that
agree, test_engine_distributed.py runs them for real.)"""
import logging

import numpy as np
import pytest

from src.engine import ranks
from src.engine.checkpoint import ResumeError, epoch_checkpoint_path, step_checkpoint_path


def _peer(monkeypatch, rank, *peer_rows):
    """gather_over_ranks as rank `rank` of 2 sees it, the other rank answering peer_rows in turn."""
    answers = iter(peer_rows)

    def gather(values, this_rank, group_size):
        assert (this_rank, group_size) == (rank, 2)
        table = np.zeros((2, len(values)), np.int64)
        table[rank], table[1 - rank] = values, next(answers)
        return table
    monkeypatch.setattr(ranks, 'gather_over_ranks', gather)


def _checkpoints(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b'')
    return folder


def test_rank_0_claims_the_folder_it_creates(tmp_path, monkeypatch):
    out = tmp_path / 'new' / 'run'  # a run whose output_dir does not exist yet
    _peer(monkeypatch, 0, [0], [0], [0])
    assert ranks.claim_output_dir(str(out), 0, 2) == (True, [0])
    assert [p.name.startswith('.acmix-writer-') for p in out.iterdir()] == [True]


def test_a_rank_on_rank_0s_filesystem_leaves_the_writing_to_it(tmp_path, monkeypatch):
    (tmp_path / '.acmix-writer-77').write_bytes(b'')  # rank 0's claim for this run (token 77)
    _peer(monkeypatch, 1, [77], [0], [1])
    assert ranks.claim_output_dir(str(tmp_path), 1, 2) == (False, [0])
    assert (tmp_path / '.acmix-writer-77').exists()


def test_the_first_rank_of_another_filesystem_writes_there(tmp_path, monkeypatch):
    out = _checkpoints(tmp_path / 'server1', '.acmix-writer-5')  # rank 0's claim (77) is not on this one
    _peer(monkeypatch, 1, [77], [0], [1])
    assert ranks.claim_output_dir(str(out), 1, 2) == (True, [0, 1])
    assert [p.name for p in out.iterdir()] == ['.acmix-writer-77']  # an earlier run's claim is gone
    # another rank of this server, coming later, finds the claim
    _peer(monkeypatch, 1, [77], [0], [1])
    assert ranks.claim_output_dir(str(out), 1, 2) == (False, [0])


def test_ranks_resume_at_the_newest_position_they_all_have(tmp_path, monkeypatch, caplog):
    ckpt = _checkpoints(tmp_path, 'epoch_002.ckpt', 'epoch_003.ckpt', 'epoch_004_step_000007.ckpt')
    newest = step_checkpoint_path(str(ckpt), 4, 7)
    _peer(monkeypatch, 0, [1, 3, 7], [0])  # the peer's newest is the same position
    assert ranks.agree_on_resume(str(ckpt), newest, 0, 2, logging.getLogger('t')) == newest
    _peer(monkeypatch, 0, [1, 2, 0], [0])  # the peer was stopped before its last two writes
    with caplog.at_level(logging.WARNING):
        chosen = ranks.agree_on_resume(str(ckpt), newest, 0, 2, logging.getLogger('t'))
    assert chosen == epoch_checkpoint_path(str(ckpt), 2)
    assert 'the end of epoch 2 is the newest position every rank has' in caplog.text
    assert 'rank 0: step 7 of epoch 4; rank 1: the end of epoch 2' in caplog.text


def test_ranks_that_cannot_agree_stop_with_one_error(tmp_path, monkeypatch):
    ckpt = _checkpoints(tmp_path, 'epoch_003.ckpt')
    path = epoch_checkpoint_path(str(ckpt), 3)
    _peer(monkeypatch, 0, [0, 0, 0])  # the peer has nothing: starting over would discard this rank's epochs
    with pytest.raises(ResumeError, match=r'rank 0: the end of epoch 3; rank 1: no checkpoint\)'):
        ranks.agree_on_resume(str(ckpt), path, 0, 2, logging.getLogger('t'))
    _peer(monkeypatch, 0, [1, 2, 0], [0])  # the peer is at epoch 2, which this rank no longer keeps
    with pytest.raises(ResumeError, match=r'rank\(s\) 0 have none at the end of epoch 2'):
        ranks.agree_on_resume(str(ckpt), path, 0, 2, logging.getLogger('t'))
    _peer(monkeypatch, 1, [1, 3, 0], [1])  # this rank has epoch 2, the peer lacks it: both stop
    with pytest.raises(ResumeError, match=r'rank\(s\) 0 have none'):
        ranks.agree_on_resume(str(_checkpoints(tmp_path / 'b', 'epoch_002.ckpt')),
                              epoch_checkpoint_path(str(tmp_path / 'b'), 2), 1, 2, logging.getLogger('t'))
