"""Shared plotting set-up: matplotlib is optional and only these tools need it."""


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or a clear ImportError."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError('plotting needs matplotlib: pip install matplotlib') from err
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt
