"""The store contract every store implements, store URLs, and the on-disk spool that rides out store
outages.
"""
