"""Shared plotting set-up: matplotlib is optional and only these tools need it."""
from ..errors import UserError


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend; a UserError saying how to install it."""
    try:
        import matplotlib
    except ImportError as err:
        raise UserError('plotting needs matplotlib: pip install matplotlib') from err
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, out_path, dpi=120):
    """Lay out, write and close a figure; returns the path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path
