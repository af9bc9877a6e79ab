"""The capturing worker: :class:`~gearstash.worker.worker.Worker`, the
:class:`~gearstash.worker.job.Job` a function sees, and the slots that run jobs.
"""
