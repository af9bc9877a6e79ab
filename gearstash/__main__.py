"""``python -m gearstash`` runs the command line."""

from gearstash.cli.main import main

main()
