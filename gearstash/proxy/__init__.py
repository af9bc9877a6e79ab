"""The capturing job-server proxy: workers of any language connect to it as to gearmand.

:mod:`gearstash.proxy.framing` splits the byte streams (sans-IO), :mod:`gearstash.proxy.capture`
writes what jobs say to the store, :mod:`gearstash.proxy.relay` runs one worker/upstream pair and
:mod:`gearstash.proxy.server` listens, routes and stops.
"""
