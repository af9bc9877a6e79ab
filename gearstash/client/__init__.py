"""The client helper: submit jobs, ask their live status, fetch and follow what was stored; tokens for
browsers.
"""
