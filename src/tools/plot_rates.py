"""Plot the learned ACmix rates against depth, as in the paper's analysis figure.

    python -m src.tools.plot_rates --ckpt best.ckpt --out rates.png

rate1 weights the attention path and rate2 the convolution path of every ACmix layer; the x axis is
the layer's position in the network (checkpoint order, which is the order of the layers).
"""
import os
import sys

import numpy as np

from src.cli import run_main
from src.errors import ArgumentParser, UserError
from src.models.weights import read_checkpoint
from src.tools.plots import pyplot, save_figure


def read_rates(ckpt_path):
    """[(layer name, rate1, rate2)] in network order."""
    params = read_checkpoint(ckpt_path)
    layers = [name[:-len('.rate1')] for name in params if name.endswith('.rate1')]
    if not layers:
        raise UserError(f'{ckpt_path} has no ACmix rates (no *.rate1 parameters): is it an ACmix model '
                         "with paths='both'?")
    return [(layer, float(params[layer + '.rate1'].asnumpy().reshape(-1)[0]),
             float(params[layer + '.rate2'].asnumpy().reshape(-1)[0])) for layer in layers]


def plot_rates(rates, out_path, title=None):
    plt = pyplot()
    x = np.arange(1, len(rates) + 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rates) + 3), 4))
    ax.plot(x, [r[1] for r in rates], 'o-', label='rate1 (attention)')
    ax.plot(x, [r[2] for r in rates], 's-', label='rate2 (convolution)')
    ax.set_xticks(x)
    ax.set_xticklabels([r[0].replace('.conv2', '').replace('.attn', '') for r in rates], rotation=60,
                       ha='right', fontsize=7)
    ax.set_xlabel('ACmix layer (input to output)')
    ax.set_ylabel('learned rate')
    ax.axhline(0.5, color='grey', lw=0.5, ls=':')
    ax.legend()
    ax.set_title(title or 'ACmix path rates by depth')
    return save_figure(fig, out_path)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--ckpt', required=True)
    parser.add_argument('--out', default='rates.png')
    args = parser.parse_args(argv)
    rates = read_rates(args.ckpt)
    plot_rates(rates, args.out, f'ACmix path rates: {os.path.basename(args.ckpt)}')
    for layer, r1, r2 in rates:
        print(f'{layer:32s} rate1 {r1:+.4f}  rate2 {r2:+.4f}')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main))
