"""The judge as a Ray Serve application.

- ``app``: ``build_app`` (Serve import path) and ``serve_judge`` (Python / CLI entry point)
- ``ingress``: FastAPI routes, bearer auth, request limits; ``backend``: the batched judge deployment
- ``config``: the typed config (the ``args`` of ``judge.yaml``); ``auth``: named client tokens, rotation,
  the fail-closed bind rule; ``ratelimit``: per-client token buckets; ``errors``: what the judge deployment
  raises (an item it cannot judge, a passed deadline)
- ``client``: ``JudgeClient`` over HTTP; ``remote_judge``: ``RemoteJudge``, registered as judge ``remote``

Nothing here is imported by the pipelines unless the ``remote`` judge is used.
"""
