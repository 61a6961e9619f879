"""The launch scripts print their usage on wrong arguments, before any set-up."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('script', ['run_standalone_train.sh', 'run_distribute_train.sh',
                                    'run_distribute_train_gpu.sh', 'run_eval.sh', 'run_export.sh'])
def test_usage_on_missing_arguments(script):
    proc = subprocess.run(['bash', os.path.join(ROOT, 'scripts', script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f'Usage: bash {os.path.join(ROOT, "scripts", script)}')
