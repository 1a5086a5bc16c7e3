"""`python -m niah_run` is the same as the `niah` console script."""

from niah_run.cli import main

if __name__ == "__main__":
    main()
