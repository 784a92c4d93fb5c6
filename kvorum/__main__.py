"""`python -m kvorum` is the `kvorum` command."""

from kvorum.cli import main

main()
