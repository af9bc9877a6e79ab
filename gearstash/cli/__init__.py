"""The ``gearstash`` command line: one module per command group, the progress display and the demo."""
