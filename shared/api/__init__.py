"""The node's HTTP API (``hodlai api``): one FastAPI app on uvicorn to which every executor
adds its router (entry-point group ``hodlai.routers``, see :mod:`shared.api.routers`).

Guarantees, for every route any executor adds:

- Errors are JSON ``{"error": code, "message": text}`` with a fitting status code; the core's
  errors are translated in one place (:mod:`shared.api.errors`), and an unexpected error is a
  500 whose body says nothing about its cause (the log does).
- Every route declares its access (shared/api/auth.py): public, ``read`` (a read or admin
  token, or nothing when ``HODLAI_API_PUBLIC_READS``), ``admin`` (the ``Operator``
  dependency) or an end user's Sign-In with Ethereum proof (shared/api/siwe.py). An undeclared
  ``GET`` needs ``read``; any other undeclared route cannot be called. Credentials are
  checked before the route's body runs; tokens never reach a log.
- The process binds 127.0.0.1 unless ``HODLAI_API_HOST`` says otherwise, answers only
  requests whose ``Host`` is one of ``HODLAI_API_ALLOWED_HOSTS`` (shared/api/hosts.py), and
  sends no CORS headers unless ``HODLAI_API_CORS_ORIGINS`` lists origins (never ``*`` with a
  tokens file).

The app factory is :func:`shared.api.app.create_app`; the process is :mod:`shared.api.server`.
Nothing is imported here, so that ``hodlai --help`` does not load FastAPI.
"""
