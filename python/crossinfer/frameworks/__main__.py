"""``python -m crossinfer.frameworks``: print the README's framework table."""

from crossinfer.frameworks import markdown

print(markdown(), end="")
