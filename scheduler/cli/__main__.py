"""``python -m dcsched.cli``."""

from dcsched.cli import main

main()
