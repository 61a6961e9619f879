"""Bad input on the command line: one short 'error:' line, exit code 2, and nothing written."""
import json
import os

import numpy as np
import pytest

import eval as eval_script
import train as train_script
from conftest import ROOT, assert_bad_input, write_tiny_imagefolder


def _run(main, argv, capsys, starts='error: '):
    """Runs an entry point on bad input: exit code 2 and one `error:` line."""
    from src.cli import run_main
    code = run_main(main, argv)
    err = capsys.readouterr().err
    assert_bad_input(code, err, starts)
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


def test_unknown_key_and_bad_options(capsys):
    _run(train_script.main, ['--arch_name', 'x'], capsys, "error: unknown config key 'arch_name' (did you mean arch")
    _run(train_script.main, ['--config'], capsys, 'error: argument --config: expected one argument (see --help)')
    _run(train_script.main, ['--epochs', 'many'], capsys, "error: config key 'epochs' must be int, got 'many'")
    _run(train_script.main, ['--lr', '[1'], capsys, "error: the value of lr: line 1, column 3: expected ',' or ']'")


# Config files that do not parse, each with the line of `error:` the entry points print after the file name.
BAD_CONFIGS = {
    'syntax_error': (b'arch: resnet_mini\nepochs: [1, 2\nlr: 0.1\n',
                     "line 3, column 3: expected ',' or ']', but got ':' (while parsing a flow sequence that starts "
                     'at line 2, column 9)'),
    'not_utf8': (b'arch: resnet_mini\nlr: \xff\xfe0.1\n', 'line 2, column 5: not UTF-8 text (byte 0xff)'),
    'duplicate_key': (b'arch: resnet_mini\nlr: 0.1\narch: acmix_resnet_mini\n',
                      "line 3, column 1: key 'arch' is written twice, on lines 1 and 3"),
}


@pytest.mark.parametrize('entry_point', ['train', 'eval', 'export'])
@pytest.mark.parametrize('in_base', [False, True], ids=['config', 'base'])
@pytest.mark.parametrize('case', sorted(BAD_CONFIGS))
def test_a_config_file_that_does_not_parse_is_one_error_line(tmp_path, capsys, case, in_base, entry_point):
    import export as export_script
    content, problem = BAD_CONFIGS[case]
    bad = tmp_path / 'bad.yaml'
    bad.write_bytes(content)
    config, where = bad, ''
    if in_base:
        config = tmp_path / 'recipe.yaml'
        config.write_text('base: bad.yaml\nepochs: 1\n')
        where = f' (the base of {config})'
    main = {'train': train_script.main, 'eval': eval_script.main, 'export': export_script.main}[entry_point]
    out = tmp_path / 'out'
    _, err = _run(main, ['--config', str(config), '--output_dir', str(out), '--checkpoint', str(tmp_path / 'x.ckpt')],
                  capsys)
    assert err == f'error: {bad}{where}: {problem}\n'
    assert not out.exists()


def test_unknown_model_name(tiny_imagefolder, tmp_path, capsys):
    code, err = _run(eval_script.main, ['--arch', 'acmix_resnet5', '--data_dir', tiny_imagefolder,
                                        '--checkpoint', 'x.ckpt'], capsys)
    assert code == 2 and err.startswith("error: unknown model 'acmix_resnet5'. Did you mean acmix_resnet50")


def test_input_size_too_small(tiny_imagefolder, tmp_path, capsys):
    out = tmp_path / 'out'
    common = ['--num_classes', '3', '--batch_size', '8', '--data_dir', tiny_imagefolder, '--output_dir', str(out)]
    code, err = _run(train_script.main, ['--arch', 'acmix_resnet_mini', '--image_size', '8'] + common, capsys)
    assert code == 2 and err.startswith('error: image size 8 is too small') and 'Sizes from 13 up work' in err
    assert not out.exists()


def _write_bad_images(folder):
    """A truncated PNG and a file that is not an image at all."""
    good = sorted(os.listdir(folder))[0]
    data = open(os.path.join(folder, good), 'rb').read()
    with open(os.path.join(folder, 'truncated.png'), 'wb') as f:
        f.write(data[:len(data) // 2])
    with open(os.path.join(folder, 'notes.jpg'), 'wb') as f:
        f.write(b'not an image ' * 20)


def test_corrupt_image_stops_naming_the_file(tmp_path, capsys, monkeypatch):
    root = write_tiny_imagefolder(str(tmp_path / 'data'), classes=2, train_per_class=8, val_per_class=2)
    _write_bad_images(os.path.join(root, 'train', 'class_1'))
    monkeypatch.chdir(tmp_path)  # MindSpore dumps an undecodable image into the working directory
    out = tmp_path / 'out'
    code, err = _run(train_script.main, ['--arch', 'resnet_mini', '--num_classes', '2', '--image_size', '32',
                                         '--data_dir', root, '--output_dir', str(out), '--epochs', '1',
                                         '--warmup_epochs', '0',
                                         '--batch_size', '4', '--num_workers', '1'], capsys)
    assert code == 2 and err.startswith('error: cannot decode ') and 'Traceback' not in err
    bad = err.split('cannot decode ')[1].split(' ')[0]
    assert bad in (os.path.join(root, 'train', 'class_1', 'truncated.png'),
                   os.path.join(root, 'train', 'class_1', 'notes.jpg'))
    assert 'bad_images: skip' in err
    assert not (out / 'checkpoints').exists() and not (out / 'metrics.json').exists()
    assert sorted(os.listdir(tmp_path)) == ['data', 'out']  # no abnormal_image.* dump left behind


def test_corrupt_images_skipped_and_counted(tmp_path, capsys, monkeypatch):
    import mindspore as ms

    from src.models import create_model
    root = write_tiny_imagefolder(str(tmp_path / 'data'), classes=2, train_per_class=2, val_per_class=3)
    _write_bad_images(os.path.join(root, 'val', 'class_0'))
    ckpt = str(tmp_path / 'model.ckpt')
    ms.save_checkpoint(create_model('resnet_mini', num_classes=2), ckpt)
    monkeypatch.chdir(tmp_path)
    argv = ['--arch', 'resnet_mini', '--num_classes', '2', '--image_size', '32', '--data_dir', root,
            '--checkpoint', ckpt, '--eval_batch_size', '4', '--num_workers', '1']
    code, err = _run(eval_script.main, argv, capsys)  # the official input's PIL decoding fails, in a Python op
    assert code == 2 and err.startswith('error: cannot decode ') and 'Traceback' not in err
    assert err.split('cannot decode ')[1].split(' ')[0] in (os.path.join(root, 'val', 'class_0', 'truncated.png'),
                                                            os.path.join(root, 'val', 'class_0', 'notes.jpg'))
    code = eval_script.main(argv + ['--bad_images', 'skip'])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result['count'] == 6 and result['unreadable_skipped'] == 2
    assert sorted(os.listdir(tmp_path)) == ['data', 'model.ckpt']


def test_pretrained_of_other_classes_needs_new_head(tiny_imagefolder, tmp_path, capsys):
    import mindspore as ms

    from src.models import create_model
    pretrained = create_model('resnet_mini', num_classes=10)
    ckpt = str(tmp_path / 'pretrained.ckpt')
    ms.save_checkpoint(pretrained, ckpt)
    out = tmp_path / 'out'
    argv = ['--arch', 'resnet_mini', '--num_classes', '3', '--image_size', '32', '--data_dir', tiny_imagefolder,
            '--output_dir', str(out), '--pretrained', ckpt, '--epochs', '1', '--warmup_epochs', '0',
            '--batch_size', '8',
            '--lr', '0', '--weight_decay', '0', '--num_workers', '1']
    code, err = _run(train_script.main, argv, capsys)
    assert code == 2 and 'fc.weight (10, 512) vs (3, 512)' in err and '--new_head true' in err
    assert not out.exists()
    assert train_script.main(argv + ['--new_head', 'true']) == 0
    # lr 0: the trained network still holds the pretrained backbone, with a 3-class head of its own.
    trained = ms.load_checkpoint(str(out / 'checkpoints' / 'epoch_001.ckpt'))
    for name in ('conv1.weight', 'layer4.0.conv3.weight'):
        np.testing.assert_array_equal(trained[name].asnumpy(), pretrained.parameters_dict()[name].asnumpy())
    assert trained['fc.weight'].shape == (3, 512)


def test_empty_data_folders(tmp_path, capsys):
    out = tmp_path / 'out'
    argv = ['--arch', 'resnet_mini', '--num_classes', '2', '--image_size', '32', '--batch_size', '8',
            '--output_dir', str(out), '--data_dir']
    (tmp_path / 'no_classes' / 'train').mkdir(parents=True)
    code, err = _run(train_script.main, argv + [str(tmp_path / 'no_classes')], capsys)
    assert code == 2 and err.startswith('error: no class folders in ') and err.strip().endswith('no_classes/train')
    for split in ('train', 'val'):
        (tmp_path / 'no_images' / split / 'cat').mkdir(parents=True)
    code, err = _run(train_script.main, argv + [str(tmp_path / 'no_images')], capsys)
    assert code == 2 and err.startswith('error: 0 image files in ') and 'fewer than 1 device(s) x batch_size 8' in err
    assert not out.exists()


def test_predict_names_imagenet_classes_and_rejects_unreadable_images(tiny_imagefolder, tmp_path, capsys):
    import mindspore as ms

    from src.models import create_model
    from src.tools import predict
    ckpt = str(tmp_path / 'imagenet_like.ckpt')
    ms.save_checkpoint(create_model('resnet_mini', num_classes=1000), ckpt)
    image = os.path.join(tiny_imagefolder, 'val', 'class_0', '0.png')
    argv = ['--config', os.path.join(ROOT, 'config', 'demo_cpu.yaml'), '--checkpoint', ckpt, '--arch', 'resnet_mini',
            '--num_classes', '1000', '--data_dir', str(tmp_path / 'none')]
    assert predict.main(argv + [image]) == 0
    line = capsys.readouterr().out.strip()
    names = set(predict.imagenet_class_names())
    shown = line.split('[top-5: ')[1].rstrip(']').split(', ')
    assert len(shown) == 5 and all(entry.rsplit(' ', 1)[0] in names for entry in shown)
    broken = tmp_path / 'broken.png'
    broken.write_bytes(open(image, 'rb').read()[:60])
    code, err = _run(predict.main, argv + [str(broken)], capsys)
    assert code == 2 and err.startswith(f'error: cannot decode {broken}') and 'Traceback' not in err


def test_eval_and_export_bad_input(tiny_imagefolder, tmp_path, capsys):
    import export as export_script
    common = ['--arch', 'acmix_resnet_mini', '--num_classes', '3', '--image_size', '32', '--data_dir', tiny_imagefolder]
    _run(eval_script.main, common, capsys, 'error: --checkpoint is required')
    missing = str(tmp_path / 'none.ckpt')
    _run(eval_script.main, common + ['--checkpoint', missing], capsys, f'error: checkpoint not found: {missing}')
    out = tmp_path / 'out'
    _run(export_script.main, common + ['--file_format', 'AIR', '--output_dir', str(out)], capsys,
         'error: AIR export needs --device_target Ascend')
    # MindSpore's ONNX exporter has no mapping for the ACmix layer's reflection padding.
    _run(export_script.main, common + ['--file_format', 'ONNX', '--file_name', str(out / 'model')], capsys,
         'error: ONNX export of acmix_resnet_mini failed: ')
    assert not out.exists() or os.listdir(out) == []


def test_every_bad_input_error_exits_2_and_a_refused_write_1(capsys):
    """Each error class of bad input derives from UserError, so run_main gives every one exit code 2
    and one line; anything else is a bug and keeps its traceback."""
    import export  # noqa: F401  (defines ExportError)
    import src.tools.pth2ckpt  # noqa: F401
    import src.tools.rank_table  # noqa: F401
    from src.cli import run_main
    from src.errors import UserError
    from src.fileio import OutputWriteError

    def subclasses(cls):
        return {cls} | {c for sub in cls.__subclasses__() for c in subclasses(sub)}

    names = {cls.__name__ for cls in subclasses(UserError)}
    assert {'ConfigError', 'DataError', 'DeviceError', 'CheckpointMismatchError', 'CheckpointReadError',
            'ResumeError', 'TrainingError', 'ConversionError', 'UnknownModelError', 'InputSizeError',
            'RankTableError', 'ExportError'} <= names
    for cls in subclasses(UserError):
        def fail(argv, cls=cls):
            raise cls('the message')
        assert_bad_input(run_main(fail), capsys.readouterr().err, 'error: the message')

    def refused(argv):
        raise OutputWriteError('cannot write x: No space left on device')
    assert run_main(refused) == 1 and capsys.readouterr().err == 'error: cannot write x: No space left on device\n'

    def bug(argv):
        raise KeyError('a bug')
    with pytest.raises(KeyError):
        run_main(bug)
