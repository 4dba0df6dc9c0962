"""The judge as a Ray Serve application.

- ``app``: ``build_app`` (Serve import path) and ``serve_judge`` (Python / CLI entry point)
- ``ingress``: FastAPI routes, bearer auth, request limits; ``backend``: the batched judge deployment
- ``config``: the typed config (the ``args`` of ``judge.yaml``); ``auth``: token loading and checks
- ``client``: ``JudgeClient`` over HTTP; ``remote_judge``: ``RemoteJudge``, registered as judge ``remote``

Nothing here is imported by the pipelines unless the ``remote`` judge is used.
"""
