"""`python -m doctor` is the same as the `doctor` console script."""

from doctor.cli import main

if __name__ == "__main__":
    main()
