"""``python -m dslth_edge``: the same CLI as the ``dslth-edge`` console script."""

from .cli import main

main()
