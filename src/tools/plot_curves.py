"""Plot training loss and validation top-1 against epochs from a run's metrics.json.

    python -m src.tools.plot_curves --metrics outputs/demo/metrics.json --out curves.png
"""
import json
import os
import sys

from src.cli import run_main
from src.errors import ArgumentParser, UserError
from src.tools.plots import pyplot, save_figure


def plot_curves(history, out_path, title=None):
    plt = pyplot()
    epochs = [r['epoch'] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [r['train_loss'] for r in history], 'o-', color='tab:blue', label='train loss')
    if any('val_loss' in r for r in history):
        val = [r for r in history if 'val_loss' in r]
        ax.plot([r['epoch'] for r in val], [r['val_loss'] for r in val], 'o--', color='tab:cyan', label='val loss')
    ax.set_xlabel('epoch')
    ax.set_ylabel('loss (log scale)')
    ax.set_yscale('log')
    ax.set_xticks(epochs)
    handles, labels = ax.get_legend_handles_labels()
    val = [r for r in history if 'val_top1' in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot([r['epoch'] for r in val], [r['val_top1'] for r in val], 's-', color='tab:red', label='val top-1')
        ax2.set_ylabel('val top-1')
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc='center right')
    ax.set_title(title or 'training curves')
    return save_figure(fig, out_path)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--metrics', required=True, help='metrics.json written by train.py')
    parser.add_argument('--out', default='curves.png')
    args = parser.parse_args(argv)
    try:
        with open(args.metrics) as f:
            history = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f'cannot read {args.metrics}: {err}') from None
    if not isinstance(history, list) or not history:
        raise UserError(f'{args.metrics} holds no epochs (expected the metrics.json that train.py writes)')
    run_name = os.path.basename(os.path.dirname(os.path.abspath(args.metrics)))
    plot_curves(history, args.out, f'training curves: {run_name}')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
