"""`python -m expkit`: the same CLI as the `expkit` command."""

from .cli import console

if __name__ == "__main__":
    console()
