"""``python -m gearstash`` runs the command line."""

from gearstash.cli import main

main()
