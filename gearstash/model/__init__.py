"""The job as data: keys and references, events, the record they build, and the views a client shows.
No I/O.
"""
