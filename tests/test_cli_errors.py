"""Bad input on the command line: one short 'error:' line, exit code 2, and nothing written."""
import os

import pytest

import eval as eval_script
import train as train_script
from conftest import write_tiny_imagefolder


def _run(main, argv, capsys):
    from src.tools.cli import run_main
    code = run_main(main, argv)
    err = capsys.readouterr().err
    return code, err


def test_missing_data_folder(tmp_path, capsys):
    out = tmp_path / 'out'
    code, err = _run(train_script.main, ['--arch', 'resnet_mini', '--data_dir', str(tmp_path / 'none'),
                                         '--output_dir', str(out)], capsys)
    assert code == 2 and err.startswith('error: image folder not found') and 'Traceback' not in err
    assert not out.exists()


def test_train_val_class_mismatch(tmp_path, capsys):
    root = write_tiny_imagefolder(str(tmp_path / 'data'), classes=2, train_per_class=2, val_per_class=1)
    os.rename(os.path.join(root, 'val', 'class_1'), os.path.join(root, 'val', 'other'))
    out = tmp_path / 'out'
    code, err = _run(train_script.main, ['--arch', 'resnet_mini', '--num_classes', '2', '--data_dir', root,
                                         '--output_dir', str(out)], capsys)
    assert code == 2 and 'different class folders' in err and not out.exists()


def test_unavailable_device(tmp_path, capsys):
    out = tmp_path / 'out'
    code, err = _run(train_script.main, ['--device_target', 'Ascend', '--output_dir', str(out)], capsys)
    assert code == 2 and "device_target 'Ascend' is not available here; this machine has: CPU" in err
    assert not out.exists()


def test_checkpoint_of_another_model(tiny_imagefolder, tmp_path, capsys):
    import mindspore as ms
    from src.models import create_model
    ckpt = str(tmp_path / 'other.ckpt')
    ms.save_checkpoint(create_model('resnet_mini', num_classes=3), ckpt)
    code, err = _run(eval_script.main, ['--arch', 'acmix_resnet_mini', '--num_classes', '3', '--image_size', '32',
                                        '--data_dir', tiny_imagefolder, '--checkpoint', ckpt], capsys)
    assert code == 2 and 'missing from the checkpoint: layer1.0.conv2.rate1' in err
    code, err = _run(eval_script.main, ['--arch', 'resnet_mini', '--num_classes', '10', '--image_size', '32',
                                        '--data_dir', tiny_imagefolder, '--checkpoint', ckpt], capsys)
    assert code == 2 and 'fc.weight (3, 512) vs (10, 512)' in err


def test_unknown_model_and_key(capsys):
    with pytest.raises(SystemExit):
        train_script.main(['--arch_name', 'x'])
    assert "unknown config key 'arch_name' (did you mean arch" in capsys.readouterr().err


def test_unknown_model_name(tiny_imagefolder, tmp_path, capsys):
    code, err = _run(eval_script.main, ['--arch', 'acmix_resnet5', '--data_dir', tiny_imagefolder,
                                        '--checkpoint', 'x.ckpt'], capsys)
    assert code == 2 and err.startswith("error: unknown model 'acmix_resnet5'. Did you mean acmix_resnet50")
