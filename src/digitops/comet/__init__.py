"""The Comet backends, one module per job.

* :mod:`digitops.comet_env` -- configuration and the SDK's safe start (bounded timeouts, reachability)
* :mod:`.state` -- snapshots of a run, per-run sync state and its lock
* :mod:`.send` -- what one ``end_run`` sends to an experiment
* :mod:`.tracker` -- :class:`~digitops.comet.tracker.CometTracker`, the local store mirrored into Comet
* :mod:`.queries` -- the project's experiments and metric summaries
* :mod:`.offline` -- offline archives and ``digitops sync``
* :mod:`.registry` -- :class:`~digitops.comet.registry.CometRegistry`

The modules share public names (no private helpers across modules). The registry meets the
tracker through :meth:`CometTracker.logged_experiment`
(which experiment holds a run's logged model), never through its files.
``digitops.tracking.comet`` and ``digitops.registry.comet`` re-export the public names.
"""
