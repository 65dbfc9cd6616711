"""`python -m fastsim`: the same command-line interface as the `fastsim` script."""

from fastsim.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
