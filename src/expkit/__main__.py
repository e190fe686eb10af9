"""`python -m expkit`: the same CLI as the `expkit` command."""

from .cli import console

console()
