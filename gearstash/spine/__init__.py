"""The plugin spine: every hook (pluggy hookspecs) and the plugin manager that loads stores and
observers by entry point.
"""
