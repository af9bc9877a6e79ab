"""Test tooling shipped with gearstash: the store contract suite for third-party stores and private
servers for tests.
"""
