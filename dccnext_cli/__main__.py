"""`python -m dccnext_cli` is the `dccnext` command (and what `accelerate launch -m` runs)."""

from .cli.app import main

if __name__ == "__main__":
    main()
