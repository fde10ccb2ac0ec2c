"""``python -m dslth_edge``: the same CLI as the ``dslth-edge`` console script."""

from dslth_edge.cli import main

main()
