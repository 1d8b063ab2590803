"""``python3 -m attachflow``: the ``attachflow`` program (``attachflow.cli``)."""

from attachflow.cli import main

if __name__ == "__main__":
    main()
