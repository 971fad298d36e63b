"""Backend health: active probes (:mod:`.active`), passive outlier detection (:mod:`.passive`),
DNS refresh of hostname backends (:mod:`.dns`) and the background tasks that run them
(:mod:`.supervisor`). The state they update lives in :mod:`spooky_trio.core.state`.
"""
