"""The Gearman protocol, sans-IO: the binary packet codec, the admin text protocol and the worker state
machine. No sockets here.
"""
